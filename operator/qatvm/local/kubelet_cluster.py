"""`qatvm local up --kubelet`: the shipped manifests run as pods on real kubelets.

The control plane also runs a scheduler and the controllers pods need; each node is a
RealNode (kubelet_nodes.py). The controller Deployment and the agent DaemonSet come from
`kubectl apply -k` of an overlay of manifests/ that changes only where the agent finds its
node's files (DIR/nodes/<node>/, at the same path in the pod as on the host, see node_init.py),
that its libvirt is the node's simulated one, and that the container runs the simulated node's
agent (`qatvm simulation agent`) where the shipped manifest runs `qatvm agent`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease

from qatvm.controller.leader import LEASE_NAME, candidate_of
from qatvm.controlplane.certs import Pki, client_pair, ensure_pki
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import QatNodeResource
from qatvm.local.credentials import NAMESPACE
from qatvm.local.kubelet_nodes import KubeletDialer, RealNode
from qatvm.local.nodes import AGENT, SimulatedNode
from qatvm.paths import project_root
from qatvm.testing.kubectl import Kubectl

READY_TIMEOUT = 300.0


def overlay(state_dir: Path) -> Path:
    """Write the simulated nodes' overlay of manifests/ into DIR/manifests; returns its folder."""
    nodes = state_dir / "nodes"
    root = f"{nodes}/$(NODE_NAME)"
    agent = "/spec/template/spec"
    patch = [
        {"op": "replace", "path": f"{agent}/containers/0/command", "value": ["qatvm", *AGENT]},
        {
            "op": "replace",
            "path": f"{agent}/containers/0/args",
            "value": [
                "--node=$(NODE_NAME)",
                f"--host-root={root}",
                f"--libvirt-uri=qatvm-test://{root}/hypervisor.xml",
                "--health-port=8080",
                "--image-dir=/var/lib/qatvm/images",
                "--scan-seconds=2",
            ],
        },
        {
            "op": "replace",
            "path": f"{agent}/containers/0/volumeMounts",
            "value": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "node", "mountPath": str(nodes)}],
        },
        {
            "op": "replace",
            "path": f"{agent}/volumes",
            "value": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {"name": "node", "hostPath": {"path": str(nodes), "type": "Directory"}},
            ],
        },
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes a base only by a relative path.
        "resources": [os.path.relpath(project_root() / "manifests", state_dir / "manifests")],
        "patches": [
            {"target": {"kind": "DaemonSet", "name": "qatvm-agent"}, "patch": yaml.safe_dump(patch)},
        ],
    }
    directory = state_dir / "manifests"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


class KubeletCluster:
    """The nodes, the relay the API server reaches them through, and the applied manifests."""

    def __init__(self, state_dir: Path, nodes: list[SimulatedNode], images: list[Path]) -> None:
        self.state_dir = state_dir
        self.nodes = [RealNode(files, index, state_dir) for index, files in enumerate(nodes, start=1)]
        self.images = images
        self.dialer = KubeletDialer(state_dir / "kubelet" / "egress.sock", self.nodes)

    def prepare(self, control_plane: ControlPlane) -> None:
        """Before the control plane starts: how its API server reaches the kubelets."""
        (self.state_dir / "kubelet").mkdir(parents=True, exist_ok=True)
        pki = ensure_pki(self.state_dir / "pki")
        # The API server's client identity at the kubelets; system:masters passes their webhook authz.
        identity = client_pair(pki.ca.cert.parent, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        control_plane.kubelet_access_args = [
            f"--egress-selector-config-file={self.dialer.egress_config()}",
            f"--kubelet-client-certificate={identity.cert}",
            f"--kubelet-client-key={identity.key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        self.dialer.start()

    def start(self, pki: Pki, api_port: int) -> None:
        for node in self.nodes:
            node.start(node.configure(pki, self.images), api_port)

    def apply(self, kubectl: Kubectl) -> None:
        kubectl.run("apply", "-k", str(overlay(self.state_dir)))

    def wait_ready(self, kube: Client, kubectl: Kubectl) -> None:
        """Ready: every node Ready, both controller replicas and every agent Ready, every
        agent's inventory published."""
        deadline = time.monotonic() + READY_TIMEOUT
        names = {node.name for node in self.nodes}
        while True:
            self._check_alive()
            waiting = self._not_ready(kube, kubectl, names)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {READY_TIMEOUT:.0f}s: {'; '.join(waiting)}")
            time.sleep(1)

    def _not_ready(self, kube: Client, kubectl: Kubectl, names: set[str]) -> list[str]:
        waiting = []
        nodes = _items(kubectl, "nodes")
        ready = {n["metadata"]["name"] for n in nodes if _condition(n, "Ready")}
        if names - ready:
            waiting.append(f"nodes not Ready: {', '.join(sorted(names - ready))}")
        pods = _items(kubectl, "pods", "-n", NAMESPACE)
        unready = [p["metadata"]["name"] for p in pods if not _condition(p, "Ready")]
        expected = 2 + len(names)  # the controller's two replicas and one agent per node
        if len(pods) < expected or unready:
            waiting.append(f"{len(pods) - len(unready)}/{expected} qatvm pods Ready")
        published = {i.to_dict()["metadata"]["name"] for i in kube.list(QatNodeResource) if i.to_dict().get("status")}
        if names - published:
            waiting.append(f"no inventory from {', '.join(sorted(names - published))}")
        return waiting

    def _check_alive(self) -> None:
        for node in self.nodes:
            if not node.alive():
                raise RuntimeError(f"node {node.name} stopped:\n{node.log_tail()}")

    def exited(self) -> list[str]:
        return [node.name for node in self.nodes if not node.alive()]

    def pids(self) -> dict[str, int]:
        return {f"node-{n.name}": n.process.pid for n in self.nodes if n.process and n.process.pid}

    def pod_pids(self, kube: Client) -> dict[str, int]:
        """Host PIDs of the operator's containers, under the names the supervisor gives its own
        processes in the other mode ("controller" is the leader; the other replica is
        "controller-standby"; "agent-<node>"), so a test can kill either kind the same way."""
        try:
            holder = kube.get(Lease, LEASE_NAME, namespace=NAMESPACE).spec.holderIdentity
            leader = candidate_of(holder) if holder else None
        except ApiError:
            leader = None
        # Only this cluster's containers: their cgroups sit under its nodes' cgroup roots.
        roots = tuple(f":{node.cgroup_root}/".encode() for node in self.nodes)
        found: dict[str, int] = {}
        standby: list[int] = []
        agent = [part.encode() for part in AGENT]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if len(argv) < 3 or not argv[1].endswith(b"/qatvm"):
                    continue
                if not any(root in (proc / "cgroup").read_bytes() for root in roots):
                    continue
                environ = dict(
                    item.split("=", 1) for item in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                    if "=" in item
                )
            except OSError:
                continue
            if argv[2 : 2 + len(agent)] == agent and "NODE_NAME" in environ:
                found[f"agent-{environ['NODE_NAME']}"] = int(proc.name)
            elif argv[2] == b"controller" and "POD_NAME" in environ:
                if environ["POD_NAME"] == leader:
                    found["controller"] = int(proc.name)
                else:
                    standby.append(int(proc.name))
        # Before any replica leads (or while the lease names one not yet seen here), either one is
        # "the controller"; both are always named, so a test never misses a running replica.
        for name, pid in zip([n for n in ("controller", "controller-standby") if n not in found], sorted(standby)):
            found[name] = pid
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.dialer.stop()


def _items(kubectl: Kubectl, *args: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", *args).get("items", []))


def _condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in obj.get("status", {}).get("conditions", []))
