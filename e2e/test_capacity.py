"""More VFs asked than exist: exactly the capacity is placed, the rest wait with the numbers."""

from __future__ import annotations

import time

from qatvm.testing.cluster import LocalNodes, eventually
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
            assert scheduled["message"] == f"needs {size} VFs; no node has that many free now (the largest has 16 when idle)"

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


def test_a_namespace_quota_caps_the_vfs_its_vms_hold(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("annotate", "namespace", namespace, "qatvm.io/vf-quota=2")
    kubectl.apply(vm("a", namespace), vm("b", namespace))
    wait_ready(kubectl, "a", namespace)
    wait_ready(kubectl, "b", namespace)
    kubectl.apply(vm("c", namespace))

    def over_quota() -> None:
        scheduled = condition(kubectl, "c", namespace, "Scheduled")
        assert scheduled is not None and scheduled["reason"] == "QuotaExceeded", scheduled
        assert scheduled["message"] == (
            f"namespace {namespace} may hold 2 VFs (the annotation qatvm.io/vf-quota on the Namespace); its VMs hold 2, and this VM needs 1"
        )
        assert status(kubectl, "c", namespace)["phase"] == "Pending"

    eventually(over_quota)
    kubectl.run("annotate", "namespace", namespace, "qatvm.io/vf-quota=3", "--overwrite")
    wait_ready(kubectl, "c", namespace, timeout=30)


def test_vms_that_cannot_fit_stay_quiet_while_others_come_and_go(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    """Finding 6: waiting VMs are written once per verdict, not once per event elsewhere."""
    giants = [f"giant-{i}" for i in range(20)]
    kubectl.apply(*[vm(name, namespace, count=64) for name in giants])

    def judged() -> None:
        for name in giants:
            scheduled = condition(kubectl, name, namespace, "Scheduled")
            assert scheduled is not None and scheduled["reason"] == "NoNodeLargeEnough", scheduled
            assert scheduled["message"] == "needs 64 VFs; no node has that many even when idle (the largest has 16)"

    eventually(judged)

    def controller_writes() -> list[dict[str, object]]:
        return [
            e for e in nodes.audit.events()
            if e["user"]["username"].endswith(":qatvm-controller") and e["verb"] in ("create", "patch", "update")
            and (e.get("objectRef") or {}).get("namespace") == namespace and e.get("stage") == "ResponseComplete"
        ]

    def one_verdict_each() -> int:
        written = len(controller_writes())
        assert written == 2 * len(giants)  # one status write and one Event each
        return written

    before = eventually(one_verdict_each, timeout=10)
    for round_ in range(3):
        kubectl.apply(vm(f"passer-{round_}", namespace))
        wait_ready(kubectl, f"passer-{round_}", namespace)
        kubectl.run("delete", "qvm", f"passer-{round_}", "-n", namespace, "--timeout=60s")
    time.sleep(2)
    touched = {(e["objectRef"].get("resource"), e["objectRef"].get("name", "")) for e in controller_writes()[before:]}  # type: ignore[union-attr]
    assert all(not name.startswith("giant") for _, name in touched), touched
    assert len(controller_writes()) - before == 3 * 2  # each passer: its allocation and its Scheduled event
