"""The process behind `qatvm local up`: owns the control plane and the simulated nodes.

It runs detached from the terminal, so the cluster outlives the command that started it. Every
component it starts dies with it (the kernel kills them if it is killed), so `local down`, which
stops only this process, leaves nothing running.
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

from qatvm.controlplane.server import ControlPlane
from qatvm.kube import apply_crds, client
from qatvm.local.state import ClusterState

SIMULATED_LABEL = "qatvm.io/simulated"


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
    def __init__(self, state_dir: Path, nodes: int) -> None:
        self.state_dir = state_dir
        self.nodes = node_names(nodes)
        self.control_plane = ControlPlane(state_dir)
        self.stopping = threading.Event()

    def run(self) -> int:
        started = time.monotonic()
        state = ClusterState(supervisor_pid=os.getpid(), nodes=self.nodes)
        state.save(self.state_dir)
        try:
            endpoints = self.control_plane.start()
            kube = client(endpoints.kubeconfig)
            apply_crds(kube)
            register_nodes(kube, self.nodes)
            for name in self.nodes:
                (self.state_dir / "nodes" / name).mkdir(parents=True, exist_ok=True)
        except Exception as error:  # the reason goes to `local up`, which prints it
            state.error = f"{type(error).__name__}: {error}"
            state.save(self.state_dir)
            self.control_plane.stop()
            return 1
        state.ready = True
        state.server = endpoints.server
        state.kubeconfig = str(endpoints.kubeconfig)
        state.kubectl_dir = str(endpoints.kubectl.parent)
        state.components = endpoints.pids
        state.startup_seconds = round(time.monotonic() - started, 2)
        state.save(self.state_dir)
        print(f"local cluster ready in {state.startup_seconds}s at {endpoints.server}", flush=True)
        try:
            return self._watch()
        finally:
            self.control_plane.stop()
            ClusterState.path(self.state_dir).unlink(missing_ok=True)
            print("local cluster stopped", flush=True)

    def _watch(self) -> int:
        while not self.stopping.wait(1.0):
            dead = self.control_plane.exited()
            if dead:
                print(f"control plane component exited: {', '.join(dead)}; stopping", flush=True)
                return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qatvm local supervise")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    supervisor = Supervisor(args.state_dir, args.nodes)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: supervisor.stopping.set())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
