"""LostNodeWatcher against a real kube-apiserver: a stale node lease, a fresh one, a deleted node."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import lightkube
import pytest
from lightkube import KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from qatvm.api.lease import NODE_LEASE_NAMESPACE, now
from qatvm.agent.service import FINALIZER as AGENT_FINALIZER
from qatvm.controller.lost_nodes import LostNodeWatcher
from qatvm.controller.picture import PlacedVm
from qatvm.controller.scheduler import Scheduler
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import QatVirtualMachineResource
from qatvm.kube_writes import Writer
from qatvm.testing.kubectl import Kubectl

pytestmark = pytest.mark.controlplane

NODE = "lost-watcher-node"
VF = {"pciAddress": "0000:10:00.1", "pfAddress": "0000:10:00.0", "deviceId": "4941", "generation": "4xxx",
      "numaNode": 0, "iommuGroup": 3, "healthy": True, "assignable": True}


@pytest.fixture
async def client(control_plane: ControlPlane, node_lease_namespace: str) -> AsyncIterator[lightkube.AsyncClient]:
    made = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    yield made
    await made.close()


async def lease_renewed(client: lightkube.AsyncClient, seconds_ago: float) -> None:
    moment = now() - datetime.timedelta(seconds=seconds_ago)
    moment = moment.replace(microsecond=moment.microsecond or 1)
    lease = Lease(metadata=ObjectMeta(name=NODE, namespace=NODE_LEASE_NAMESPACE),
                  spec=LeaseSpec(holderIdentity=NODE, leaseDurationSeconds=40, renewTime=moment))
    await client.apply(lease, field_manager="test", force=True)


async def running_on_node(client: lightkube.AsyncClient, kubectl: Kubectl, namespace: str, name: str, vf: str) -> None:
    """A VM its agent reported Running on NODE, holding `vf`, with the agent's finalizer."""
    kubectl.apply({
        "apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "finalizers": [AGENT_FINALIZER]},
        "spec": {"qat": {"count": 1}, "image": {"path": "/var/lib/qatvm/images/base.qcow2"}},
    })
    await client.patch(QatVirtualMachineResource.Status, name, {"status": {
        "phase": "Running", "nodeName": NODE, "devices": [{"pciAddress": vf}],
        "resources": {"vcpus": 1, "memory": "1Gi", "numaNode": 0},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "running",
                        "lastTransitionTime": "2030-01-01T00:00:00Z"}],
    }}, namespace=namespace, patch_type=PatchType.MERGE)


async def test_stale_lease_marks_unreachable_and_a_deleted_node_fails_and_frees_its_vms(
    client: lightkube.AsyncClient, writer: Writer, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    kubectl.apply({"apiVersion": "qatvm.io/v1alpha1", "kind": "QatNode", "metadata": {"name": NODE}})
    kubectl.run("patch", "qatnode", NODE, "--subresource=status", "--type=merge", "-p",
                '{"status":{"vfs":[%s]}}' % str(VF).replace("'", '"').replace("True", "true"))
    await running_on_node(client, kubectl, namespace, "held", VF["pciAddress"])
    await lease_renewed(client, seconds_ago=60)
    scheduler = Scheduler(client, writer)
    await scheduler.bootstrap()
    watcher = LostNodeWatcher(client, scheduler, grace_seconds=30, poll_seconds=1)
    try:
        await watcher.check()
        held = kubectl.json("get", "qvm", "held", "-n", namespace)
        ready = next(c for c in held["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NodeUnreachable")
        assert f"the agent on {NODE} has not renewed its node lease for 6" in ready["message"]
        assert held["status"]["phase"] == "Running" and held["status"]["devices"] == [{"pciAddress": VF["pciAddress"]}]
        assert NODE in scheduler.picture.unreachable and scheduler.wake.is_set()
        written = held["metadata"]["resourceVersion"]
        await watcher.check()  # said once: no second write
        assert kubectl.json("get", "qvm", "held", "-n", namespace)["metadata"]["resourceVersion"] == written

        await lease_renewed(client, seconds_ago=0)
        await watcher.check()
        assert NODE not in scheduler.picture.unreachable

        kubectl.run("delete", "qatnode", NODE)
        kubectl.run("delete", "node", NODE)
        scheduler.on_inventory({"metadata": {"name": NODE}}, deleted=True)
        scheduler.on_node({"metadata": {"name": NODE}}, deleted=True)
        await watcher.check()
        held = kubectl.json("get", "qvm", "held", "-n", namespace)
        ready = next(c for c in held["status"]["conditions"] if c["type"] == "Ready")
        assert (held["status"]["phase"], ready["reason"]) == ("Failed", "NodeGone")
        assert held["status"]["devices"] == [] and "resources" not in held["status"]
        gone = scheduler.picture.allocations[held["metadata"]["uid"]]
        assert (gone.addresses, gone.resources) == ((), None)
        # The agent's finalizer stays (only an agent or an admin may remove it): the admin who
        # deleted the node removes it, and the deletion completes.
        assert AGENT_FINALIZER in held["metadata"]["finalizers"]
        # The deleted node's lease goes stale as well: the VM stays gone, with no further write.
        await lease_renewed(client, seconds_ago=60)
        for _ in range(2):
            await watcher.check()
        after = kubectl.json("get", "qvm", "held", "-n", namespace)
        assert after["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"], after["status"]
        kubectl.run("delete", "qvm", "held", "-n", namespace, "--wait=false")
        kubectl.run("patch", "qvm", "held", "-n", namespace, "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        kubectl.run("wait", "--for=delete", "qvm/held", "-n", namespace, "--timeout=20s")
    finally:
        kubectl.run("delete", "qatnode", NODE, "--ignore-not-found")
        kubectl.run("delete", "node", NODE, "--ignore-not-found")
        kubectl.run("delete", "lease", NODE, "-n", NODE_LEASE_NAMESPACE, "--ignore-not-found")


async def test_a_node_whose_node_object_remains_is_not_gone(client: lightkube.AsyncClient, writer: Writer, kubectl: Kubectl) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE + "-kept"}})
    try:
        watcher = LostNodeWatcher(client, Scheduler(client, writer), grace_seconds=30, poll_seconds=1)
        # The picture may lag (a missed event): the API server is asked before anything is failed.
        assert await watcher.gone(NODE + "-kept") is False
        assert await watcher.gone(NODE + "-never-existed") is True
    finally:
        kubectl.run("delete", "node", NODE + "-kept")


