"""ClusterPicture: what the scheduler believes from watch events, including late and stale ones."""

from __future__ import annotations

import copy
from typing import Any

from qatvm.api.vm import QatRequest, QatVirtualMachine
from qatvm.controller.placement import NoFit, Placement, Strategy, place
from qatvm.controller.picture import ClusterPicture, Holding

UID = "0b5f6c1e-1111-4c3a-9d7e-000000000001"
OTHER_UID = "0b5f6c1e-2222-4c3a-9d7e-000000000002"


def vm_body(
    uid: str = UID,
    *,
    name: str = "web",
    rv: str = "1",
    node: str | None = None,
    devices: tuple[str, ...] = (),
    deleting: bool = False,
    count: int = 1,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {
            "namespace": "team-a", "name": name, "uid": uid, "resourceVersion": rv, "generation": 1,
            "creationTimestamp": "2024-05-01T10:00:00Z",
        },
        "spec": {"qat": {"count": count}, "image": {"path": "/var/lib/images/base.qcow2"}},
    }
    if node is not None:
        body["status"] = {
            "phase": "Scheduled",
            "nodeName": node,
            "devices": [{"pciAddress": a, "pfAddress": "0000:10:00.0", "numaNode": 0} for a in devices],
        }
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2024-05-01T10:05:00Z"
        body["metadata"]["finalizers"] = ["qatvm.io/agent"]
    return body


def vf(address: str, *, healthy: bool = True) -> dict[str, Any]:
    return {
        "pciAddress": address, "pfAddress": "0000:10:00.0", "deviceId": "4941", "generation": "4xxx",
        "services": ["sym", "asym"], "numaNode": 0, "iommuGroup": int(address[-1]), "healthy": healthy,
        "assignable": True,
    }


def node_body(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


# Room for every VM these tests place: CPUs and memory are not what they are about.
NUMA = [{"id": 0, "cpus": "0-63", "memory": 256 << 30, "hugepages": {"1Gi": 16}}]


def inventory_body(name: str, *addresses: str, numa: list[dict[str, Any]] = NUMA) -> dict[str, Any]:
    return {
        "apiVersion": "qatvm.io/v1alpha1", "kind": "QatNode", "metadata": {"name": name},
        "status": {"vfs": [vf(a) for a in addresses], "total": len(addresses), "free": len(addresses), "numa": numa},
    }


# --- VMs --------------------------------------------------------------------------------------


def test_a_vm_without_node_is_pending_and_its_latest_body_is_kept() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body(rv="1"))
    assert list(picture.pending) == [UID]
    assert picture.allocations == {}
    picture.observe_vm(vm_body(rv="2"))
    # The scheduler writes with this body's resourceVersion, so it must be the newest one.
    assert picture.pending[UID]["metadata"]["resourceVersion"] == "2"
    assert picture.taken() == set()


def test_a_vm_with_node_is_allocated_and_not_pending() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body(rv="1"))
    picture.observe_vm(vm_body(rv="2", node="n1", devices=("0000:10:00.1", "0000:10:00.2")))
    assert picture.pending == {}
    assert picture.allocations == {UID: Holding("team-a", "n1", ("0000:10:00.1", "0000:10:00.2"))}
    assert picture.taken() == {("n1", "0000:10:00.1"), ("n1", "0000:10:00.2")}


def test_a_placed_vm_seen_first_is_allocated_directly() -> None:
    # As after a controller restart: the LIST brings VMs placed by the previous leader.
    picture = ClusterPicture()
    picture.observe_vm(vm_body(node="n1", devices=("0000:10:00.3",)))
    assert picture.pending == {}
    assert picture.taken() == {("n1", "0000:10:00.3")}


def test_an_older_event_without_node_after_the_allocation_changes_nothing() -> None:
    """The scheduler observes its own write (the PATCH response) before the watch delivers the
    events that came before it; the VF must stay taken, or the next VM gets it too."""
    picture = ClusterPicture()
    before = vm_body(rv="5")
    picture.observe_vm(before)
    placed = vm_body(rv="7", node="n1", devices=("0000:10:00.1",))
    picture.observe_vm(placed)  # the PATCH response
    picture.observe_vm(copy.deepcopy(before))  # the watch, late: an event from before the patch
    picture.observe_vm(vm_body(rv="6"))  # and another one (e.g. the Pending condition write)

    assert picture.allocations == {UID: Holding("team-a", "n1", ("0000:10:00.1",))}
    assert picture.pending == {}
    assert ("n1", "0000:10:00.1") in picture.taken()


