"""`qatvm local up/status/down` as a user runs them: separate commands, a cluster in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qatvm.local.state import ClusterState
from qatvm.processes import pid_alive, wait_until
from qatvm.testing.cluster import eventually
from qatvm.testing.installed import require_commands
from qatvm.testing.kubectl import Kubectl
from qatvm.testing.prometheus import by_label


def qatvm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qatvm", *args], capture_output=True, text=True, timeout=timeout)


def exports(stdout: str) -> dict[str, str]:
    line = next(line for line in stdout.splitlines() if line.startswith("export "))
    return dict(part.split("=", 1) for part in line.removeprefix("export ").split())


def test_local_up_serves_crds_and_nodes_and_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    started = time.monotonic()
    up = qatvm("local", "up", "--nodes", "3", "--state-dir", str(state_dir))
    elapsed = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    print(f"warm `qatvm local up` took {elapsed:.1f}s")
    # While it waits, `up` shows each stage the supervisor reaches.
    assert "  control plane ready in " in up.stderr and "  every node's inventory published " in up.stderr, up.stderr
    try:
        env = exports(up.stdout)
        assert env["KUBECONFIG"] == str(state_dir / "kubeconfig")
        assert env["PATH"].startswith(f"{state_dir / 'bin'}:")
        kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
        nodes = [n["metadata"]["name"] for n in kubectl.json("get", "nodes")["items"]]
        assert nodes == ["node-1", "node-2", "node-3"]
        assert kubectl.run("get", "qvm", "-A").returncode == 0
        # A VM applied now is placed: a controller leads already.
        assert kubectl.json("get", "lease", "qatvm-controller", "-n", "qatvm-system")["spec"]["holderIdentity"]
        for node in nodes:
            assert (state_dir / "nodes" / node).is_dir()

        # A second `up` finds the running cluster and prints the same exports.
        again = qatvm("local", "up", "--state-dir", str(state_dir))
        assert again.returncode == 0 and exports(again.stdout) == env

        status = qatvm("local", "status", "--state-dir", str(state_dir))
        assert status.returncode == 0 and "readyz: ok" in status.stdout, status.stdout
    finally:
        state = ClusterState.load(state_dir)
        down = qatvm("local", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert state is not None
    pids = [state.supervisor_pid, *state.components.values()]
    # The supervisor, etcd, kube-apiserver, kube-controller-manager, the controller, 3 agents.
    assert len(pids) == 8 and not any(pid_alive(pid) for pid in pids)
    assert qatvm("local", "status", "--state-dir", str(state_dir)).returncode == 3


def test_up_gives_up_at_its_timeout_and_so_does_the_supervisor(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    up = qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir), "--timeout", "1")
    assert up.returncode == 1, up.stderr
    assert "not ready after 1s (--timeout)" in up.stderr or "failed to start" in up.stderr, up.stderr
    # The supervisor has the same deadline: it stops what it started and exits, leaving the reason.
    # On a busy machine `up` can give up before the supervisor has even written its state.
    def supervisor_ended() -> bool:
        state = ClusterState.load(state_dir)
        return state is not None and not pid_alive(state.supervisor_pid)

    assert wait_until(supervisor_ended, 60)
    final = ClusterState.load(state_dir)
    assert final is not None and final.error and "not ready after" in final.error, final


def test_state_survives_down_and_up(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    assert qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir)).returncode == 0
    kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
    try:
        kubectl.run("create", "configmap", "kept", "--from-literal=answer=42")
    finally:
        assert qatvm("local", "down", "--state-dir", str(state_dir)).returncode == 0
    assert qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir)).returncode == 0
    try:
        assert kubectl.json("get", "configmap", "kept")["data"] == {"answer": "42"}
    finally:
        assert qatvm("local", "down", "--purge", "--state-dir", str(state_dir)).returncode == 0
    assert not state_dir.exists()


def test_supervisor_killed_takes_its_children_with_it(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    assert qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir)).returncode == 0
    state = ClusterState.load(state_dir)
    assert state is not None
    os.kill(state.supervisor_pid, 9)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(p) for p in state.components.values()):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in state.components.values())
    # The stale state file is recognised as stopped, and a new `up` starts cleanly.
    assert qatvm("local", "status", "--state-dir", str(state_dir)).returncode == 3
    assert qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir)).returncode == 0
    assert qatvm("local", "down", "--purge", "--state-dir", str(state_dir)).returncode == 0


def test_a_stale_state_file_whose_pid_is_reused_is_not_a_running_cluster(tmp_path: Path) -> None:
    # A crash left cluster.json behind, and the pid now belongs to another program (this test).
    ClusterState(supervisor_pid=os.getpid(), ready=True).save(tmp_path)
    assert not ClusterState.load(tmp_path).running()  # type: ignore[union-attr]
    assert qatvm("local", "status", "--state-dir", str(tmp_path)).returncode == 3


def test_monitoring_runs_prometheus_on_loopback_and_down_stops_it(tmp_path: Path) -> None:
    require_commands({"prometheus": "prometheus"})
    state_dir = tmp_path / "cluster"
    up = qatvm("local", "up", "--nodes", "1", "--monitoring", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(qatvm("local", "status", "--output", "json", "--state-dir", str(state_dir)).stdout)
        url = status["prometheus"]
        assert url.startswith("http://127.0.0.1:") and status["components"]["prometheus"]["running"]
        assert f"prometheus  {url}" in qatvm("local", "status", "--state-dir", str(state_dir)).stdout
        # Everything it keeps is under the state dir.
        config = yaml.safe_load((state_dir / "monitoring" / "prometheus.yml").read_text())
        targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
        assert len(targets) == 2 and all(t.startswith("127.0.0.1:") for t in targets)
        assert (state_dir / "monitoring" / "data").is_dir()

        def scraped() -> None:
            up_series = by_label(url, "up", "instance")
            assert up_series == {t: 1.0 for t in targets}

        eventually(scraped, timeout=30, interval=1)
    finally:
        state = ClusterState.load(state_dir)
        down = qatvm("local", "down", "--purge", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert state is not None and not any(pid_alive(pid) for pid in state.components.values())
    assert not state_dir.exists()


def test_stopped_status_as_json(tmp_path: Path) -> None:
    status = qatvm("local", "status", "--output", "json", "--state-dir", str(tmp_path))
    assert status.returncode == 3 and json.loads(status.stdout) == {"running": False, "stateDir": str(tmp_path)}
