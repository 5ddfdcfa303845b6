"""Real nodes for the local cluster: a kubelet and a containerd per node, each node in its own
PID, mount and network namespaces (node_init.py runs inside them).

Addresses: each node's namespace has, on its own loopback device, the node IP 10.200.0.N, the
`kubernetes` Service address 10.0.0.1, and its pods get 10.244.N.0/24 on a bridge the CNI
bridge plugin makes inside it, with the node's cluster DNS (cluster_dns.py, served from the
supervisor) on the bridge's address 10.244.N.1. No interface is created on the host and nothing is sent to any
address but these and the host's loopback: the supervisor relays the node's connections to the
API server (10.0.0.1:443 in the node -> the API server on the host's loopback), and the API
server's connections to a kubelet (logs, exec) go through an HTTP CONNECT relay on a Unix socket
(its egress selector), which dials the kubelet from inside that node's namespace.

On the host a node leaves: its files under DIR (node files in DIR/nodes/<node>/, as without
kubelets; runtime state and logs in DIR/kubelet/<node>/) and, while it runs, one cgroup per
controller hierarchy (its cgroupRoot), which `stop` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qatvm.controlplane.binaries import binary
from qatvm.controlplane.certs import SERVICE_ADDRESS, Pki, client_pair
from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.local.cluster_dns import CLUSTER_DOMAIN, DnsServer
from qatvm.local.netns import Relay, connect_in, listen_in, udp_in
from qatvm.local.node_init import CONTAINERD_SOCKET, NodePlan
from qatvm.local.node_images import PAUSE_IMAGE
from qatvm.local.nodes import SimulatedNode
from qatvm.processes import ManagedProcess, pid_alive, wait_until

KUBELET_PORT = 10250
CGROUP_MOUNTS = Path("/sys/fs/cgroup")
NODE_LABELS = {"qatvm.io/qat": "true", "qatvm.io/simulated": "true"}


def node_ip(index: int) -> str:
    return f"10.200.0.{index}"


def pod_subnet(index: int) -> str:
    return f"10.244.{index}.0/24"


def pod_gateway(index: int) -> str:
    """The node's address on its pod bridge; also where its cluster DNS answers."""
    return f"10.244.{index}.1"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """TOML for nested tables of scalars and lists: enough for a containerd configuration."""
    scalars = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    lines = ([f"[{'.'.join(json.dumps(p) if '.' in p else p for p in prefix)}]"] if prefix and scalars else []) + scalars
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        if isinstance(value, dict):
            text += "\n" + to_toml(value, (*prefix, key))
    return text


