"""Attacks on what the agents trust: labels, forged allocations, dropped finalizers, large userData.

Each test does what a tenant or a careless user did in the findings of issue 9, on the session's
local cluster, and checks the nodes themselves (sysfs, libvirt, the agent's files) afterwards.
Label and manifest changes are made as an admin, who may do all a tenant may and more; a finalizer
forced off needs an admin, since the shipped policies refuse it to anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from holdings import allocated_to, drivers, records
from vms import condition, status, vm, wait_ready

FINALIZER = "agent.qatvm.io/finalizer"


def on_node(manifest: dict[str, Any], node: str) -> dict[str, Any]:
    manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return manifest


def uid_of(kubectl: Kubectl, name: str, namespace: str) -> str:
    return str(kubectl.json("get", "qvm", name, "-n", namespace)["metadata"]["uid"])




@contextmanager
def paused(nodes: LocalNodes, component: str) -> Iterator[None]:
    """The component stopped (SIGSTOP) for the block: it sees nothing of what happens meanwhile."""
    pid = nodes.state().components[component]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile
            os.kill(pid, signal.SIGCONT)


def test_relabelling_a_vm_gives_no_agent_any_authority(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(on_node(vm("victim", namespace), "node-1"), on_node(vm("relabelled", namespace), "node-2"))
    wait_ready(kubectl, "victim", namespace)
    wait_ready(kubectl, "relabelled", namespace)
    victim, attacker = status(kubectl, "victim", namespace), status(kubectl, "relabelled", namespace)
    [victim_vf] = [d["pciAddress"] for d in victim["devices"]]
    attacker_vfs = {d["pciAddress"]: d.get("driver") for d in attacker["devices"]}
    attacker_uid = uid_of(kubectl, "relabelled", namespace)
    # Finding 2: the same address on the victim's node, a label naming that node, then delete.
    kubectl.run("label", "qvm", "relabelled", "-n", namespace, "qatvm.io/node=node-1", "--overwrite")
    kubectl.run("delete", "qvm", "relabelled", "-n", namespace, "--timeout=60s")

    # The victim's node did nothing: its domain runs, its VF is on vfio-pci and recorded for it.
    assert nodes.domains("node-1")[victim["domain"]["name"]][0].value == "running"
    assert nodes.driver("node-1", victim_vf) == "vfio-pci"
    assert records(nodes, "node-1")[victim_vf] == uid_of(kubectl, "victim", namespace)
    assert condition(kubectl, "victim", namespace, "Ready")["status"] == "True"  # type: ignore[index]
    # The attacker's own node cleaned up its own VM.
    assert attacker["domain"]["name"] not in nodes.domains("node-2")
    assert {a: nodes.driver("node-2", a) for a in attacker_vfs} == attacker_vfs
    assert attacker_uid not in records(nodes, "node-2").values()


def test_an_allocation_naming_no_vf_of_the_node_is_refused_with_nothing_written(
    kubectl: Kubectl, nodes: LocalNodes, namespace: str
) -> None:
    # Placed by a forged status write (finding 5) rather than by the controller.
    kubectl.apply({**vm("forged", namespace), "spec": {**vm("forged", namespace)["spec"], "nodeSelector": {"qatvm.io/nowhere": "true"}}})
    eventually(lambda: _assert_pending(kubectl, "forged", namespace), timeout=30)
    pf = kubectl.json("get", "qatnode", "node-1")["status"]["vfs"][0]["pfAddress"]
    pf_driver = drivers(nodes, "node-1")[pf]
    forged = {"status": {"nodeName": "node-1", "devices": [{"pciAddress": pf}, {"pciAddress": "0000:ee:00.1"}]}}
    kubectl.run("patch", "qvm", "forged", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(forged))

    def refused() -> dict[str, Any]:
        ready = condition(kubectl, "forged", namespace, "Ready")
        assert ready is not None and ready["reason"] == "ForeignDevice", ready
        return ready

    ready = eventually(refused, timeout=30)
    assert f"status.devices names {pf}, which is not a QAT VF on node node-1 (it is another kind of device)" in ready["message"]
    assert status(kubectl, "forged", namespace)["phase"] == "Failed"
    # Other tests' VMs come and go on this node meanwhile: only what this VM could have moved is checked.
    assert drivers(nodes, "node-1")[pf] == pf_driver
    uid = uid_of(kubectl, "forged", namespace)
    assert uid not in records(nodes, "node-1").values()
    on_vfio = {a for a, d in drivers(nodes, "node-1").items() if d == "vfio-pci"}
    assert on_vfio <= set(records(nodes, "node-1"))
    assert all(d.owner is None or d.owner.uid != uid for _, d in nodes.domains("node-1").values())
    kubectl.run("delete", "qvm", "forged", "-n", namespace, "--timeout=60s")


def test_replace_with_the_original_manifest_and_an_agent_restart_keep_the_vm(
    kubectl: Kubectl, nodes: LocalNodes, namespace: str
) -> None:
    manifest = on_node(vm("replaced", namespace), "node-1")
    kubectl.apply(manifest)
    wait_ready(kubectl, "replaced", namespace)
    before = status(kubectl, "replaced", namespace)
    uid = uid_of(kubectl, "replaced", namespace)
    overlay = nodes.root("node-1") / "var/lib/qatvm/vms" / uid / "overlay.qcow2"
    inode = overlay.stat().st_ino
    domain = before["domain"]["name"]

    # Finding 4: replace drops the labels and finalizers; then the agent restarts. (A running
    # agent puts its finalizer back at once: it is held still to see the VM without it.)
    with paused(nodes, "agent-node-1"):
        kubectl.run("replace", "-f", "-", input=manifest)
        assert FINALIZER not in (kubectl.json("get", "qvm", "replaced", "-n", namespace)["metadata"].get("finalizers") or [])
        os.kill(nodes.state().components["agent-node-1"], signal.SIGKILL)

    def finalizer_back() -> None:
        assert FINALIZER in (kubectl.json("get", "qvm", "replaced", "-n", namespace)["metadata"].get("finalizers") or [])

    eventually(finalizer_back, timeout=60)
    assert uid_of(kubectl, "replaced", namespace) == uid
    assert nodes.domains("node-1")[domain][0].value == "running"
    assert overlay.stat().st_ino == inode  # the guest's disk was never deleted and made anew
    assert all(nodes.driver("node-1", d["pciAddress"]) == "vfio-pci" for d in before["devices"])
    ready = condition(kubectl, "replaced", namespace, "Ready")
    assert ready is not None and ready["status"] == "True", ready


def test_a_vm_whose_finalizer_was_forced_off_is_cleaned_up_within_seconds(
    kubectl: Kubectl, nodes: LocalNodes, namespace: str
) -> None:
    kubectl.apply(on_node(vm("forced", namespace, count=2), "node-2"))
    wait_ready(kubectl, "forced", namespace)
    st = status(kubectl, "forced", namespace)
    uid = uid_of(kubectl, "forced", namespace)
    given = {d["pciAddress"]: d.get("driver") for d in st["devices"]}
    assert set(allocated_to(kubectl, "node-2").items()) >= {(a, uid) for a in given}

    # Finding 3: the finalizer removed by force and the VM deleted, while the agent looks away.
    with paused(nodes, "agent-node-2"):
        kubectl.run("patch", "qvm", "forced", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        kubectl.run("delete", "qvm", "forced", "-n", namespace, "--timeout=30s")

    def cleaned_up() -> None:
        assert st["domain"]["name"] not in nodes.domains("node-2")
        assert {a: nodes.driver("node-2", a) for a in given} == given
        assert uid not in records(nodes, "node-2").values()
        assert not (nodes.root("node-2") / "var/lib/qatvm/vms" / uid).exists()
        assert uid not in allocated_to(kubectl, "node-2").values()

    eventually(cleaned_up, timeout=15, interval=0.5)


def test_64_kib_of_non_ascii_user_data_reaches_ready_and_deletes(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    user_data = "#cloud-config\n# " + "é" * 32_700 + "\n"
    assert 65_000 < len(user_data.encode()) <= 65_536
    manifest = vm("large", namespace)
    manifest["spec"]["cloudInit"] = {"userData": user_data}
    kubectl.apply(manifest)
    wait_ready(kubectl, "large", namespace, timeout=90)
    meta = kubectl.json("get", "qvm", "large", "-n", namespace)["metadata"]
    # Nothing the operator stores grows with userData: no annotation at all from it.
    assert not [k for k in meta.get("annotations") or {} if "kopf" in k or k.startswith("agent.qatvm.io/")], meta
    kubectl.run("delete", "qvm", "large", "-n", namespace, "--timeout=60s")


def test_create_to_ready_costs_the_agent_one_write_and_one_event(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("counted", namespace, count=2))
    # The API server put the agent's finalizer there: the agent has nothing to add.
    assert kubectl.json("get", "qvm", "counted", "-n", namespace)["metadata"]["finalizers"] == [FINALIZER]
    wait_ready(kubectl, "counted", namespace)
    attempts = [
        (e["verb"], e["objectRef"].get("subresource"), e.get("responseStatus", {}).get("code"))
        for e in nodes.audit.events()
        if (e.get("objectRef") or {}).get("resource") == "qatvirtualmachines"
        and e["objectRef"].get("namespace") == namespace and e["objectRef"].get("name") == "counted"
        and e["verb"] in ("create", "update", "patch") and e.get("stage") == "ResponseComplete"
        and "qatvm-agent" in e["user"]["username"]
    ]
    print(f"agent write attempts on the VM from create to Ready: {attempts}")
    # A conflict (409: the controller wrote the VM again meanwhile) changes nothing and is retried.
    written = [(verb, sub or "") for verb, sub, code in attempts if code is not None and code < 300]
    assert written == [("patch", "status")]  # the outcome
    events = kubectl.json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=counted")["items"]
    by_agents = [e for e in events if e["source"].get("component", "").startswith("qatvm-agent")]
    assert [e["reason"] for e in by_agents] == ["Running"], by_agents
    annotations = kubectl.json("get", "qvm", "counted", "-n", namespace)["metadata"].get("annotations") or {}
    assert [k for k in annotations if not k.startswith("kubectl.kubernetes.io/")] == []  # kubectl apply's own only


def _assert_pending(kubectl: Kubectl, name: str, namespace: str) -> None:
    assert status(kubectl, name, namespace).get("phase") == "Pending"
