"""The first process of a real node: PID 1 of the node's own PID, mount and network namespaces.

`unshare --pid --mount --net --fork --mount-proc --propagation private --kill-child` starts it
(see kubelet_nodes.py). It gives the node a private view of the host, then runs containerd and
the kubelet and reaps whatever is orphaned inside (containerd's shims). When it exits, the
kernel kills every process left in the PID namespace, and the namespaces, with every mount and
network device, interface, route and iptables rule made inside them, are gone with it: stopping
a node can leave nothing on the host but the empty cgroups the supervisor removes.

What it changes in the node's namespaces only:
- tmpfs over /run, /var/lib and /var/log, where containerd, the CNI plugins and the kubelet keep
  files at fixed paths (sockets, network namespaces, IPAM caches, /var/log/containers);
- DIR/nodes/ holds only this node's own files (still at DIR/nodes/<node>/, as on the host), so
  its pods' host paths show them and no other node's;
- read-only files over the kernel settings the kubelet insists on (`vm.overcommit_memory`,
  `kernel.panic`, ...): these are not namespaced, so the kubelet would change the whole host; it
  reads the values it wants here and leaves the host's alone;
- the node's addresses on its own loopback device: the node IP, and the `kubernetes` Service's
  address, where the supervisor's relay to the API server listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

# The values the kubelet's container manager requires (pkg/kubelet/cm, setupKernelTunables).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log")
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


class NodePlan(BaseModel):
    """Everything the node's first process needs, written by the supervisor as JSON."""

    name: str
    directory: Path
    addresses: list[str]
    containerd_config: Path
    kubelet_config: Path
    kubeconfig: Path
    images: list[Path]
    kubelet: Path
    node_ip: str
    root_dir: Path
    labels: dict[str, str]
    node_files: Path


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True)


def _private_view(plan: NodePlan) -> None:
    for directory in PRIVATE_DIRS:
        _run("mount", "-t", "tmpfs", "-o", "mode=755", f"qatvm-{plan.name}", directory)
    # DIR/nodes shows this node's files only, at the same path as on the host.
    hold = plan.directory / "node-files"
    hold.mkdir(exist_ok=True)
    _run("mount", "--bind", plan.node_files, hold)
    _run("mount", "-t", "tmpfs", "-o", "mode=755", f"qatvm-{plan.name}", plan.node_files.parent)
    plan.node_files.mkdir()
    _run("mount", "--bind", hold, plan.node_files)
    _run("umount", hold)
    masks = plan.directory / "sysctl"
    masks.mkdir(exist_ok=True)
    for key, value in KUBELET_SYSCTLS.items():
        mask = masks / key.replace("/", ".")
        mask.write_text(f"{value}\n")
        target = f"/proc/sys/{key}"
        _run("mount", "--bind", mask, target)
        _run("mount", "-o", "remount,bind,ro", target)


def _network(plan: NodePlan) -> None:
    _run("ip", "link", "set", "lo", "up")
    for address in plan.addresses:
        _run("ip", "address", "add", f"{address}/32", "dev", "lo")


def _wait_for(path: str, child: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if child.poll() is not None:
            raise RuntimeError(f"{child.args[0]} exited with {child.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout:.0f}s")
        time.sleep(0.1)


def _spawn(argv: list[str | Path], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def run(plan: NodePlan, logs: Path) -> int:
    _private_view(plan)
    _network(plan)
    containerd = _spawn(["containerd", "--config", plan.containerd_config], logs / f"containerd-{plan.name}.log")
    _wait_for(CONTAINERD_SOCKET, containerd, 30)
    for image in plan.images:
        # Named by the archive's own annotation; kubelet then finds it locally and never pulls.
        _run("ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import", image)
    kubelet = _spawn(
        [
            plan.kubelet,
            f"--config={plan.kubelet_config}",
            f"--kubeconfig={plan.kubeconfig}",
            f"--hostname-override={plan.name}",
            f"--node-ip={plan.node_ip}",
            f"--root-dir={plan.root_dir}",
            "--node-labels=" + ",".join(f"{key}={value}" for key, value in plan.labels.items()),
        ],
        logs / f"kubelet-{plan.name}.log",
    )
    main = {containerd.pid: "containerd", kubelet.pid: "kubelet"}
    # PID 1 reaps every orphan; it leaves when the kubelet or containerd is gone, and the
    # kernel then ends everything else in the node.
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid in main:
            print(f"{main[pid]} exited ({status}); the node stops", file=sys.stderr, flush=True)
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qatvm.local.node_init")
    parser.add_argument("plan", type=Path)
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args(argv)
    if os.getpid() != 1:
        print("node_init must be the first process of a new PID namespace", file=sys.stderr)
        return 2
    # PID 1 of a namespace ignores signals it has no handler for: without these, a node asked
    # to stop while it is still starting would carry on.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: os._exit(0))
    plan = NodePlan.model_validate_json(args.plan.read_text())
    return run(plan, args.logs)


if __name__ == "__main__":
    sys.exit(main())