def test_a_stale_event_cannot_make_the_next_placement_reuse_a_vf() -> None:
    """The invariant end to end through `place`: one free VF, two VMs, a late stale event."""
    picture = ClusterPicture()
    picture.observe_node(node_body("n1"))
    picture.observe_inventory(inventory_body("n1", "0000:10:00.1"))
    picture.observe_vm(vm_body(rv="1"))
    picture.observe_vm(vm_body(rv="2", node="n1", devices=("0000:10:00.1",)))
    picture.observe_vm(vm_body(rv="1"))  # stale
    picture.observe_vm(vm_body(OTHER_UID, name="db", rv="3"))
    assert list(picture.pending) == [OTHER_UID]
    decision = place(QatRequest(count=1), {}, picture.nodes(), picture.taken())
    assert not isinstance(decision, Placement), decision


def test_deleting_a_vm_frees_its_vfs() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body(node="n1", devices=("0000:10:00.1",)))
    picture.observe_vm(vm_body(OTHER_UID, name="db", node="n1", devices=("0000:10:00.2",)))
    picture.observe_vm(vm_body(node="n1", devices=("0000:10:00.1",), deleting=True), deleted=True)
    assert picture.taken() == {("n1", "0000:10:00.2")}
    assert UID not in picture.allocations and UID not in picture.pending


def test_deleting_a_pending_vm_drops_it_and_deleting_twice_is_harmless() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body())
    picture.observe_vm(vm_body(), deleted=True)
    picture.observe_vm(vm_body(), deleted=True)
    assert picture.pending == {} and picture.allocations == {}


def test_a_terminating_vm_keeps_its_vfs_until_it_is_gone() -> None:
    # The agent's finalizer gives the VFs back first; only the DELETED event frees them.
    picture = ClusterPicture()
    picture.observe_vm(vm_body(node="n1", devices=("0000:10:00.1",)))
    picture.observe_vm(vm_body(rv="9", node="n1", devices=("0000:10:00.1",), deleting=True))
    assert picture.taken() == {("n1", "0000:10:00.1")}


def test_a_vm_seen_first_with_a_deletion_timestamp_never_becomes_pending() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body(deleting=True))
    assert picture.pending == {}
    assert picture.allocations == {}


def test_a_pending_vm_that_starts_terminating_leaves_pending() -> None:
    picture = ClusterPicture()
    picture.observe_vm(vm_body(rv="1"))
    picture.observe_vm(vm_body(rv="2", deleting=True))
    assert picture.pending == {}


# --- nodes ------------------------------------------------------------------------------------


def test_nodes_need_both_a_node_object_and_an_inventory() -> None:
    picture = ClusterPicture()
    picture.observe_node(node_body("both", zone="a"))
    picture.observe_inventory(inventory_body("both", "0000:10:00.1", "0000:10:00.2"))
    picture.observe_node(node_body("labels-only"))
    picture.observe_inventory(inventory_body("inventory-only", "0000:20:00.1"))

    [only] = picture.nodes()
    assert only.name == "both"
    assert only.labels == {"zone": "a"}
    assert [v.pci_address for v in only.vfs] == ["0000:10:00.1", "0000:10:00.2"]

    # The missing half arrives: the node becomes usable.
    picture.observe_node(node_body("inventory-only"))
    assert sorted(n.name for n in picture.nodes()) == ["both", "inventory-only"]


def test_node_deleted_or_inventory_without_status_removes_the_node() -> None:
    picture = ClusterPicture()
    for name in ("a", "b", "c"):
        picture.observe_node(node_body(name))
        picture.observe_inventory(inventory_body(name, "0000:10:00.1"))
    picture.observe_node(node_body("a"), deleted=True)
    picture.observe_inventory(inventory_body("b", "0000:10:00.1"), deleted=True)
    picture.observe_inventory({"metadata": {"name": "c"}})  # status not published (yet, or any more)
    assert picture.nodes() == []


def test_node_labels_and_inventory_follow_the_latest_event() -> None:
    picture = ClusterPicture()
    picture.observe_node(node_body("n1", zone="a"))
    picture.observe_inventory(inventory_body("n1", "0000:10:00.1"))
    picture.observe_node(node_body("n1", zone="b"))
    picture.observe_inventory(inventory_body("n1", "0000:10:00.1", "0000:10:00.2"))
    [only] = picture.nodes()
    assert only.labels == {"zone": "b"}
    assert len(only.vfs) == 2
    # A node with no labels at all is still a node.
    picture.observe_node({"metadata": {"name": "n1"}})
    assert picture.nodes()[0].labels == {}


# --- the node's word, reservations, quotas ------------------------------------------------------


def _ready_picture(*addresses: str) -> ClusterPicture:
    picture = ClusterPicture()
    picture.observe_node(node_body("n1"))
    picture.observe_inventory(inventory_body("n1", *addresses))
    return picture


