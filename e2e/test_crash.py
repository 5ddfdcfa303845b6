"""Kill -9 the controller and an agent in the middle of a burst; every invariant must hold after."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

from qatvm.node.binding import VfBinder
from qatvm.node.sysfs import open_sysfs
from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from vms import all_vms, vm


def _kill(nodes: LocalNodes, component: str) -> None:
    pid = nodes.state().components[component]
    os.kill(pid, signal.SIGKILL)


def _settled(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    vms = [v for v in all_vms(kubectl) if v["metadata"]["namespace"] == namespace]
    for v in vms:
        st = v.get("status") or {}
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
        scheduled = next((c for c in st.get("conditions", []) if c["type"] == "Scheduled"), None)
        is_ready = ready is not None and ready["status"] == "True"
        is_waiting = st.get("phase") == "Pending" and scheduled is not None and scheduled["status"] == "False" and scheduled["message"]
        assert is_ready or is_waiting, (v["metadata"]["name"], st)
        assert not v["metadata"].get("deletionTimestamp"), v["metadata"]["name"]
    return vms


def test_crash_in_a_burst_keeps_every_invariant(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    rng = random.Random(7)
    names = [f"burst-{i}" for i in range(14)]
    for i, name in enumerate(names):
        kubectl.apply(vm(name, namespace, count=rng.choice([1, 2, 3]), numa="none"))
        if i == 4:
            _kill(nodes, "controller")
        if i == 7:
            _kill(nodes, "agent-node-1")
        if i >= 6 and i % 3 == 0:
            kubectl.run("delete", "qvm", names[i - 5], "-n", namespace, "--wait=false")
        time.sleep(0.05)
    _kill(nodes, "agent-node-2")
    kubectl.run("delete", "qvm", names[-1], "-n", namespace, "--wait=false")

    vms = eventually(lambda: _settled(kubectl, namespace), timeout=120, interval=0.5)

    # A VF is never allocated to two VMs.
    held = [(v["status"]["nodeName"], d["pciAddress"]) for v in vms for d in (v.get("status") or {}).get("devices", [])]
    assert len(held) == len(set(held)), held
    by_node: dict[str, set[str]] = {}
    for node, address in held:
        by_node.setdefault(node, set()).add(address)
    uids_by_node: dict[str, set[str]] = {}
    for v in vms:
        if (v.get("status") or {}).get("nodeName"):
            uids_by_node.setdefault(v["status"]["nodeName"], set()).add(v["metadata"]["uid"])

    everyone = {v["metadata"]["uid"] for v in all_vms(kubectl)}
    for node in nodes.state().nodes:
        root = nodes.root(node)
        # No orphan domain: every qatvm domain on the node belongs to a VM that exists.
        with_owner = {domain.owner.uid for _, domain in nodes.domains(node).values() if domain.owner}
        assert with_owner <= everyone, f"orphan domains on {node}: {with_owner - everyone}"
        assert uids_by_node.get(node, set()) <= with_owner
        # No VF left on vfio-pci with no owner, and none remembered as bound without one.
        sysfs = open_sysfs(root / "sys")
        on_vfio = {a for a in sysfs.listdir("bus/pci/devices") if sysfs.readlink(f"bus/pci/devices/{a}/driver") == "vfio-pci"}
        others = {a for v in all_vms(kubectl) if (v.get("status") or {}).get("nodeName") == node for a in (d["pciAddress"] for d in v["status"]["devices"])}
        assert on_vfio <= others, f"VFs on vfio-pci with no VM on {node}: {on_vfio - others}"
        assert set(VfBinder(sysfs, root / "var/lib/qatvm/binding").held()) <= others
    restarted = nodes.state().components
    assert all(name in restarted for name in ("controller", "agent-node-1", "agent-node-2"))