async def test_a_vm_deleted_while_its_node_is_being_marked_lost_leaves_the_rest_marked(
    client: lightkube.AsyncClient, writer: Writer, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    for name, vf in (("first", "0000:10:00.1"), ("second", "0000:10:00.2")):
        await running_on_node(client, kubectl, namespace, name, vf)
    await lease_renewed(client, seconds_ago=60)
    scheduler = Scheduler(client, writer)
    await scheduler.bootstrap()
    watcher = LostNodeWatcher(client, scheduler, grace_seconds=30, poll_seconds=1)
    marked: list[str] = []
    post = scheduler.events.post

    def on_node() -> list[PlacedVm]:
        # The picture holds every namespace's VMs, other tests' too.
        return [vm for vm in scheduler.picture.placed.values() if (vm.namespace, vm.node) == (namespace, NODE)]

    async def post_then_delete_the_other(body: dict, *args: object) -> None:
        # The watch reports the other VM's deletion while the round awaits this VM's Event.
        await post(body, *args)
        if body["metadata"]["namespace"] != namespace or marked:
            return  # another test's VM, or this test's second
        marked.append(body["metadata"]["name"])
        other = next(vm.name for vm in on_node() if vm.name not in marked)
        gone = kubectl.json("get", "qvm", other, "-n", namespace)
        kubectl.run("delete", "qvm", gone["metadata"]["name"], "-n", namespace, "--wait=false")
        kubectl.run("patch", "qvm", gone["metadata"]["name"], "-n", namespace, "--type=json", "-p",
                    '[{"op":"remove","path":"/metadata/finalizers"}]')
        scheduler.on_vm(gone, deleted=True)

    scheduler.events.post = post_then_delete_the_other  # type: ignore[method-assign]
    try:
        await watcher.check()
        assert len(marked) == 1
        held = kubectl.json("get", "qvm", marked[0], "-n", namespace)
        ready = next(c for c in held["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "NodeUnreachable")
        assert [vm.name for vm in on_node()] == [marked[0]]
    finally:
        kubectl.run("delete", "qvm", "--all", "-n", namespace, "--wait=false")
        for item in kubectl.json("get", "qvm", "-n", namespace)["items"]:
            kubectl.run("patch", "qvm", item["metadata"]["name"], "-n", namespace, "--type=json", "-p",
                        '[{"op":"remove","path":"/metadata/finalizers"}]')
        kubectl.run("delete", "node", NODE, "--ignore-not-found")
        kubectl.run("delete", "lease", NODE, "-n", NODE_LEASE_NAMESPACE, "--ignore-not-found")