def _vm(uid: str = UID, rv: str = "1", count: int = 1, namespace: str = "team-a") -> QatVirtualMachine:
    body = vm_body(uid, name=uid[-4:], rv=rv, count=count)
    body["metadata"]["namespace"] = namespace
    return QatVirtualMachine.model_validate(body)


def test_a_vf_the_node_still_holds_is_not_free_though_no_vm_has_it() -> None:
    """A VM deleted by force is gone from the API while its domain may still hold the VF:
    the VF is free only once the node's QatNode no longer lists it allocatedTo."""
    picture = _ready_picture("0000:10:00.1")
    held = inventory_body("n1", "0000:10:00.1")
    held["status"]["vfs"][0]["allocatedTo"] = {"namespace": "team-a", "name": "gone", "uid": OTHER_UID}
    picture.observe_inventory(held)
    assert isinstance(picture.decide(_vm(), Strategy.PACK), NoFit)
    picture.observe_inventory(inventory_body("n1", "0000:10:00.1"))  # given back
    assert isinstance(picture.decide(_vm(), Strategy.PACK), Placement)


def test_a_reservation_takes_the_vfs_at_once_and_a_sure_failure_gives_them_back() -> None:
    picture = _ready_picture("0000:10:00.1")
    first = picture.decide(_vm(UID), Strategy.PACK)
    assert isinstance(first, Placement)
    assert isinstance(picture.decide(_vm(OTHER_UID), Strategy.PACK), NoFit)  # before any write returned
    picture.release(UID)
    assert isinstance(picture.decide(_vm(OTHER_UID), Strategy.PACK), Placement)


def test_a_doubtful_write_keeps_its_vfs_until_the_next_version_tells() -> None:
    picture = _ready_picture("0000:10:00.1")
    picture.observe_vm(vm_body(UID, rv="5"))
    assert isinstance(picture.decide(_vm(UID, rv="5"), Strategy.PACK), Placement)
    picture.doubt(UID)
    picture.observe_vm(vm_body(UID, rv="5"))  # the same version again: still unknown
    assert isinstance(picture.decide(_vm(OTHER_UID), Strategy.PACK), NoFit)
    picture.observe_vm(vm_body(UID, rv="6"))  # the next version has no placement: it never landed
    assert picture.reservations == {}
    assert isinstance(picture.decide(_vm(OTHER_UID), Strategy.PACK), Placement)


def test_the_written_placement_replaces_the_reservation_without_freeing_anything() -> None:
    picture = _ready_picture("0000:10:00.1", "0000:10:00.2")
    placed = picture.decide(_vm(UID), Strategy.PACK)
    assert isinstance(placed, Placement)
    picture.observe_vm(vm_body(UID, rv="2", node="n1", devices=tuple(v.pci_address for v in placed.vfs)))
    assert picture.reservations == {} and set(picture.allocations) == {UID}
    assert picture.taken() == {("n1", placed.vfs[0].pci_address)}


def test_quota_counts_what_a_namespace_holds_and_says_the_numbers() -> None:
    picture = _ready_picture("0000:10:00.1", "0000:10:00.2", "0000:10:00.3")
    picture.observe_namespace({"metadata": {"name": "team-a", "annotations": {"qatvm.io/vf-quota": "2"}}})
    assert isinstance(picture.decide(_vm(UID, count=2), Strategy.PACK), Placement)
    refused = picture.decide(_vm(OTHER_UID, count=1), Strategy.PACK)
    assert isinstance(refused, NoFit) and refused.reason == "QuotaExceeded" and not refused.never
    assert refused.message == (
        "namespace team-a may hold 2 VFs (the annotation qatvm.io/vf-quota on the Namespace); its VMs hold 2, and this VM needs 1"
    )
    assert isinstance(picture.decide(_vm(OTHER_UID, count=1, namespace="team-b"), Strategy.PACK), Placement)
    too_big = picture.decide(_vm("0b5f6c1e-3333-4c3a-9d7e-000000000003", count=3), Strategy.PACK)
    assert isinstance(too_big, NoFit) and too_big.never
    picture.observe_namespace({"metadata": {"name": "team-a", "annotations": {"qatvm.io/vf-quota": "oops"}}})
    assert picture.quotas["team-a"] == 0  # a typo caps everything rather than nothing


# --- CPUs, memory and huge pages ----------------------------------------------------------------


SMALL = [{"id": 0, "cpus": "1-8", "memory": 8 << 30, "hugepages": {"1Gi": 4}}]


def _sized(uid: str, vcpus: int, memory: str = "1Gi", dedicated: bool = False, page: str | None = None) -> QatVirtualMachine:
    body = vm_body(uid, name=uid[-4:])
    body["spec"].update(vcpus=vcpus, memory=memory, dedicatedCpus=dedicated)
    if page:
        body["spec"]["hugepages"] = {"pageSize": page}
    return QatVirtualMachine.model_validate(body)


