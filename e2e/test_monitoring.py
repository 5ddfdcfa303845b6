"""`qatvm local up --monitoring`: a real Prometheus scrapes the controller and every agent, and
what it answers agrees with the API objects."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from qatvm.testing.cluster import E2eCluster, eventually
from qatvm.testing.prometheus import by_label, query
from vms import vm, wait_ready


def prometheus_url(cluster: E2eCluster) -> str:
    assert cluster.local is not None
    status = subprocess.run(
        [sys.executable, "-m", "qatvm", "local", "status", "--output", "json", "--state-dir", str(cluster.local.state_dir)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    url = json.loads(status.stdout)["prometheus"]
    assert isinstance(url, str) and url.startswith("http://127.0.0.1:")
    return url


def test_promql_free_vfs_match_the_qatnodes(monitored: E2eCluster) -> None:
    kubectl, url = monitored.kubectl, prometheus_url(monitored)
    namespace = f"metrics-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", namespace)
    try:
        kubectl.apply(vm("crypto", namespace, count=3, services=["sym"]), vm("zip", namespace, count=2, services=["dc"]))
        wait_ready(kubectl, "crypto", namespace)
        wait_ready(kubectl, "zip", namespace)

        def agree() -> dict[str, float]:
            inventories = {n["metadata"]["name"]: n["status"] for n in kubectl.json("get", "qatnode")["items"]}
            free = by_label(url, 'sum by (node) (qatvm_node_vfs{state="free"})', "node")
            assert free == {name: float(s["free"]) for name, s in inventories.items()}
            total = by_label(url, "sum by (node) (qatvm_node_vfs)", "node")
            assert total == {name: float(s["total"]) for name, s in inventories.items()}
            return free

        free = eventually(agree, timeout=30, interval=1)
        assert sum(free.values()) <= 32 - 5  # our two VMs hold 5 of the 32 VFs

        def vms_counted() -> None:
            phases = by_label(url, "sum by (phase) (qatvm_vms)", "phase")
            assert sum(phases.values()) == len(kubectl.json("get", "qvm", "-A")["items"])
            assert phases["Running"] >= 2

        eventually(vms_counted, timeout=30, interval=1)
        [leader] = query(url, "sum(qatvm_leader)")
        assert float(leader["value"][1]) == 1
        placed = query(url, "sum(qatvm_schedule_duration_seconds_count)")
        assert float(placed[0]["value"][1]) >= 2
        up = by_label(url, "up", "instance")
        assert len(up) == 3 and set(up.values()) == {1.0}, up  # the controller and both agents
    finally:
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
