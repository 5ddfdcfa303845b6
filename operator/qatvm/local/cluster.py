"""`qatvm local up|down|status`: a whole qatvm cluster on this machine, for trying and testing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path

from qatvm.controlplane.binaries import BuildError, ensure_built
from qatvm.local import host_node as host
from qatvm.local.node_images import ImageError, pause_archive, qatvm_archive
from qatvm.local.state import ClusterState, default_state_dir
from qatvm.local.supervisor import STARTUP_TIMEOUT, node_names
from qatvm.processes import ManagedProcess, pid_alive, wait_until

# Real nodes pull nothing, but start containerd, import the images and start four pods.
KUBELET_UP_TIMEOUT = 420.0
DOWN_TIMEOUT = 60.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def up(
    state_dir: Path,
    nodes: int,
    hardware: Path | None,
    kubelet: bool = False,
    monitoring: bool = False,
    host_node: host.HostNode | None = None,
    timeout: float | None = None,
) -> int:
    timeout = timeout or (KUBELET_UP_TIMEOUT if kubelet else STARTUP_TIMEOUT)
    state = ClusterState.load(state_dir)
    if state and state.running():
        _say(f"the local cluster in {state_dir} is already running (supervisor pid {state.supervisor_pid})")
        if state.ready:
            print(state.exports())
            return 0
        return _wait_ready(state_dir, None, timeout)
    if host_node and not _ready_for_host_node(host_node):
        return 1
    ensure_built(kubelet=kubelet)
    state_dir.mkdir(parents=True, exist_ok=True)
    ClusterState.path(state_dir).unlink(missing_ok=True)
    profile: list[str | Path] = ["--hardware", hardware.resolve()] if hardware else []
    if kubelet:
        for image in (pause_archive(), qatvm_archive()):
            profile += ["--kubelet-image", image]
    if monitoring:
        profile.append("--monitoring")
    profile += host_node.argv() if host_node else []
    supervisor = ManagedProcess(
        "supervisor",
        [
            sys.executable, "-m", "qatvm.local.supervisor", "--state-dir", state_dir, "--nodes", nodes,
            "--timeout", timeout, *profile,
        ],
        state_dir / "logs" / "supervisor.log",
        env=_child_env(),
        # The cluster must outlive this command; `local down` stops it.
        die_with_parent=False,
    )
    started = time.monotonic()
    progress = _Progress(supervisor.log_path)
    supervisor.start()
    _say(f"starting the local cluster in {state_dir} (log: {supervisor.log_path})")
    code = _wait_ready(state_dir, supervisor, timeout, progress)
    if code == 0:
        _say(f"ready in {time.monotonic() - started:.1f}s")
    return code


def _ready_for_host_node(node: host.HostNode) -> bool:
    findings = node.preflight()
    _say(f"checking that this machine can be node {node.name}:")
    for finding in findings:
        for line in finding.lines():
            _say(f"  {line}")
    failed = [f.check for f in findings if not f.ok]
    if failed:
        _say(f"nothing was started: fix {', '.join(failed)} (see above), then run `qatvm local up` again")
    return not failed


def _child_env() -> dict[str, str]:
    # The supervisor imports this same package, wherever it was imported from.
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _wait_ready(
    state_dir: Path, supervisor: ManagedProcess | None, timeout: float, progress: _Progress | None = None
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if progress:
            progress.show()
        state = ClusterState.load(state_dir)
        if state and state.error:
            _say(f"the local cluster failed to start: {state.error}")
            return 1
        if state and state.ready:
            print(state.exports())
            return 0
        if supervisor is not None and not supervisor.alive():
            _say(f"the local cluster exited during start-up; end of {supervisor.log_path}:\n{supervisor.log_tail()}")
            return 1
        time.sleep(0.2)
    _say(f"the local cluster was not ready after {timeout:.0f}s (--timeout); see {state_dir / 'logs'}")
    return 1


class _Progress:
    """Says what the supervisor has reached so far (its log's lines), so a slow start shows where it is."""

    def __init__(self, log: Path) -> None:
        self.log = log
        # The log is appended to by every start in this state dir: only this one's lines are news.
        self.shown = log.stat().st_size if log.exists() else 0

    def show(self) -> None:
        try:
            with self.log.open("rb") as log:
                log.seek(self.shown)
                new = log.read()
        except FileNotFoundError:
            return
        # Whole lines only: the rest is shown once the supervisor has finished writing it.
        complete = new[: new.rfind(b"\n") + 1]
        self.shown += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            _say(f"  {line}")


def down(state_dir: Path, purge: bool) -> int:
    state = ClusterState.load(state_dir)
    if state is None or not state.running():
        _say(f"no local cluster is running in {state_dir}")
    else:
        os.kill(state.supervisor_pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(state.supervisor_pid), DOWN_TIMEOUT):
            _say(f"supervisor {state.supervisor_pid} did not stop in {DOWN_TIMEOUT:.0f}s; killing it")
            os.kill(state.supervisor_pid, signal.SIGKILL)
        # Its children die with it; confirm rather than assume.
        pids = state.components
        if not wait_until(lambda: not any(pid_alive(pid) for pid in pids.values()), 10):
            _say(f"still running after stop: {', '.join(n for n, pid in pids.items() if pid_alive(pid))}")
            return 1
        _say("the local cluster is stopped")
    if purge and state_dir.exists():
        shutil.rmtree(state_dir)
        _say(f"removed {state_dir}")
    return 0


def status(state_dir: Path, output: str = "text") -> int:
    state = ClusterState.load(state_dir)
    if state is None or not state.running():
        if output == "json":
            print(json.dumps({"running": False, "stateDir": str(state_dir)}))
        else:
            print(f"stopped (state dir {state_dir})")
        return 3
    if output == "json":
        print(json.dumps(_status_document(state_dir, state), indent=2))
        return 0
    print(f"supervisor  pid {state.supervisor_pid}  {'ready' if state.ready else 'starting'}")
    for name, pid in state.components.items():
        print(f"{name:<24} pid {pid:<8} {'running' if pid_alive(pid) else 'EXITED'}")
    if state.server:
        print(f"api server  {state.server}  readyz: {_readyz(state_dir, state.server)}")
    print(f"nodes       {' '.join(state.nodes)}")
    if state.prometheus:
        print(f"prometheus  {state.prometheus}")
    if state.ready:
        print(state.exports())
    return 0


def _status_document(state_dir: Path, state: ClusterState) -> dict[str, object]:
    return {
        "running": True,
        "stateDir": str(state_dir),
        "ready": state.ready,
        "supervisorPid": state.supervisor_pid,
        "components": {name: {"pid": pid, "running": pid_alive(pid)} for name, pid in state.components.items()},
        "server": state.server,
        "readyz": _readyz(state_dir, state.server) if state.server else None,
        "kubeconfig": state.kubeconfig,
        "nodes": state.nodes,
        "prometheus": state.prometheus,
    }


def _readyz(state_dir: Path, server: str) -> str:
    pki = state_dir / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(f"{server}/readyz", timeout=3, context=context) as response:
            return str(response.read().decode().strip())
    except OSError as error:
        return f"unreachable ({error})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qatvm local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, help_text in (
        ("up", "start the local cluster (builds the control plane on first use)"),
        ("down", "stop the local cluster"),
        ("status", "say what runs"),
    ):
        sub = parsers[name] = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help="where the cluster keeps its data (default: %(default)s)",
        )
        if name == "up":
            sub.add_argument("--nodes", type=int, default=2, help="simulated nodes (default: %(default)s)")
            sub.add_argument(
                "--kubelet", action="store_true",
                help="real nodes: a kubelet and containerd per node, each in its own namespaces, running the "
                "shipped manifests as pods from an image built here (builds kubelet and the image on first use)",
            )
            sub.add_argument(
                "--hardware", type=Path,
                help="hardware profile (YAML) for each simulated node; default: two 4xxx PFs, 8 VFs each, "
                "on NUMA nodes 0 (sym;asym) and 1 (dc); see `qatvm simulation sysfs --print-default-profile`",
            )
            sub.add_argument(
                "--timeout", type=float, metavar="SECONDS",
                help=f"how long to wait for the cluster to be ready (default: {STARTUP_TIMEOUT:.0f}, "
                f"{KUBELET_UP_TIMEOUT:.0f} with --kubelet); a slow machine, such as an emulated one, may need more",
            )
            sub.add_argument(
                "--monitoring", action="store_true",
                help="also run Prometheus (Debian's `prometheus`) on loopback, scraping the controller and every agent",
            )
            host.add_arguments(sub)
        if name == "down":
            sub.add_argument("--purge", action="store_true", help="also delete the state dir")
        if name == "status":
            sub.add_argument("--output", "-o", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    if args.command == "up" and args.kubelet and args.host_node is not None:
        parser.error("--host-node runs this machine's agent as a plain process beside simulated nodes; "
                     "with --kubelet every agent is a pod on a real node: use one of the two")
    if args.command == "up" and args.kubelet and args.monitoring:
        parser.error("--monitoring scrapes operators that listen on this machine's loopback, and with --kubelet they "
                     "run as pods inside the nodes' own networks: use one of the two")
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            host_node = host.from_args(parsers["up"], args, node_names(args.nodes))
            return up(state_dir, args.nodes, args.hardware, args.kubelet, args.monitoring, host_node, args.timeout)
        if args.command == "down":
            return down(state_dir, args.purge)
        return status(state_dir, args.output)
    except (BuildError, ImageError) as error:
        _say(f"qatvm local: {error}")
        return 1
