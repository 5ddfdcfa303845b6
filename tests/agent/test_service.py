"""NodeAgent against a real kube-apiserver: whether a VM exists is decided by its UID.

The agent runs in-process on a simulated node; watch events are handed to it as kopf would hand
them (`observe`), including the ones that mislead: a DELETED for a VM that still exists, a
deletion the agent never heard of.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import lightkube
import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubeNode
from lightkube.types import PatchType

from qatvm.agent.service import FINALIZER, PUBLISH_INTERVAL, NodeAgent
from qatvm.hypervisor import DomainState
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import QatVirtualMachineResource
from qatvm.kube_writes import Writer
from qatvm.node.binding import VfBinder
from qatvm.simulation import SimulatedSysfs
from qatvm.simulation.access import SIMULATED
from simnode import BASE, GEN4_A, GEN4_B, GEN4_C, Node

pytestmark = pytest.mark.controlplane


@pytest.fixture
async def agent(node: Node, kube: lightkube.AsyncClient, writer: Writer) -> AsyncIterator[NodeAgent]:
    """An agent on its own node name (the control plane is shared by the session), started as
    kopf starts it: first inventory published, holdings audited, the inventory loop running."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    await kube.create(KubeNode(metadata=ObjectMeta(name=name)))
    running = NodeAgent(node.config.model_copy(update={"node": name, "audit_seconds": 3600}), kube, writer, SIMULATED)
    await running.refresh_inventory()
    await running.audit()
    loop = asyncio.create_task(running.watch_inventory())
    yield running
    loop.cancel()
    await running.close()
    running.reconciler.hypervisor.close()


Place = Callable[[str, list[str]], Awaitable[dict[str, Any]]]


@pytest.fixture
def place(node: Node, kube: lightkube.AsyncClient, agent: NodeAgent, namespace: str) -> Place:
    """Create a VM and write its allocation to status as the controller does; the API's body."""

    async def make(name: str, addresses: list[str]) -> dict[str, Any]:
        vm = node.vm(name, addresses, node=agent.config.node, namespace=namespace)
        body = {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"memory": "128Mi", "qat": {"count": len(addresses)}, "image": {"path": BASE}}}
        await kube.create(QatVirtualMachineResource.from_dict(body))
        placed = await kube.patch(
            QatVirtualMachineResource.Status, name, {"status": vm.status.wire()}, namespace=namespace, patch_type=PatchType.MERGE
        )
        return placed.to_dict()  # type: ignore[no-any-return]

    return make


async def settle(agent: NodeAgent, body: dict[str, Any], deleted: bool = False) -> None:
    agent.observe(body, deleted)
    await agent.queue.idle()