def cgroup_hierarchies() -> list[Path]:
    """The host's cgroup hierarchies: v1 (cpu, memory, ..., name=systemd) and, on a hybrid
    host, the v2 one beside them, where runc makes each container's cgroup too."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] in ("cgroup", "cgroup2"):
            found.append(Path(fields[4]))
    return found


@dataclass
class RealNode:
    """One node: its files, its configuration, and the process that holds its namespaces."""

    files: SimulatedNode
    index: int
    state_dir: Path
    relays: list[Relay | DnsServer] = field(default_factory=list)
    process: ManagedProcess | None = None

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def work(self) -> Path:
        return self.state_dir / "kubelet" / self.name

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def cgroup_root(self) -> str:
        # Unique per state dir and node, so two local clusters never share pod cgroups.
        tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        return f"/qatvm-{tag}-{self.name}"

    # -- configuration ---------------------------------------------------------------------

    def configure(self, pki: Pki, images: list[Path]) -> Path:
        """Write the node's containerd, CNI and kubelet configuration; returns the plan file."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "cni").mkdir(exist_ok=True)
        (self.work / "cni" / "10-qatvm.conflist").write_text(json.dumps(self._cni(), indent=2))
        containerd_config = self.work / "containerd.toml"
        containerd_config.write_text(to_toml(self._containerd()))
        kubelet_config = self.work / "kubelet.yaml"
        kubelet_config.write_text(yaml.safe_dump(self._kubelet(pki), sort_keys=False))
        identity = client_pair(pki.ca.cert.parent, f"node-{self.name}", f"system:node:{self.name}", "system:nodes")
        kubeconfig = write_kubeconfig(
            self.work / "kubelet.kubeconfig",
            f"https://{SERVICE_ADDRESS}:443",
            pki.ca.cert,
            user=f"system:node:{self.name}",
            client_cert=identity.cert,
            client_key=identity.key,
        )
        plan = NodePlan(
            name=self.name,
            directory=self.work,
            addresses=[self.ip, SERVICE_ADDRESS],
            containerd_config=containerd_config,
            kubelet_config=kubelet_config,
            kubeconfig=kubeconfig,
            images=images,
            kubelet=binary("kubelet"),
            node_ip=self.ip,
            # In the node's private /var/lib (node_init.py): the kubelet's Unix sockets under its
            # root would not fit the 108 bytes a socket path may have below a long DIR.
            root_dir=Path("/var/lib/kubelet"),
            labels=NODE_LABELS,
            node_files=self.files.root,
        )
        path = self.work / "plan.json"
        path.write_text(plan.model_dump_json(indent=2))
        return path

    def _cni(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "qatvm-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "qatvm0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_subnet(self.index)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.work / "ipam"),
                    },
                }
            ],
        }

    def _containerd(self) -> dict[str, Any]:
        cri = "io.containerd.grpc.v1.cri"
        return {
            "version": 2,
            "root": str(self.work / "containerd"),
            "state": "/run/containerd",
            # Plugins that would write outside the node (/opt/containerd) or that nothing here uses.
            "disabled_plugins": [
                "io.containerd.internal.v1.opt",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.tracing.processor.v1.otlp",
                "io.containerd.internal.v1.tracing",
            ],
            "grpc": {"address": CONTAINERD_SOCKET},
            "plugins": {
                cri: {
                    "sandbox_image": PAUSE_IMAGE,
                    # Root here may lack CAP_SYS_RESOURCE: without this runc fails every sandbox
                    # ("can't get final child's PID from pipe") trying to lower an OOM score.
                    "restrict_oom_score_adj": True,
                    "enable_selinux": False,
                    "cni": {"bin_dir": "/usr/lib/cni", "conf_dir": str(self.work / "cni")},
                    "containerd": {
                        "snapshotter": "overlayfs",
                        "default_runtime_name": "runc",
                        "runtimes": {
                            "runc": {
                                "runtime_type": "io.containerd.runc.v2",
                                "options": {"SystemdCgroup": False},
                            }
                        },
                    },
                },
            },
        }

    def _kubelet(self, pki: Pki) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "address": self.ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            # Refuse rather than change kernel settings; node_init shows the kubelet the values it wants.
            "protectKernelDefaults": True,
            "failSwapOn": False,
            "podLogsDir": str(self.work / "pod-logs"),
            "clusterDNS": [pod_gateway(self.index)],
            "clusterDomain": CLUSTER_DOMAIN,
            # Pods resolve cluster names only: nothing of the host's resolver configuration.
            "resolvConf": "",
            # The host's disk and memory are shared by every node and every other program:
            # evicting pods because of them would make tests flaky and prove nothing.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            # Containers here are killed on purpose (the crash tests kill the same agent several
            # times a minute): a back-off growing to 5 minutes would only make them wait.
            "crashLoopBackOff": {"maxContainerRestartPeriod": "10s"},
        }

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, plan: Path, api_port: int) -> None:
        self._make_cgroup_root()
        self.process = ManagedProcess(
            f"node-{self.name}",
            [
                "unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc",
                # If unshare goes, its child (PID 1 of the node) gets SIGKILL, and with it every
                # process in the node's PID namespace: nothing of a node outlives the supervisor.
                "--propagation", "private", "--kill-child",
                sys.executable, "-m", "qatvm.local.node_init", plan, "--logs", self.state_dir / "logs",
            ],
            self.state_dir / "logs" / f"node-{self.name}.log",
        )
        self.process.start()
        namespace = self.namespace(timeout=30)
        # The node's connections to the API server's Service address reach the real one.
        server = _retry(lambda: listen_in(namespace, (SERVICE_ADDRESS, 443)), 30)
        self.relays.append(
            Relay(f"{self.name}-apiserver", server, lambda _: connect_in(None, ("127.0.0.1", api_port))).start()
        )
        self.relays.append(DnsServer(udp_in(namespace, (pod_gateway(self.index), 53))).start())

    def init_pid(self) -> int | None:
        """PID (on the host) of node_init, the child `unshare` forked into the new namespaces."""
        if self.process is None or self.process.pid is None:
            return None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(children[0]) if children else None

    def namespace(self, timeout: float) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.init_pid()
            if pid is not None:
                path = Path(f"/proc/{pid}/ns/net")
                # unshare enters the namespaces before it forks, so the child's are the new ones.
                if path.exists() and os.readlink(path) != os.readlink("/proc/self/ns/net"):
                    return path
            if self.process is None or not self.process.alive():
                raise RuntimeError(f"node {self.name} exited during start-up:\n{self.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"node {self.name} made no namespaces in {timeout:.0f}s")

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        for relay in self.relays:
            relay.close()
        self.relays.clear()
        # SIGKILL to the node's PID 1 ends every process in its namespace at once (unshare
        # itself ignores SIGTERM while it waits); then unshare returns on its own.
        init = self.init_pid()
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
            wait_until(lambda: not pid_alive(init), 20)
        if self.process is not None:
            self.process.stop(timeout=10)
        # The namespaces go when their last process does; the cgroups can go only after that.
        self.remove_cgroup_root()

    # -- cgroups -----------------------------------------------------------------------------

    def _make_cgroup_root(self) -> None:
        for hierarchy in cgroup_hierarchies():
            directory = hierarchy / self.cgroup_root.lstrip("/")
            directory.mkdir(exist_ok=True)
            if (hierarchy / "cpuset.cpus").exists():
                # A new cpuset cgroup starts with no CPUs and no memory nodes: take the parent's.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (directory / name).write_text((hierarchy / name).read_text())

    def remove_cgroup_root(self, timeout: float = 20) -> None:
        """Remove the node's cgroups, deepest first; a cgroup empties a moment after its last task dies."""
        for hierarchy in cgroup_hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.exists():
                continue
            directories = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for directory in [*directories, root]:
                _retry(lambda d=directory: d.rmdir() if d.exists() else None, timeout)


def _retry(action: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class KubeletDialer:
    """The API server's way to the kubelets: HTTP CONNECT over a Unix socket (its egress
    selector for the cluster), answered by dialling the kubelet inside its node's namespace.
    Only the kubelet ports of the nodes' own addresses are dialled."""

    def __init__(self, path: Path, nodes: list[RealNode]) -> None:
        self.path = path
        self.nodes = {node.ip: node for node in nodes}
        self.relay: Relay | None = None

    def egress_config(self) -> Path:
        config = self.path.with_suffix(".yaml")
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.path)}},
                            },
                        }
                    ],
                }
            )
        )
        return config

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self.relay = Relay("kubelets", server, self._dial).start()

    def _dial(self, client: socket.socket) -> socket.socket | None:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = client.recv(1024)
            if not chunk:
                return None
            request += chunk
        method, target = request.split(b" ", 2)[:2]
        host, _, port = target.decode().rpartition(":")
        node = self.nodes.get(host)
        if method != b"CONNECT" or node is None or port != str(KUBELET_PORT):
            client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return None
        upstream = connect_in(node.namespace(timeout=1), (host, KUBELET_PORT))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream

    def stop(self) -> None:
        if self.relay:
            self.relay.close()
        self.path.unlink(missing_ok=True)
