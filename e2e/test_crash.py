"""Kill -9 the controller and the agents in the middle of bursts; every invariant must hold after.

Several seeds, each a burst of VMs (more than the nodes' VFs, so some wait) with deletions mixed
in and kills of the controller and both agents, some at once. After each burst settles: no VF in
two VMs or two domains, no orphan domain, binding or file, every QatNode's `allocatedTo` equal to
what the VM statuses say; after deleting everything, every VF's driver and every free count is
back as before the burst.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest

from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from holdings import allocated_to, drivers, records
from vms import all_vms, vm

SEEDS = (7, 11, 23)
VMS_PER_SEED = 36
BATCH = 4


def _kill(nodes: LocalNodes, *components: str) -> None:
    for component in components:
        # One killed a moment ago may still be coming back: on real nodes the kubelet restarts a
        # crashed container only after a back-off of 10 s and more.
        os.kill(eventually(lambda: _running(nodes, component), timeout=120, interval=0.5), signal.SIGKILL)


def _running(nodes: LocalNodes, component: str) -> int:
    pid = nodes.state().components.get(component)
    assert pid is not None, f"{component} is not running"
    return pid


def _ours(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    return [v for v in all_vms(kubectl) if v["metadata"]["namespace"] == namespace]


def _settled(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    vms = _ours(kubectl, namespace)
    for v in vms:
        st = v.get("status") or {}
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
        scheduled = next((c for c in st.get("conditions", []) if c["type"] == "Scheduled"), None)
        is_ready = ready is not None and ready["status"] == "True"
        is_waiting = st.get("phase") == "Pending" and scheduled is not None and scheduled["status"] == "False" and scheduled["message"]
        assert is_ready or is_waiting, (v["metadata"]["name"], st)
        assert not v["metadata"].get("deletionTimestamp"), v["metadata"]["name"]
    return vms


def _quiet(kubectl: Kubectl) -> None:
    """Earlier tests' namespaces gone, with their VMs: the baseline is the idle cluster's."""
    phases = [ns["status"]["phase"] for ns in kubectl.json("get", "namespaces")["items"]]
    assert "Terminating" not in phases
    assert all_vms(kubectl) == []



def _free(kubectl: Kubectl, nodes: LocalNodes) -> dict[str, int]:
    return {node: kubectl.json("get", "qatnode", node)["status"]["free"] for node in nodes.state().nodes}


def _check_invariants(kubectl: Kubectl, nodes: LocalNodes, vms: list[dict[str, Any]]) -> None:
    # A VF is never allocated to two VMs.
    held = [(v["status"]["nodeName"], d["pciAddress"]) for v in vms for d in (v.get("status") or {}).get("devices", [])]
    assert len(held) == len(set(held)), held
    for node in nodes.state().nodes:
        placed = {d["pciAddress"]: v["metadata"]["uid"] for v in vms if (v.get("status") or {}).get("nodeName") == node for d in v["status"]["devices"]}
        uids = set(placed.values())
        domains = nodes.domains(node)
        # No orphan domain, and every placed VM has its own, with exactly its VFs.
        owners = {d.owner.uid for _, d in domains.values() if d.owner}
        assert owners == uids, f"domains on {node}: orphans {owners - uids}, missing {uids - owners}"
        in_domains = [h.source.address.bdf for _, d in domains.values() for h in d.devices.hostdevs]
        assert len(in_domains) == len(set(in_domains)), f"a VF in two domains on {node}: {in_domains}"
        assert {a: uid for _, d in domains.values() for a in (h.source.address.bdf for h in d.devices.hostdevs) for uid in [d.owner.uid if d.owner else None]} == placed
        # No VF on vfio-pci, or recorded as bound, without its VM; the node's word agrees.
        on_vfio = {a for a, drv in drivers(nodes, node).items() if drv == "vfio-pci"}
        assert on_vfio == set(placed), f"vfio-pci on {node}: {on_vfio ^ set(placed)}"
        assert records(nodes, node) == placed
        vm_dirs = nodes.root(node) / "var/lib/qatvm/vms"
        files = {p.name for p in vm_dirs.iterdir()} if vm_dirs.exists() else set()
        assert files == uids, f"files on {node}: {files ^ uids}"
        assert allocated_to(kubectl, node) == placed


@pytest.mark.parametrize("seed", SEEDS)
def test_crashes_in_a_burst_keep_every_invariant(kubectl: Kubectl, nodes: LocalNodes, namespace: str, seed: int) -> None:
    eventually(lambda: _quiet(kubectl), timeout=120, interval=1)
    node_names = nodes.state().nodes
    drivers_before = {node: drivers(nodes, node) for node in node_names}
    free_before = _free(kubectl, nodes)
    rng = random.Random(seed)
    kills = {
        VMS_PER_SEED // 4: ("controller",),
        VMS_PER_SEED // 2: (rng.choice([f"agent-{n}" for n in node_names]),),
        3 * VMS_PER_SEED // 4: ("controller", *(f"agent-{n}" for n in node_names)),
    }
    names = [f"burst-{seed}-{i}" for i in range(VMS_PER_SEED)]
    started = time.monotonic()
    for first in range(0, VMS_PER_SEED, BATCH):
        batch = names[first:first + BATCH]
        kubectl.apply(*(vm(name, namespace, count=rng.choice([1, 2, 3]), numa="none") for name in batch))
        for i in range(first, first + BATCH):
            if i in kills:
                _kill(nodes, *kills[i])
        victims = rng.sample(names[:first], k=min(first, rng.choice([0, 1, 2])))
        if victims:
            kubectl.run("delete", "qvm", *victims, "-n", namespace, "--wait=false", "--ignore-not-found")
        time.sleep(rng.uniform(0, 0.3))

    vms = eventually(lambda: _settled(kubectl, namespace), timeout=120, interval=0.5)
    # The nodes catch up with what the API says (a killed agent restarts, adopts and cleans up).
    eventually(lambda: _check_invariants(kubectl, nodes, _settled(kubectl, namespace)), timeout=60, interval=1)
    settled = time.monotonic() - started
    running = sum(1 for v in vms if v["status"].get("phase") == "Running")

    kubectl.run("delete", "qvm", "--all", "-n", namespace, "--timeout=120s", timeout=130)

    def back_as_before() -> None:
        assert _ours(kubectl, namespace) == []
        for node in node_names:
            assert drivers(nodes, node) == drivers_before[node]
            assert records(nodes, node) == {}
            assert nodes.domains(node) == {}
            assert allocated_to(kubectl, node) == {}
        assert _free(kubectl, nodes) == free_before

    eventually(back_as_before, timeout=60, interval=1)
    print(f"seed {seed}: {VMS_PER_SEED} VMs, {running} running at the end, settled in {settled:.1f}s, "
          f"all given back {time.monotonic() - started - settled:.1f}s later")