def _small_picture() -> ClusterPicture:
    picture = ClusterPicture()
    picture.observe_node(node_body("n1"))
    picture.observe_inventory(inventory_body("n1", *(f"0000:10:00.{i}" for i in range(1, 8)), numa=SMALL))
    return picture


def test_reservations_take_cpus_and_memory_at_once_so_concurrent_decisions_cannot_overcommit() -> None:
    picture = _small_picture()
    first = picture.decide(_sized(UID, vcpus=6, dedicated=True), Strategy.PACK)
    assert isinstance(first, Placement) and first.resources is not None and first.resources.cpus == "3-8"
    # Before the first write returned: VFs are left, CPUs are not.
    second = picture.decide(_sized(OTHER_UID, vcpus=3, dedicated=True), Strategy.PACK)
    assert isinstance(second, NoFit) and second.reason == "InsufficientCPU" and not second.never
    assert second.message == "needs 3 vCPUs; no node with its VFs free has that free now (1 of 1 QAT nodes could hold it when idle)"
    smaller = picture.decide(_sized(OTHER_UID, vcpus=2, dedicated=True), Strategy.PACK)
    assert isinstance(smaller, Placement) and smaller.resources is not None and smaller.resources.cpus == "1-2"
    picture.release(OTHER_UID)
    picture.release(UID)  # the writes failed: everything is free again
    again = picture.decide(_sized(OTHER_UID, vcpus=8, dedicated=True), Strategy.PACK)
    assert isinstance(again, Placement) and again.resources is not None and again.resources.cpus == "1-8"


def test_written_resources_replace_the_reservation_and_go_with_the_vm() -> None:
    picture = _small_picture()
    placed = picture.decide(_sized(UID, vcpus=2, memory="6Gi"), Strategy.PACK)
    assert isinstance(placed, Placement) and placed.resources is not None
    body = vm_body(UID, rv="2", node="n1", devices=tuple(v.pci_address for v in placed.vfs))
    body["status"]["resources"] = placed.resources.wire()
    picture.observe_vm(body)
    assert picture.reservations == {} and picture.nodes()[0].allocations == (placed.resources,)
    memory = picture.decide(_sized(OTHER_UID, vcpus=1, memory="3Gi"), Strategy.PACK)
    assert isinstance(memory, NoFit) and memory.reason == "InsufficientMemory"
    pages = picture.decide(_sized(OTHER_UID, vcpus=1, memory="4Gi", page="1Gi"), Strategy.PACK)
    assert isinstance(pages, Placement)  # huge pages are a pool of their own
    picture.release(OTHER_UID)
    picture.observe_vm(body, deleted=True)
    assert picture.nodes()[0].allocations == ()
    assert isinstance(picture.decide(_sized(OTHER_UID, vcpus=1, memory="8Gi"), Strategy.PACK), Placement)


def test_more_than_a_node_ever_has_is_never_and_names_the_resource() -> None:
    picture = _small_picture()
    refused = picture.decide(_sized(UID, vcpus=1, memory="5Gi", page="1Gi"), Strategy.PACK)
    assert isinstance(refused, NoFit) and refused.never and refused.reason == "InsufficientHugepages"
    assert refused.message == "needs 5 huge pages of 1Gi; no node could hold it even when idle (the largest has 4)"
    epoch = picture.layout_epoch
    bigger = [{**SMALL[0], "hugepages": {"1Gi": 8}}]
    picture.observe_inventory(inventory_body("n1", *(f"0000:10:00.{i}" for i in range(1, 8)), numa=bigger))
    assert picture.layout_epoch > epoch  # a never-verdict is judged again
    assert isinstance(picture.decide(_sized(UID, vcpus=1, memory="5Gi", page="1Gi"), Strategy.PACK), Placement)



def test_nodes_publishing_the_same_vfs_share_them_and_a_change_is_its_own() -> None:
    picture = ClusterPicture()
    for name in ("n1", "n2"):
        picture.observe_node(node_body(name))
        picture.observe_inventory(inventory_body(name, "0000:10:00.1", "0000:10:00.2"))
    assert picture.inventories["n1"]["0000:10:00.1"] is picture.inventories["n2"]["0000:10:00.1"]
    assert picture.inventories["n1"]["0000:10:00.1"] is not picture.inventories["n1"]["0000:10:00.2"]
    changed = inventory_body("n2", "0000:10:00.1", "0000:10:00.2")
    changed["status"]["vfs"][0]["healthy"] = False
    picture.observe_inventory(changed)
    assert picture.inventories["n2"]["0000:10:00.1"].healthy is False
    assert picture.inventories["n1"]["0000:10:00.1"].healthy is True
    assert ("n2", "0000:10:00.1") not in picture.index and ("n1", "0000:10:00.1") in picture.index
