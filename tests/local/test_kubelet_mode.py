"""`qatvm local up --kubelet` then `down` leaves the host as it found it.

The kubelet and containerd change kernel settings, iptables, mounts, cgroups and files at fixed
paths when they run on a host; here each node runs in namespaces of its own (see
qatvm/local/node_init.py). This compares what the host shows before `up` and after `down`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qatvm.local.kubelet_nodes import cgroup_hierarchies
from qatvm.local.node_init import KUBELET_SYSCTLS
from qatvm.local.state import ClusterState
from qatvm.processes import pid_alive
from qatvm.testing.kubectl import Kubectl

pytestmark = pytest.mark.kubelet

# Where a kubelet, containerd or the CNI plugins write when nothing stops them.
FIXED_PATHS = (
    "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni", "/var/log/pods", "/var/log/containers",
    "/run/containerd", "/run/netns", "/etc/cni", "/opt/cni", "/opt/containerd", "/etc/kubernetes",
)


def _host() -> dict[str, object]:
    def without_comments(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#")]

    mounts = sorted(
        " ".join((fields[4], fields[fields.index("-") + 1], fields[fields.index("-") + 2]))
        for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
    )
    sysctls = {key: Path(f"/proc/sys/{key}").read_text() for key in KUBELET_SYSCTLS}
    sysctls["net/ipv4/ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    return {
        "sysctls": sysctls,
        "iptables": without_comments(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout),
        "mounts": mounts,
        "links": sorted(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.split("\n")),
        "paths": {path: Path(path).exists() for path in FIXED_PATHS},
        "cgroups": sorted(str(p) for h in cgroup_hierarchies() for p in h.iterdir() if p.is_dir()),
    }


def test_kubelet_nodes_come_up_and_down_leaves_the_host_unchanged(tmp_path: Path) -> None:
    before = _host()
    state_dir = tmp_path / "cluster"
    qatvm = [sys.executable, "-m", "qatvm", "local"]
    up = subprocess.run([*qatvm, "up", "--kubelet", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, up.stderr
        kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
        nodes = kubectl.json("get", "nodes")["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["node-1", "node-2"]
        assert all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) for n in nodes
        )
        # The node's files are where `local up` keeps them without kubelets.
        assert (state_dir / "nodes" / "node-1" / "sys").is_dir()
        # The API server reaches a kubelet (through the nodes' own namespaces) for logs.
        agent = kubectl.json("get", "pods", "-n", "qatvm-system", "-l", "app.kubernetes.io/component=agent")["items"][0]
        logs = kubectl.run("logs", "-n", "qatvm-system", agent["metadata"]["name"])
        assert logs.stdout.strip()
    finally:
        state = ClusterState.load(state_dir)
        down = subprocess.run([*qatvm, "down", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr
    assert state is not None
    assert not [name for name, pid in state.components.items() if pid_alive(pid)]
    after = _host()
    for key in before:
        assert after[key] == before[key], key
