"""Run etcd, kube-apiserver and kube-controller-manager on loopback, as envtest does for Go.

Without `nodes` there is no kubelet and no scheduler: objects are real and persisted, RBAC and admission are
real, and the three controllers that keep API semantics honest (garbage collection, namespace
deletion, default service accounts) run; nothing runs pods.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qatvm.controlplane.binaries import binary
from qatvm.controlplane.certs import SERVICE_CIDR, KeyPair, Pki, client_pair, ensure_pki
from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.processes import ManagedProcess, free_port

# clusterrole-aggregation fills the built-in view/edit/admin roles, which tenants are bound to.
KCM_CONTROLLERS = "garbage-collector-controller,namespace-controller,serviceaccount-controller,clusterrole-aggregation-controller"
# kube-apiserver publishes this as the `kubernetes` Service's endpoint, and with none given it
# takes the address of the default route's interface, so it refuses to start on a machine with
# no default route (a test guest, an isolated server); loopback is refused as well. Nothing
# here dials it: every client reaches the API server through the 127.0.0.1 URL in its
# kubeconfig. So it is one fixed address that no machine has: RFC 5737 reserves 203.0.113.0/24
# for documentation, never to be assigned, which keeps every machine's cluster the same.
ADVERTISE_ADDRESS = "203.0.113.1"
# What real nodes need as well: Deployments, DaemonSets and their pods, the CA bundle every
# pod's projected token volume holds, and nodes marked NotReady when their kubelet stops.
NODE_CONTROLLERS = (
    "deployment-controller,replicaset-controller,daemonset-controller,root-ca-certificate-publisher-controller,"
    "node-lifecycle-controller,pod-garbage-collector-controller"
)


# A health probe waits this long for its answer: kube-apiserver abandons a /readyz whose client
# has hung up, so on a slow machine (an emulated guest answers in seconds) a shorter limit would
# never see one succeed. Between probes the wait grows to POLL_MAX, so the probing does not take
# the CPU the component needs to start.
PROBE_TIMEOUT = 15.0
POLL_MIN, POLL_MAX = 0.1, 1.0


class ControlPlaneError(RuntimeError):
    """A component did not come up; the message holds the end of its log."""


@dataclass(frozen=True)
class Endpoints:
    """Where a running control plane listens, enough to reconnect from another process."""

    server: str
    etcd: str
    kubeconfig: Path
    kubectl: Path
    pids: dict[str, int] = field(default_factory=dict)


@dataclass
class AuditLog:
    """The API server's audit log of writes, used to count what the operator costs per object."""

    path: Path

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager under one folder.

    Layout of `directory`: `pki/`, `etcd/`, `logs/<component>.log`, `kubeconfig` (admin),
    `bin/kubectl` (the matching kubectl), `audit.log`.
    """

    def __init__(self, directory: Path, *, audit: bool = False, nodes: bool = False) -> None:
        self.directory = directory
        self.audit = audit
        # Real kubelets join: the Node authorizer, the controllers pods need, and a scheduler.
        self.nodes = nodes
        self.logs = directory / "logs"
        self.kubeconfig = directory / "kubeconfig"
        self.kubectl = directory / "bin" / "kubectl"
        self.audit_log = AuditLog(directory / "audit.log")
        self.ca_file = directory / "pki" / "ca.crt"
        self._processes: list[ManagedProcess] = []
        self._pki: Pki | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self.server = ""
        self.etcd_url = ""
        # How the API server reaches kubelets (logs, exec): set by whoever runs the nodes.
        self.kubelet_access_args: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Endpoints:
        """Start all three; on any failure stop what started and raise with the failing log."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self.endpoints()

    def _start(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        pki = self._pki = ensure_pki(self.directory / "pki")
        self._ssl_context = None
        self.kubectl.parent.mkdir(parents=True, exist_ok=True)
        self.kubectl.unlink(missing_ok=True)
        self.kubectl.symlink_to(binary("kubectl"))

        etcd_port, apiserver_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.server = f"https://127.0.0.1:{apiserver_port}"
        etcd = self._spawn(
            "etcd",
            [
                binary("etcd"),
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                "--listen-peer-urls=http://127.0.0.1:0",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, lambda: self._http_ok(f"{self.etcd_url}/health"), timeout)

        write_kubeconfig(
            self.kubeconfig,
            self.server,
            pki.ca.cert,
            user="admin",
            client_cert=pki.admin.cert,
            client_key=pki.admin.key,
        )
        apiserver = self._spawn("kube-apiserver", self._apiserver_args(pki, apiserver_port))
        self._wait(apiserver, lambda: self._https_ok("/readyz"), timeout)

        self._start_component(
            "kube-controller-manager",
            "kube-controller-manager",
            pki.controller_manager,
            [
                f"--controllers={KCM_CONTROLLERS + (',' + NODE_CONTROLLERS if self.nodes else '')}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cert-dir={self.directory / 'kcm-certs'}",
                "--concurrent-gc-syncs=5",
            ],
            timeout,
        )
        if self.nodes:
            # The built-in identity the bootstrap RBAC policy grants the scheduler's rights to.
            identity = client_pair(pki.ca.cert.parent, "kube-scheduler", "system:kube-scheduler")
            self._start_component("kube-scheduler", "system:kube-scheduler", identity, [], timeout)

    def _start_component(self, name: str, user: str, identity: KeyPair, extra: list[str], timeout: float) -> None:
        """A controller-manager-like component: a client cert, loopback health, no leader election."""
        assert self._pki is not None
        kubeconfig = write_kubeconfig(
            self.directory / f"{name}.kubeconfig",
            self.server,
            self._pki.ca.cert,
            user=user,
            client_cert=identity.cert,
            client_key=identity.key,
        )
        port = free_port()
        process = self._spawn(
            name,
            [
                binary(name),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                *extra,
            ],
        )
        self._wait(process, lambda: self._http_ok(f"https://127.0.0.1:{port}/healthz", verify=False), timeout)

    def _apiserver_args(self, pki: Pki, port: int) -> list[str]:
        args = [
            str(binary("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--secure-port={port}",
            f"--cert-dir={self.directory / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--authorization-mode={'Node,RBAC' if self.nodes else 'RBAC'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--service-account-issuer={self.server}/",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]
        if self.nodes:
            args += ["--enable-admission-plugins=NodeRestriction", *self.kubelet_access_args]
        if self.audit:
            policy = self.directory / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(_audit_policy()))
            args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log.path}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        return args

    def stop(self) -> None:
        """Stop in reverse order of start, so no component logs the loss of the one beneath it."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()

    def exited(self) -> list[str]:
        """Components that have stopped on their own."""
        return [p.name for p in self._processes if not p.alive()]

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def endpoints(self) -> Endpoints:
        return Endpoints(
            server=self.server,
            etcd=self.etcd_url,
            kubeconfig=self.kubeconfig,
            kubectl=self.kubectl,
            pids={p.name: p.pid for p in self._processes if p.pid is not None},
        )

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[Any]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.logs / f"{name}.log")
        process.start()
        self._processes.append(process)
        return process

    def _wait(self, process: ManagedProcess, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        interval = POLL_MIN
        while time.monotonic() < deadline:
            if not process.alive():
                raise ControlPlaneError(
                    f"{process.name} exited with code {process.exit_code()}; "
                    f"end of {process.log_path}:\n{process.log_tail()}"
                )
            if ready():
                return
            time.sleep(interval)
            interval = min(interval * 1.5, POLL_MAX)
        raise ControlPlaneError(
            f"{process.name} was not ready after {timeout:.0f}s; end of {process.log_path}:\n{process.log_tail()}"
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The admin's TLS context, made once: loading the certificates for every probe costs."""
        assert self._pki is not None
        if self._ssl_context is None:
            context = ssl.create_default_context(cafile=str(self._pki.ca.cert))
            context.load_cert_chain(str(self._pki.admin.cert), str(self._pki.admin.key))
            self._ssl_context = context
        return self._ssl_context

    def _https_ok(self, path: str) -> bool:
        return _get_ok(f"{self.server}{path}", self.ssl_context())

    @staticmethod
    def _http_ok(url: str, verify: bool = True) -> bool:
        context = None
        if url.startswith("https") and not verify:
            # The controller manager serves health on a self-signed cert it makes itself.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return _get_ok(url, context)


def _get_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def _audit_policy() -> dict[str, Any]:
    """Log each write with its metadata only: enough to count the writes per object."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [
            {"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
            {"level": "None"},
        ],
    }
