"""More VFs asked than exist: exactly the capacity is placed, the rest wait with the numbers."""

from __future__ import annotations

from qatvm.testing.cluster import eventually
from qatvm.testing.kubectl import Kubectl
from vms import all_vms, condition, status, vm, wait_ready


def _free_everywhere(kubectl: Kubectl) -> int:
    assert all_vms(kubectl) == [], "VMs of earlier tests are still being deleted"
    inventories = kubectl.json("get", "qatnode")["items"]
    assert all(i["status"]["free"] == i["status"]["total"] for i in inventories)
    return sum(i["status"]["free"] for i in inventories)


def test_overcommit_places_exactly_the_capacity_and_admits_on_delete(kubectl: Kubectl, namespace: str) -> None:
    capacity = eventually(lambda: _free_everywhere(kubectl), timeout=90)
    size = 4
    fits = capacity // size
    names = [f"vm-{i}" for i in range(fits + 2)]
    for name in names:
        kubectl.apply(vm(name, namespace, count=size, numa="none"))
    for name in names[:fits]:
        wait_ready(kubectl, name, namespace)
    waiting = names[fits:]

    def pending_with_reason() -> None:
        for name in waiting:
            st = status(kubectl, name, namespace)
            scheduled = condition(kubectl, name, namespace, "Scheduled")
            assert st.get("phase") == "Pending" and scheduled is not None, st
            assert scheduled["status"] == "False" and scheduled["reason"] == "InsufficientVFs"
            assert f"needs {size} VFs" in scheduled["message"] and "0 free VFs" in scheduled["message"]

    eventually(pending_with_reason)
    taken = [d["pciAddress"] + "@" + status(kubectl, n, namespace)["nodeName"] for n in names[:fits] for d in status(kubectl, n, namespace)["devices"]]
    assert len(taken) == len(set(taken)) == fits * size

    # Capacity frees when a VM is deleted: the oldest waiting VM gets in, driven by that event.
    kubectl.run("delete", "qvm", names[0], "-n", namespace, "--timeout=60s")
    wait_ready(kubectl, waiting[0], namespace, timeout=30)
    assert status(kubectl, waiting[1], namespace)["phase"] == "Pending"

    events = kubectl.json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={waiting[1]}")["items"]
    assert any(e["reason"] == "FailedScheduling" and e["type"] == "Warning" for e in events)


def test_a_vm_no_node_can_ever_hold_is_stalled(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(vm("giant", namespace, count=64))
    def stalled() -> None:
        cond = condition(kubectl, "giant", namespace, "Stalled")
        assert cond is not None and cond["status"] == "True" and cond["reason"] == "NoNodeLargeEnough", cond
    eventually(stalled)
    assert condition(kubectl, "giant", namespace, "Reconciling") is None
