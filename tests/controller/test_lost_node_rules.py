"""Which nodes are lost, and what their VMs' status says: the rules, without a cluster."""

from __future__ import annotations

import datetime

from qatvm.api.vm import QatRequest, QatVirtualMachine
from qatvm.controller.lost_nodes import gone_status, unreachable, unreachable_status
from qatvm.controller.placement import NoFit, Placement, Strategy, place
from qatvm.controller.picture import ClusterPicture

from test_picture import inventory_body, node_body, vm_body

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
GRACE = datetime.timedelta(seconds=10)


def test_a_lease_older_than_the_grace_period_makes_its_node_unreachable() -> None:
    renewals = {"fresh": T0 - datetime.timedelta(seconds=9), "stale": T0 - datetime.timedelta(seconds=11)}
    lost = unreachable(["fresh", "stale"], renewals, T0, GRACE, watching_since=T0 - datetime.timedelta(hours=1))
    assert lost == {"stale": "the agent on stale has not renewed its node lease for 11s (grace 10s)"}


def test_a_node_without_a_lease_is_given_the_grace_period_from_when_watching_began() -> None:
    assert unreachable(["new"], {}, T0, GRACE, watching_since=T0 - datetime.timedelta(seconds=5)) == {}
    lost = unreachable(["new"], {}, T0, GRACE, watching_since=T0 - datetime.timedelta(seconds=11))
    assert lost == {"new": "the agent on new has never renewed its node lease"}


def _vm(**status: object) -> QatVirtualMachine:
    body = vm_body(node="n1", devices=("0000:10:00.1",))
    body["status"].update(status)
    return QatVirtualMachine.model_validate(body)


def test_unreachable_keeps_the_allocation_and_is_said_once() -> None:
    vm = _vm(conditions=[{"type": "Ready", "status": "True", "reason": "Running"}])
    change = unreachable_status(vm, "the agent on n1 has not renewed its node lease for 12s (grace 10s)")
    assert change is not None and set(change) == {"conditions"}  # phase, devices, resources untouched
    [ready] = change["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "NodeUnreachable")
    assert "may still run there" in ready["message"]
    again = _vm(conditions=change["conditions"])
    assert unreachable_status(again, "anything") is None


def test_gone_fails_the_vm_and_drops_what_it_held() -> None:
    change = gone_status(_vm(resources={"vcpus": 2, "memory": "1Gi", "numaNode": 0}), "n1")
    assert change is not None
    assert (change["phase"], change["devices"], change["resources"]) == ("Failed", [], None)
    ready = next(c for c in change["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeGone" and "node n1 was deleted" in ready["message"]
    assert gone_status(_vm(conditions=change["conditions"]), "n1") is None
    # A deleted node's lease goes stale too: gone stays gone, not unreachable again.
    assert unreachable_status(_vm(conditions=change["conditions"]), "the agent on n1 has not renewed") is None


def test_cordoned_and_unreachable_nodes_take_nothing_new_but_count_as_able_later() -> None:
    picture = ClusterPicture()
    picture.observe_inventory(inventory_body("n1", "0000:10:00.1"))
    cordoned = node_body("n1")
    cordoned["spec"] = {"unschedulable": True}
    epoch = picture.layout_epoch
    picture.observe_node(cordoned)
    assert picture.layout_epoch > epoch and ("n1", "0000:10:00.1") not in picture.index
    vm = QatVirtualMachine.model_validate(vm_body())
    result = picture.decide(vm, Strategy.PACK)
    # The tenant is told how many of its nodes are closed, never which.
    assert isinstance(result, NoFit) and result.reason == "InsufficientVFs" and not result.never
    assert result.message.endswith("; 1 of the 1 nodes matching its nodeSelector take nothing new (cordoned or unreachable)")
    assert "n1" not in result.message
    # The plain rule agrees.
    assert place(QatRequest(count=1), {}, picture.nodes(), picture.taken()) == result
    picture.observe_node(node_body("n1"))  # uncordoned
    assert isinstance(picture.decide(vm, Strategy.PACK), Placement)
    picture.release(vm.metadata["uid"])
    picture.set_unreachable({"n1"})
    result = picture.decide(vm, Strategy.PACK)
    assert isinstance(result, NoFit) and "take nothing new" in result.message and not result.never
    picture.set_unreachable(set())
    assert isinstance(picture.decide(vm, Strategy.PACK), Placement)


def test_the_picture_knows_where_each_placed_vm_is_and_what_ready_says() -> None:
    picture = ClusterPicture()
    body = vm_body(node="n1", devices=("0000:10:00.1",))
    body["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "NodeUnreachable"}]
    picture.observe_vm(body)
    assert picture.placed_on("n1", unless_ready_reason=frozenset({"NodeGone"})) == [body["metadata"]["uid"]]
    assert picture.placed_on("n1", unless_ready_reason=frozenset({"NodeUnreachable"})) == []
    assert picture.allocated_nodes() == {"n1"}
    picture.observe_vm(body, deleted=True)
    assert picture.allocated_nodes() == set()
