#!/usr/bin/env python3
"""How one node's agent copes with VMs placed together: run with `.venv/bin/python tools/node_burst.py`.

Starts a one-node local cluster (16 VFs), then prints: apply-to-Ready of one VM at a time, of N
VMs applied at once (all on that node), the ratio of the burst's time to N single VMs, and what
the agent wrote per VM (VM patches, Events, QatNode status writes) from the audit log. Prints
numbers, asserts nothing: a loaded machine must not fail a build.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qatvm.testing.cluster import LocalNodes
from qatvm.testing.kubectl import Kubectl

NAMESPACE = "burst"


def qatvm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qatvm", *args], capture_output=True, text=True, check=True)


def vm(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"memory": "256Mi", "qat": {"count": 1, "numa": "none"}, "image": {"path": "/var/lib/qatvm/images/base.qcow2"}},
    }


def ready_times(kubectl: Kubectl, names: list[str], started: float, timeout: float = 180) -> dict[str, float]:
    """Seconds from `started` until each VM reports Ready, polling every 50 ms."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(names) and time.monotonic() < deadline:
        for item in kubectl.json("get", "qvm", "-n", NAMESPACE)["items"]:
            name = item["metadata"]["name"]
            conditions = (item.get("status") or {}).get("conditions", [])
            if name in names and name not in seen and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                seen[name] = time.monotonic() - started
        time.sleep(0.05)
    missing = set(names) - set(seen)
    if missing:
        raise TimeoutError(f"not Ready after {timeout:.0f}s: {sorted(missing)}")
    return seen


def agent_writes(nodes: LocalNodes, since: datetime.datetime) -> tuple[dict[str, int], int]:
    """From the audit log: the agent's patches per VM, and its QatNode status writes."""
    per_vm: dict[str, int] = {}
    qatnode = 0
    for e in nodes.audit.events():
        if e.get("stage") != "ResponseComplete" or "qatvm-agent" not in e["user"]["username"]:
            continue
        if datetime.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")) < since:
            continue
        ref = e.get("objectRef") or {}
        if e["verb"] not in ("create", "patch", "update"):
            continue
        if ref.get("resource") == "qatvirtualmachines" and ref.get("namespace") == NAMESPACE:
            per_vm[ref["name"]] = per_vm.get(ref["name"], 0) + 1
        elif ref.get("resource") == "qatnodes" and ref.get("subresource") == "status":
            qatnode += 1
    return per_vm, qatnode


def agent_events(kubectl: Kubectl) -> dict[str, int]:
    events: dict[str, int] = {}
    for e in kubectl.json("get", "events", "-n", NAMESPACE)["items"]:
        if e["source"].get("component", "").startswith("qatvm-agent"):
            name = e["involvedObject"]["name"]
            events[name] = events.get(name, 0) + 1
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=16, help="VMs applied at once (the node has 16 VFs)")
    parser.add_argument("--singles", type=int, default=3, help="single VMs to time one after another")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qatvm-node-burst-") as scratch:
        state_dir = Path(scratch) / "cluster"
        qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir))
        try:
            nodes = LocalNodes(state_dir)
            kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
            kubectl.run("create", "namespace", NAMESPACE)
            singles = []
            for i in range(args.singles):
                started = time.monotonic()
                kubectl.apply(vm(f"single-{i}"))
                singles.append(ready_times(kubectl, [f"single-{i}"], started)[f"single-{i}"])
                kubectl.run("delete", "qvm", f"single-{i}", "-n", NAMESPACE, "--timeout=60s")
            one = statistics.median(singles)
            print(f"one VM, apply to Ready: median {one:.2f}s over {len(singles)} ({', '.join(f'{s:.2f}' for s in singles)})")

            time.sleep(1.5)  # let the inventory settle, so the burst's QatNode writes are its own
            since = datetime.datetime.now(datetime.UTC)
            names = [f"burst-{i}" for i in range(args.burst)]
            started = time.monotonic()
            kubectl.apply(*(vm(n) for n in names))
            times = sorted(ready_times(kubectl, names, started).values())
            total = times[-1]
            time.sleep(1.5)  # the last coalesced QatNode write lands
            per_vm, qatnode = agent_writes(nodes, since)
            events = agent_events(kubectl)
            print(f"{args.burst} VMs at once on one node, apply to Ready: all in {total:.2f}s; "
                  f"p50 {times[len(times) // 2]:.2f}s, max {total:.2f}s")
            print(f"burst time / ({args.burst} x one VM): {total / (args.burst * one):.2f} "
                  f"({total:.2f}s vs {args.burst * one:.2f}s one after another)")
            counts = [per_vm.get(n, 0) for n in names]
            print(f"agent writes per VM (create to Ready): max {max(counts)}, total {sum(counts)}; "
                  f"agent Events per VM: max {max((events.get(n, 0) for n in names), default=0)}; "
                  f"QatNode status writes: {qatnode} ({qatnode / args.burst:.2f} per VM)")
        finally:
            qatvm("local", "down", "--purge", "--state-dir", str(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