async def read(kube: lightkube.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    found = await kube.get(QatVirtualMachineResource, body["metadata"]["name"], namespace=body["metadata"]["namespace"])
    return found.to_dict()  # type: ignore[no-any-return]


def owners(node: Node) -> dict[str, str | None]:
    binder = VfBinder(SimulatedSysfs(node.config.sysfs), node.config.state_dir / "binding")
    return {r.address: r.owner.uid if r.owner else None for r in binder.records()}


async def test_a_placed_vm_costs_a_finalizer_and_one_status_write(agent: NodeAgent, place: Place, kube: lightkube.AsyncClient, node: Node) -> None:
    body = await place("web", [GEN4_A])
    await settle(agent, body)
    now = await read(kube, body)
    assert now["metadata"]["finalizers"] == [FINALIZER]
    assert now["status"]["phase"] == "Running" and now["status"]["observedGeneration"] == 1
    assert not now["metadata"].get("annotations")
    # Two writes: resourceVersion moved twice since the controller's allocation.
    assert int(now["metadata"]["resourceVersion"]) > int(body["metadata"]["resourceVersion"])
    before = now["metadata"]["resourceVersion"]
    await settle(agent, now)  # the echo of its own write changes nothing
    assert (await read(kube, body))["metadata"]["resourceVersion"] == before
    assert owners(node) == {GEN4_A: body["metadata"]["uid"]}
    assert agent.publisher.holders_of({GEN4_A})[GEN4_A].uid == body["metadata"]["uid"]  # type: ignore[union-attr]


async def test_watch_events_older_than_its_own_writes_are_not_taken(
    agent: NodeAgent, place: Place, kube: lightkube.AsyncClient, control_plane: ControlPlane
) -> None:
    """The watch may bring the allocation's event after the agent's own writes have answered:
    taking it would make the next pass write from that stale copy (a 409, and a retry)."""
    body = await place("late", [GEN4_A])
    await settle(agent, body)
    done = await read(kube, body)
    for stale in (body, body):  # late, and late again before the echo
        await settle(agent, stale)
    assert agent.vms[body["metadata"]["uid"]]["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]
    await settle(agent, done)  # the echo ends the wait; a newer change is taken again
    assert body["metadata"]["uid"] not in agent.ahead
    conflicts = [
        e for e in control_plane.audit_log.events()
        if (e.get("objectRef") or {}).get("name") == "late" and e.get("stage") == "ResponseComplete"
        and (e.get("responseStatus") or {}).get("code") == 409
    ]
    assert conflicts == []
    assert (await read(kube, body))["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]


async def test_a_deleted_event_for_a_vm_that_exists_deletes_nothing(agent: NodeAgent, place: Place, kube: lightkube.AsyncClient, node: Node) -> None:
    body = await place("kept", [GEN4_A])
    await settle(agent, body)
    domain = (await read(kube, body))["status"]["domain"]["name"]
    # What a field-selector watch, a stale cache or a re-created watch may deliver.
    await settle(agent, await read(kube, body), deleted=True)
    assert agent.reconciler.hypervisor.state(domain) is DomainState.RUNNING
    assert owners(node) == {GEN4_A: body["metadata"]["uid"]}
    assert node.driver(GEN4_A) == "vfio-pci"


async def test_a_vm_gone_without_cleanup_is_cleaned_up_on_its_deleted_event(agent: NodeAgent, place: Place, kube: lightkube.AsyncClient, node: Node) -> None:
    body = await place("forced", [GEN4_A, GEN4_B])
    await settle(agent, body)
    last = await read(kube, body)
    domain = last["status"]["domain"]["name"]
    await kube.patch(QatVirtualMachineResource, "forced", {"metadata": {"finalizers": None}},
                     namespace=last["metadata"]["namespace"], patch_type=PatchType.MERGE)
    await kube.delete(QatVirtualMachineResource, "forced", namespace=last["metadata"]["namespace"])
    await settle(agent, last, deleted=True)
    assert agent.reconciler.hypervisor.state(domain) is None
    assert owners(node) == {}
    assert node.driver(GEN4_A) is None and node.driver(GEN4_B) is None
    assert not (node.config.state_dir / "vms" / body["metadata"]["uid"]).exists()
    # Given back by the next coalesced publish: PUBLISH_INTERVAL away, later on a busy machine.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * PUBLISH_INTERVAL
    while agent.publisher.holders_of({GEN4_A, GEN4_B}) != {GEN4_A: None, GEN4_B: None}:
        assert loop.time() < deadline, agent.publisher.holders_of({GEN4_A, GEN4_B})
        await asyncio.sleep(0.05)


async def test_the_audit_finds_holdings_whose_vm_the_api_does_not_have(agent: NodeAgent, place: Place, kube: lightkube.AsyncClient, node: Node) -> None:
    live = await place("live", [GEN4_A])
    await settle(agent, live)
    # Left by a crashed agent: a VM applied on the node that no longer exists in the API...
    ghost = node.vm("ghost", [GEN4_B], node=agent.config.node)
    await asyncio.get_running_loop().run_in_executor(None, agent.reconciler.apply, ghost)
    assert owners(node)[GEN4_B] == ghost.ref.uid
    # ...and a VM deleted (its finalizer forced off) with its DELETED event missed.
    missed = await place("missed", [GEN4_C])
    await settle(agent, missed)
    namespace = missed["metadata"]["namespace"]
    await kube.patch(QatVirtualMachineResource, "missed", {"metadata": {"finalizers": None}},
                     namespace=namespace, patch_type=PatchType.MERGE)
    await kube.delete(QatVirtualMachineResource, "missed", namespace=namespace)
    assert owners(node)[GEN4_C] == missed["metadata"]["uid"]

    await agent.audit()
    await agent.queue.idle()

    assert owners(node) == {GEN4_A: live["metadata"]["uid"]}
    assert [d.owner.uid for d in agent.reconciler.hypervisor.owned_domains()] == [live["metadata"]["uid"]]
    assert missed["metadata"]["uid"] not in agent.vms
    assert node.driver(GEN4_B) is None and node.driver(GEN4_C) is None and node.driver(GEN4_A) == "vfio-pci"
