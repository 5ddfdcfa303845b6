#!/usr/bin/env python3
"""Print qatvm's speed and memory figures; run with the project's Python: `.venv/bin/python tools/benchmark.py`.

Measures, on a fresh local cluster: how long `qatvm local up` takes once the binaries are built,
the resident memory of every component, the time from `kubectl apply` to Ready for one VM and for
a burst, and the API writes each VM costs. Prints numbers; asserts nothing (targets live in the
README and the issues, and a loaded machine should not fail a build).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qatvm.controlplane.binaries import BUILD_RECORD, bundles
from qatvm.local.state import ClusterState
from qatvm.testing.cluster import LocalNodes
from qatvm.testing.kubectl import Kubectl


def qatvm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qatvm", *args], capture_output=True, text=True, check=True)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a real node: its containerd, kubelet, shims, pods)."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int(next(l for l in (proc / "status").read_text().splitlines() if l.startswith("PPid:")).split()[1])
            except (OSError, StopIteration):
                continue
            parents.setdefault(ppid, []).append(int(proc.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(parents.get(current, []))
    return found


def kubelet_mode(ups: int) -> None:
    """`local up --kubelet`: the first run as the caches are (cold if they are empty), then warm."""
    with tempfile.TemporaryDirectory(prefix="qatvm-bench-") as scratch:
        state_dir = Path(scratch) / "cluster"
        for run in range(ups):
            started = time.monotonic()
            qatvm("local", "up", "--kubelet", "--state-dir", str(state_dir))
            print(f"`qatvm local up --kubelet` run {run + 1}: {time.monotonic() - started:.1f}s")
            if run == ups - 1:
                state = ClusterState.load(state_dir)
                assert state is not None
                for name, pid in state.components.items():
                    if name.startswith("node-"):
                        total = sum(rss_mib(p) for p in descendants(pid))
                        print(f"resident memory of {name} (kubelet, containerd, shims, its pods): {total:.0f} MiB")
            qatvm("local", "down", "--purge", "--state-dir", str(state_dir))


def vm(name: str, count: int) -> dict[str, object]:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"memory": "256Mi", "qat": {"count": count, "numa": "none"}, "image": {"path": "/var/lib/qatvm/images/base.qcow2"}},
    }


def wait_ready(kubectl: Kubectl, names: list[str]) -> None:
    for name in names:
        kubectl.run("wait", "--for=condition=Ready", f"qvm/{name}", "-n", "bench", "--timeout=120s", timeout=130)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ups", type=int, default=3, help="how many warm `local up` runs to time")
    parser.add_argument("--burst", type=int, default=20, help="VMs applied at once")
    parser.add_argument("--kubelet", action="store_true", help="time `local up --kubelet` and its nodes' memory instead")
    args = parser.parse_args()
    if args.kubelet:
        kubelet_mode(args.ups)
        return 0

    for bundle in bundles():
        record = bundle.directory / BUILD_RECORD
        built = json.loads(record.read_text()) if record.exists() else None
        print(f"cold build {bundle.name} {bundle.version}: "
              + (f"{built['seconds']}s, peak RSS of one compiler/linker {built['peak_rss_mib']} MiB" if built else "not recorded (built before build.json existed)"))

    with tempfile.TemporaryDirectory(prefix="qatvm-bench-") as scratch:
        state_dir = Path(scratch) / "cluster"
        ups = []
        for run in range(args.ups):
            started = time.monotonic()
            qatvm("local", "up", "--nodes", "2", "--state-dir", str(state_dir))
            ups.append(time.monotonic() - started)
            if run < args.ups - 1:
                qatvm("local", "down", "--purge", "--state-dir", str(state_dir))
        print(f"warm `qatvm local up` (2 nodes, fresh state): median {statistics.median(ups):.1f}s over {len(ups)} runs ({', '.join(f'{u:.1f}' for u in ups)})")
        try:
            state = ClusterState.load(state_dir)
            assert state is not None
            memory = {name: rss_mib(pid) for name, pid in state.components.items()}
            control_plane = sum(v for k, v in memory.items() if k in ("etcd", "kube-apiserver", "kube-controller-manager"))
            print("resident memory, idle: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items()))
            print(f"control plane total: {control_plane:.0f} MiB")

            kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
            kubectl.run("create", "namespace", "bench")
            singles = []
            for i in range(5):
                started = time.monotonic()
                kubectl.apply(vm(f"single-{i}", 1))
                wait_ready(kubectl, [f"single-{i}"])
                singles.append(time.monotonic() - started)
            print(f"apply to Ready, one VM at a time: median {statistics.median(singles) * 1000:.0f} ms (kubectl apply + kubectl wait included)")

            names = [f"burst-{i}" for i in range(args.burst)]
            started = time.monotonic()
            kubectl.apply(*[vm(n, 1) for n in names])
            wait_ready(kubectl, names)
            print(f"apply to Ready, {args.burst} VMs at once: {time.monotonic() - started:.1f}s for all")

            audit = LocalNodes(state_dir).audit.events()
            per_vm: dict[str, int] = {}
            for event in audit:
                ref = event.get("objectRef") or {}
                user = event["user"]["username"]
                if ref.get("resource") == "qatvirtualmachines" and ref.get("namespace") == "bench" and event["verb"] in ("patch", "update") and "qatvm-" in user and event.get("stage") == "ResponseComplete":
                    per_vm[ref["name"]] = per_vm.get(ref["name"], 0) + 1
            counts = sorted(per_vm.values())
            print(f"operator writes per VM, create to Ready: median {statistics.median(counts)}, max {counts[-1]} over {len(counts)} VMs")
            memory = {name: rss_mib(pid) for name, pid in ClusterState.load(state_dir).components.items()}  # type: ignore[union-attr]
            print("resident memory after the burst: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items()))
        finally:
            qatvm("local", "down", "--purge", "--state-dir", str(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
