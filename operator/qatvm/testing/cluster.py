"""What end-to-end tests see of a cluster, and, for a local one, of its simulated nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatvm.controlplane.server import AuditLog
from qatvm.domain.models import Domain
from qatvm.hypervisor import DomainState, open_hypervisor
from qatvm.local.state import ClusterState
from qatvm.simulation import SimulatedSysfs
from qatvm.testing.kubectl import Kubectl


# Set to 1, the end-to-end session runs on real nodes (`qatvm local up --kubelet`).
KUBELET_ENV = "QATVM_E2E_KUBELET"


@dataclass(frozen=True)
class LocalNodes:
    """Read-only views into `qatvm local`'s simulated nodes."""

    state_dir: Path

    def root(self, node: str) -> Path:
        return self.state_dir / "nodes" / node

    def driver(self, node: str, address: str) -> str | None:
        return SimulatedSysfs(self.root(node) / "sys").readlink(f"bus/pci/devices/{address}/driver")

    def domains(self, node: str) -> dict[str, tuple[DomainState, Domain]]:
        # A plain test:/// connection reads the agent's file without ever writing it back.
        with open_hypervisor(f"test://{self.root(node) / 'hypervisor.xml'}") as hypervisor:
            return {d.name: (d.state, hypervisor.domain(d.name)) for d in hypervisor.owned_domains()}

    def hostdevs(self, node: str, domain: str) -> list[str]:
        return sorted(h.source.address.bdf for h in self.domains(node)[domain][1].devices.hostdevs)

    def run_in(self, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside a real node's namespaces (its containerd's socket, its network)."""
        holder = self.state().components[f"node-{node}"]
        init = Path(f"/proc/{holder}/task/{holder}/children").read_text().split()[0]
        return subprocess.run(["nsenter", "-t", init, "-m", "-n", *argv], capture_output=True, text=True, check=True)

    def state(self) -> ClusterState:
        state = ClusterState.load(self.state_dir)
        assert state is not None, f"no local cluster in {self.state_dir}"
        return state

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.state_dir / "audit.log")


@dataclass(frozen=True)
class E2eCluster:
    kubectl: Kubectl
    local: LocalNodes | None


class ClusterStartError(RuntimeError):
    pass


@contextmanager
def local_cluster(state_dir: Path, nodes: int, kubelet: bool = False, monitoring: bool = False) -> Iterator[E2eCluster]:
    """`qatvm local up` in `state_dir` for the duration of the block, then `down`; with
    `kubelet`, on real nodes (building kubelet and the image first if they are not cached)."""
    qatvm = [sys.executable, "-m", "qatvm", "local"]
    flags = [*(["--kubelet"] if kubelet else []), *(["--monitoring"] if monitoring else [])]
    up = subprocess.run(
        [*qatvm, "up", "--nodes", str(nodes), "--state-dir", str(state_dir), *flags],
        capture_output=True, text=True, timeout=1800 if kubelet else 300,
    )
    if up.returncode != 0:
        raise ClusterStartError(f"qatvm local up failed:\n{up.stderr}")
    try:
        yield E2eCluster(Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig"), local=LocalNodes(state_dir))
    finally:
        subprocess.run([*qatvm, "down", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=120)


def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25) -> Any:
    """Call `check` until it returns without raising AssertionError; its last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)
