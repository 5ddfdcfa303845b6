"""The process behind `qatvm local up`: owns the control plane, the controller and the agents.

It runs detached from the terminal, so the cluster outlives the command that started it. Every
component it starts dies with it (the kernel kills them if it is killed), so `local down`, which
stops only this process, leaves nothing running. A controller or agent that exits is restarted,
as a Deployment or DaemonSet would restart it; that is also how crash tests recover.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node

from qatvm.controlplane.certs import ensure_pki
from qatvm.controlplane.server import ControlPlane, Endpoints
from qatvm.kube import QatNodeResource, apply_crds, client
from qatvm.local import host_node as host
from qatvm.local.credentials import AGENT_SA, CONTROLLER_SA, NAMESPACE, apply_rbac, service_account_kubeconfig
from qatvm.local.kubelet_cluster import KubeletCluster
from qatvm.local.monitoring import Prometheus, Target
from qatvm.local.nodes import AGENT, SimulatedNode
from qatvm.local.readiness import wait_for_admission, wait_for_leader
from qatvm.local.state import ClusterState
from qatvm.processes import ManagedProcess, free_port, wait_until
from qatvm.simulation import DEFAULT_PROFILE, HardwareProfile, load_profile
from qatvm.testing.kubectl import Kubectl

SIMULATED_LABEL = "qatvm.io/simulated"
# How long `local up` waits for a ready cluster by default (--timeout changes it): the control
# plane and every node's inventory must be there within it.
STARTUP_TIMEOUT = 180.0
PROMETHEUS_TIMEOUT = 60.0
# The API server reads a new CRD's schema for admission policies every 5 s; a few rounds.
ADMISSION_TIMEOUT = 60.0
# A controller that failed its first try for the lease tries again a few seconds later.
LEADER_TIMEOUT = 60.0
RESTART_BACKOFF = 1.0
# Shorter than a real cluster's 40 s, so a lost node shows within a test's patience; still five
# renewals (every 2 s) missed in a row, so a busy machine does not lose nodes by itself.
NODE_GRACE_SECONDS = 10
AGENT_LEASE_ARGS = ("--lease-seconds", str(NODE_GRACE_SECONDS), "--lease-renew-seconds", "2")
# A just-started API server installing CRDs can take longer than lightkube's 10 s to answer on a
# slow machine (an emulated one: tens of seconds); the start-up deadline bounds the whole anyway.
REQUEST_TIMEOUT = 60.0


def node_names(count: int) -> list[str]:
    return [f"node-{index}" for index in range(1, count + 1)]


def register_nodes(kube: Client, names: list[str]) -> None:
    """Create the simulated Node objects; with no kubelet, nothing else would."""
    for name in names:
        node = Node(
            metadata=ObjectMeta(
                name=name,
                labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", SIMULATED_LABEL: "true"},
            )
        )
        kube.apply(node, force=True)


class Supervisor:
    def __init__(
        self,
        state_dir: Path,
        nodes: int,
        profile: HardwareProfile,
        kubelet_images: list[Path] | None = None,
        monitoring: bool = False,
        host_node: host.HostNode | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.state_dir = state_dir
        self.timeout = timeout
        self.nodes = [SimulatedNode(name, state_dir / "nodes" / name) for name in node_names(nodes)]
        self.host_node = host_node
        self.profile = profile
        # Each component's metrics port is fixed for the cluster's life, so a restarted
        # component is scraped where Prometheus already looks.
        self.prometheus = (
            Prometheus(state_dir, Target("controller", free_port()), [Target("agent", free_port()) for _ in self.nodes])
            if monitoring
            else None
        )
        # The audit log (DIR/audit.log) lets anyone count what the operator writes.
        self.control_plane = ControlPlane(state_dir, audit=True, nodes=kubelet_images is not None)
        # With images to load, the nodes are real kubelets running the shipped manifests.
        self.kubelets = KubeletCluster(state_dir, self.nodes, kubelet_images) if kubelet_images is not None else None
        self.kube: Client | None = None
        self.operators: list[ManagedProcess] = []
        self.stopping = threading.Event()
        names = [n.name for n in self.nodes] + ([host_node.name] if host_node else [])
        self.state = ClusterState(supervisor_pid=os.getpid(), nodes=names)

    def run(self) -> int:
        started = time.monotonic()
        deadline = started + self.timeout
        self.state.save(self.state_dir)
        try:
            if self.kubelets:
                self.kubelets.prepare(self.control_plane)
            endpoints = self.control_plane.start(timeout=max(deadline - time.monotonic(), 0))
            print(f"control plane ready in {time.monotonic() - started:.1f}s", flush=True)
            kube = self.kube = client(endpoints.kubeconfig, timeout=REQUEST_TIMEOUT)
            apply_crds(kube, timeout=max(deadline - time.monotonic(), 0))
            if self.kubelets:
                self._start_kubelets(kube, endpoints)
            else:
                register_nodes(kube, [n.name for n in self.nodes])
                if self.host_node:
                    self.host_node.register(kube)
                apply_rbac(kube)
                self._start_operators(kube, endpoints)
                self._wait_for_inventories(kube, deadline)
                # Meanwhile the API server has mostly read the CRDs' schemas for admission.
                wait_for_admission(kube, ADMISSION_TIMEOUT)
                wait_for_leader(kube, NAMESPACE, LEADER_TIMEOUT)
                print(f"every node's inventory published {time.monotonic() - started:.1f}s after start", flush=True)
                self._wait_for_prometheus()
        except Exception as error:  # the reason goes to `local up`, which prints it
            self.state.error = f"{type(error).__name__}: {error}"
            self.state.save(self.state_dir)
            self._stop_all()
            return 1
        self.state.ready = True
        self.state.server = endpoints.server
        self.state.kubeconfig = str(endpoints.kubeconfig)
        self.state.kubectl_dir = str(endpoints.kubectl.parent)
        self.state.prometheus = self.prometheus.url if self.prometheus else None
        self.state.startup_seconds = round(time.monotonic() - started, 2)
        self._record_pids()
        print(f"local cluster ready in {self.state.startup_seconds}s at {endpoints.server}", flush=True)
        try:
            return self._watch()
        finally:
            self._stop_all()
            ClusterState.path(self.state_dir).unlink(missing_ok=True)
            print("local cluster stopped", flush=True)

    def _start_operators(self, kube: Client, endpoints: Endpoints) -> None:
        python = [sys.executable, "-m", "qatvm"]
        logs = self.state_dir / "logs"
        monitored = self.prometheus
        for node in self.nodes:
            node.prepare(self.profile)
        controller_config = self._write_operator_kubeconfigs(kube, endpoints)
        self.operators.append(
            ManagedProcess(
                "controller",
                [
                    *python, "controller", "--kubeconfig", controller_config, "--lease-namespace", NAMESPACE,
                    "--node-grace-seconds", str(NODE_GRACE_SECONDS),
                    *(_metrics_args(monitored.controller) if monitored else []),
                ],
                logs / "controller.log",
            )
        )
        for index, node in enumerate(self.nodes):
            self.operators.append(
                ManagedProcess(
                    f"agent-{node.name}",
                    [
                        *python, *AGENT, "--node", node.name, "--kubeconfig", node.kubeconfig,
                        "--host-root", node.root, "--libvirt-uri", node.libvirt_uri, "--scan-seconds", "2",
                        *AGENT_LEASE_ARGS,
                        *(_metrics_args(monitored.agents[index]) if monitored else []),
                    ],
                    logs / f"agent-{node.name}.log",
                )
            )
        if monitored:
            self.operators.append(monitored.process(logs))
        if self.host_node:
            self.operators.append(
                self.host_node.agent(kube, endpoints.server, self.control_plane.ca_file, self.state_dir, AGENT_LEASE_ARGS)
            )
        for process in self.operators:
            process.start()

    def _start_kubelets(self, kube: Client, endpoints: Endpoints) -> None:
        assert self.kubelets is not None
        for node in self.nodes:
            node.prepare(self.profile)
        self.kubelets.start(ensure_pki(self.state_dir / "pki"), int(endpoints.server.rsplit(":", 1)[1]))
        kubectl = Kubectl(endpoints.kubectl, endpoints.kubeconfig)
        self.kubelets.apply(kubectl)
        self.kubelets.wait_ready(kube, kubectl)
        wait_for_admission(kube, ADMISSION_TIMEOUT)
        # Before the pods' PIDs are recorded: the leader's is recorded as "controller".
        wait_for_leader(kube, NAMESPACE, LEADER_TIMEOUT)
        # The pods use their own tokens; these are for people and tests acting as either.
        self._write_operator_kubeconfigs(kube, endpoints)

    def _write_operator_kubeconfigs(self, kube: Client, endpoints: Endpoints) -> Path:
        """DIR/controller.kubeconfig and DIR/nodes/<node>/agent.kubeconfig (bound to the Node)."""
        for node in self.nodes:
            service_account_kubeconfig(
                kube, node.kubeconfig, endpoints.server, self.control_plane.ca_file, AGENT_SA, bound_node=node.name
            )
        return service_account_kubeconfig(
            kube, self.state_dir / "controller.kubeconfig", endpoints.server, self.control_plane.ca_file, CONTROLLER_SA
        )

    def _wait_for_prometheus(self) -> None:
        prometheus = self.prometheus
        if prometheus is None:
            return
        process = self.operators[-1]
        if not wait_until(lambda: prometheus.ready() or not process.alive(), PROMETHEUS_TIMEOUT):
            raise TimeoutError(f"Prometheus was not ready after {PROMETHEUS_TIMEOUT:.0f}s:\n{process.log_tail()}")
        if not process.alive():
            raise RuntimeError(f"Prometheus exited during start-up:\n{process.log_tail()}")

    def _wait_for_inventories(self, kube: Client, deadline: float) -> None:
        """Ready means usable: every agent has published its node's VFs."""
        waiting = set(self.state.nodes)
        while waiting:
            waiting -= {item.to_dict()["metadata"]["name"] for item in kube.list(QatNodeResource) if item.to_dict().get("status")}
            crashed = [p for p in self.operators if not p.alive()]
            if crashed:
                raise RuntimeError(f"{crashed[0].name} exited during start-up:\n{crashed[0].log_tail()}")
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"no inventory from {', '.join(sorted(waiting))} within {self.timeout:.0f}s of start")
            time.sleep(0.2)

    def _record_pids(self) -> None:
        self.state.components = {
            **self.control_plane.endpoints().pids,
            **{p.name: p.pid for p in self.operators if p.pid is not None},
            **(self.kubelets.pids() if self.kubelets else {}),
            **(self.kubelets.pod_pids(self.kube) if self.kubelets and self.kube else {}),
        }
        self.state.save(self.state_dir)

    def _watch(self) -> int:
        while not self.stopping.wait(RESTART_BACKOFF):
            dead = self.control_plane.exited()
            if dead:
                print(f"control plane component exited: {', '.join(dead)}; stopping", flush=True)
                return 1
            if self.kubelets:
                stopped_nodes = self.kubelets.exited()
                if stopped_nodes:
                    print(f"node stopped: {', '.join(stopped_nodes)}; stopping", flush=True)
                    return 1
                # Containers restart with new PIDs; the state file names the current ones.
                self._record_pids()
            restarted = [p for p in self.operators if not p.alive()]
            for process in restarted:
                print(f"{process.name} exited with code {process.exit_code()}; restarting", flush=True)
                process.start()
            if restarted:
                self._record_pids()
        return 0

    def _stop_all(self) -> None:
        # Operators first, so none of them sees the API server go away under it.
        for process in reversed(self.operators):
            process.stop()
        if self.host_node:
            for line in self.host_node.give_back():
                print(f"host node {self.host_node.name}: {line}", flush=True)
        if self.kubelets:
            self.kubelets.stop()
        self.control_plane.stop()


def _metrics_args(target: Target) -> list[str | int]:
    return ["--metrics-port", target.port, "--metrics-address", "127.0.0.1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qatvm local supervise")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--hardware", type=Path, help="hardware profile (YAML) for every simulated node")
    parser.add_argument(
        "--kubelet-image", type=Path, action="append", help="real nodes: an OCI archive each node loads (repeat)"
    )
    parser.add_argument("--monitoring", action="store_true", help="also run Prometheus, scraping every component")
    parser.add_argument("--timeout", type=float, default=STARTUP_TIMEOUT, help="seconds to be ready in")
    host.add_arguments(parser)
    args = parser.parse_args(argv)
    profile = load_profile(args.hardware) if args.hardware else DEFAULT_PROFILE
    supervisor = Supervisor(
        args.state_dir, args.nodes, profile, args.kubelet_image, monitoring=args.monitoring,
        host_node=host.from_args(parser, args, node_names(args.nodes)), timeout=args.timeout,
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: supervisor.stopping.set())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
