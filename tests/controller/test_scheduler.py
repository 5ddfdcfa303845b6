"""The Scheduler against a real kube-apiserver: many VMs placed at once, each with one write,
no VF twice, conflicts survived, and VMs that cannot fit left alone while others come and go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import lightkube
import pytest
from lightkube import KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from qatvm.api.vm import FINALIZER
from qatvm.controller.scheduler import Scheduler
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import QatNodeResource, QatVirtualMachineResource
from qatvm.kube_writes import Writer

pytestmark = pytest.mark.controlplane

VFS_PER_NODE = 4


def inventory(vfs: int) -> dict[str, Any]:
    return {"vfs": [
        {"pciAddress": f"0000:3d:01.{i}", "pfAddress": "0000:3d:00.0", "deviceId": "4941", "generation": "4xxx",
         "services": ["sym", "asym"], "numaNode": 0, "iommuGroup": 10 + i, "healthy": True, "assignable": True}
        for i in range(vfs)
    ], "numa": [{"id": 0, "cpus": "0-63", "memory": 256 << 30}]}


def vm(name: str, namespace: str, count: int = 1) -> QatVirtualMachineResource:
    return QatVirtualMachineResource(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec={"qat": {"count": count, "numa": "none"}, "image": {"path": "/var/lib/qatvm/images/a.qcow2"},
              "nodeSelector": {"qatvm.io/test": namespace}},
    )


@pytest.fixture
async def cluster(kube: lightkube.AsyncClient, namespace: str) -> AsyncIterator[list[str]]:
    """Three nodes of this test's own (its nodeSelector keeps VMs off other tests' nodes)."""
    names = [f"{namespace[:40]}-n{i}" for i in range(3)]
    for name in names:
        await kube.create(Node(metadata=ObjectMeta(name=name, labels={"qatvm.io/test": namespace})))
        await kube.create(QatNodeResource(metadata=ObjectMeta(name=name), spec={}))
        await kube.patch(QatNodeResource.Status, name, {"status": inventory(VFS_PER_NODE)}, patch_type=PatchType.MERGE)
    yield names
    for name in names:
        await kube.delete(QatNodeResource, name)
        await kube.delete(Node, name)


@contextlib.asynccontextmanager
async def running(kube: lightkube.AsyncClient, writer: Writer, concurrency: int = 32) -> AsyncIterator[Scheduler]:
    """The scheduler fed by watches, as kopf feeds it in the controller."""
    scheduler = Scheduler(kube, writer, concurrency=concurrency)

    async def feed(resource: Any, handler: Callable[[dict[str, Any], bool], None], **kw: Any) -> None:
        async for kind, item in kube.watch(resource, **kw):
            handler(item.to_dict(), kind == "DELETED")

    tasks = [
        asyncio.create_task(feed(Node, scheduler.on_node)),
        asyncio.create_task(feed(QatNodeResource, scheduler.on_inventory)),
        asyncio.create_task(feed(QatVirtualMachineResource, scheduler.on_vm, namespace="*")),
        asyncio.create_task(scheduler.run()),
    ]
    try:
        yield scheduler
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def statuses(kube: lightkube.AsyncClient, namespace: str) -> dict[str, dict[str, Any]]:
    return {item.metadata.name: item.to_dict().get("status") or {} async for item in kube.list(QatVirtualMachineResource, namespace=namespace)}


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def controller_writes(control_plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return [
        e for e in control_plane.audit_log.events()
        if (e.get("objectRef") or {}).get("namespace") == namespace and e.get("stage") == "ResponseComplete"
        and e["verb"] == "patch" and e["objectRef"].get("subresource") == "status"
    ]


async def test_a_burst_is_placed_with_one_write_each_and_no_vf_twice(
    kube: lightkube.AsyncClient, writer: Writer, cluster: list[str], namespace: str, control_plane: ControlPlane
) -> None:
    capacity = VFS_PER_NODE * len(cluster)
    async with running(kube, writer, concurrency=8):
        await asyncio.gather(*(kube.create(vm(f"vm-{i}", namespace)) for i in range(capacity + 2)))

        async def all_decided() -> dict[str, dict[str, Any]]:
            found = await statuses(kube, namespace)
            assert sum(1 for s in found.values() if s.get("nodeName")) == capacity, found
            assert sum(1 for s in found.values() if s.get("phase") == "Pending") == 2, found
            return found

        found = await until(all_decided)
    held = [(s["nodeName"], d["pciAddress"]) for s in found.values() if s.get("nodeName") for d in s["devices"]]
    assert len(held) == len(set(held)) == capacity
    per_vm: dict[str, int] = {}
    for event in controller_writes(control_plane, namespace):
        per_vm[event["objectRef"]["name"]] = per_vm.get(event["objectRef"]["name"], 0) + 1
    assert set(per_vm.values()) == {1}, per_vm  # the allocation, or the one Pending verdict


async def test_a_vm_edited_while_its_write_is_under_way_is_placed_once(
    kube: lightkube.AsyncClient, writer: Writer, cluster: list[str], namespace: str
) -> None:
    """Conflicts (the tenant's edits) give the reservation back and the VM is judged again."""
    async with running(kube, writer):
        for i in range(6):
            await kube.create(vm(f"vm-{i}", namespace))
            for _ in range(3):
                await kube.patch(QatVirtualMachineResource, f"vm-{i}", {"metadata": {"labels": {"edit": str(_)}}},
                                 namespace=namespace, patch_type=PatchType.MERGE)

        async def placed() -> dict[str, dict[str, Any]]:
            found = await statuses(kube, namespace)
            assert all(s.get("nodeName") for s in found.values()) and len(found) == 6, found
            return found

        found = await until(placed)
    held = [(s["nodeName"], d["pciAddress"]) for s in found.values() for d in s["devices"]]
    assert len(held) == len(set(held)) == 6


async def test_waiting_vms_are_not_written_again_while_others_come_and_go(
    kube: lightkube.AsyncClient, writer: Writer, cluster: list[str], namespace: str, control_plane: ControlPlane
) -> None:
    async with running(kube, writer) as scheduler:
        for i in range(10):
            await kube.create(vm(f"giant-{i}", namespace, count=VFS_PER_NODE + 1))

        async def judged() -> None:
            found = await statuses(kube, namespace)
            assert len(found) == 10 and all(s.get("phase") == "Pending" for s in found.values()), found

        await until(judged)
        await asyncio.sleep(0.5)
        before = len(controller_writes(control_plane, namespace))
        assert before == 10
        for round_ in range(3):
            await kube.create(vm(f"passer-{round_}", namespace))

            async def passed(name: str = f"passer-{round_}") -> None:
                assert (await statuses(kube, namespace))[name].get("nodeName")

            await until(passed)
            await kube.delete(QatVirtualMachineResource, f"passer-{round_}", namespace=namespace)
        await asyncio.sleep(1.0)
        waiting = [b for b in scheduler.picture.pending.values() if b["metadata"]["namespace"] == namespace]
        assert len(waiting) == 10
    names = [e["objectRef"]["name"] for e in controller_writes(control_plane, namespace)[before:]]
    assert names == ["passer-0", "passer-1", "passer-2"], names


async def test_a_vm_deleted_before_it_was_placed_loses_the_agents_finalizer_and_a_placed_one_keeps_it(
    kube: lightkube.AsyncClient, writer: Writer, cluster: list[str], namespace: str
) -> None:
    """No agent watches a VM that was never placed: the scheduler lets the agent's finalizer go,
    and only the agent's (a tenant's own finalizer stays), and never that of a placed VM."""
    hold = "example.com/hold"

    def held(name: str, count: int) -> QatVirtualMachineResource:
        one = vm(name, namespace, count)
        assert one.metadata is not None
        one.metadata.finalizers = [FINALIZER, hold]
        return one

    async with running(kube, writer) as scheduler:
        await kube.create(held("unfit", VFS_PER_NODE + 1))
        await kube.create(held("placed", 1))

        async def judged() -> None:
            found = await statuses(kube, namespace)
            assert found["unfit"].get("phase") == "Pending" and found["placed"].get("nodeName"), found

        await until(judged)
        for name in ("unfit", "placed"):
            await kube.delete(QatVirtualMachineResource, name, namespace=namespace)

        async def finalizers() -> dict[str, list[str]]:
            found = {item.metadata.name: item.metadata.finalizers or [] async for item in kube.list(QatVirtualMachineResource, namespace=namespace)}
            assert found["unfit"] == [hold], found
            return found

        found = await until(finalizers)
        await asyncio.sleep(1.0)
        assert (await kube.get(QatVirtualMachineResource, "placed", namespace=namespace)).metadata.finalizers == [FINALIZER, hold]
        assert found["placed"] == [FINALIZER, hold]
        assert scheduler.leaving == {}
    for name in ("unfit", "placed"):
        await kube.patch(QatVirtualMachineResource, name, {"metadata": {"finalizers": None}}, namespace=namespace, patch_type=PatchType.MERGE)


class LosingWriter(Writer):
    """The first status write of each VM ends with its outcome unknown, as when the connection
    drops: before the API server has it, or after (`lands`)."""

    def __init__(self, control_plane: ControlPlane, lands: bool) -> None:
        super().__init__(KubeConfig.from_file(str(control_plane.kubeconfig)), "qatvm-test")
        self.lands = lands
        self.lost: set[str] = set()

    async def patch_vm(self, namespace: str, name: str, patch: dict[str, Any], status: bool = False) -> dict[str, Any]:
        if status and name not in self.lost:
            self.lost.add(name)
            if self.lands:
                await super().patch_vm(namespace, name, patch, status)
            raise aiohttp.ServerDisconnectedError()
        return await super().patch_vm(namespace, name, patch, status)


@pytest.mark.parametrize("lands", [False, True], ids=["before", "after"])
async def test_unsure_write_is_settled(
    kube: lightkube.AsyncClient, cluster: list[str], namespace: str, control_plane: ControlPlane, lands: bool
) -> None:
    """A placement write whose connection drops before or after it lands is settled, without a VF
    twice: nothing else changes these VMs, so no watch event says whether the first write landed."""
    writer = LosingWriter(control_plane, lands)
    try:
        async with running(kube, writer):
            for i in range(3):
                await kube.create(vm(f"vm-{i}", namespace))

            async def placed() -> dict[str, dict[str, Any]]:
                found = await statuses(kube, namespace)
                assert len(found) == 3 and all(s.get("nodeName") for s in found.values()), found
                return found

            found = await until(placed)
    finally:
        await writer.close()
    assert writer.lost == set(found)
    held = [(s["nodeName"], d["pciAddress"]) for s in found.values() for d in s["devices"]]
    assert len(held) == len(set(held)) == 3
