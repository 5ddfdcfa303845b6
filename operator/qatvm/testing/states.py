"""QatVirtualMachines driven into each state a GitOps tool must tell apart, and read back.

Every state is reached through the real API server, controller and agents of a local
cluster (two simulated nodes of 16 VFs each); the objects are what `kubectl get -o json`
returns, so the kstatus and Argo CD checks read exactly what Flux and Argo CD would.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qatvm.testing.cluster import eventually
from qatvm.testing.kubectl import Kubectl

BASE_IMAGE = "/var/lib/qatvm/images/base.qcow2"
HOLD = "e2e.qatvm.io/hold"
FIXTURE_NAMESPACE = "gitops"
FIXED_TIME = "2026-01-01T00:00:00Z"


def vm(name: str, namespace: str, count: int = 1, *, running: bool = True, node: str | None = None,
       image: str = BASE_IMAGE) -> dict[str, Any]:
    spec: dict[str, Any] = {"running": running, "memory": "256Mi", "qat": {"count": count, "numa": "none"}, "image": {"path": image}}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


class StateCapture:
    """Puts VMs of one namespace into each state; node-1 is filled up, node-2 holds the rest."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("get", "qvm", name, "-n", self.namespace)  # type: ignore[no-any-return]

    def wait_for(self, name: str, check: Any, timeout: float = 90) -> dict[str, Any]:
        def reached() -> dict[str, Any]:
            obj = self.get(name)
            assert check(obj), json.dumps(obj.get("status"), indent=1)
            return obj

        return eventually(reached, timeout=timeout)  # type: ignore[no-any-return]

    def ready(self, name: str) -> dict[str, Any]:
        return self.wait_for(name, lambda o: (condition(o, "Ready") or {}).get("status") == "True")

    def capture_all(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {}
        with self._watching("placed") as versions_until:
            self.kubectl.apply(vm("placed", self.namespace, node="node-2"))
            versions = versions_until(lambda o: (condition(o, "Ready") or {}).get("status") == "True")
        # The controller's write, seen by the watch before the agent acted on it.
        states["placed"] = next(o for o in versions if (o.get("status") or {}).get("phase") == "Scheduled")

        self.kubectl.apply(vm("ready", self.namespace, node="node-2"), vm("stopped", self.namespace, running=False, node="node-2"))
        states["ready"] = self.ready("ready")
        states["stopped"] = self.ready("stopped")

        self.kubectl.apply(vm("hog", self.namespace, 16, node="node-1"))
        self.ready("hog")
        self.kubectl.apply(vm("waiting", self.namespace, node="node-1"))
        states["waiting"] = self.wait_for("waiting", lambda o: (condition(o, "Scheduled") or {}).get("reason") == "InsufficientVFs")

        self.kubectl.apply(vm("stalled", self.namespace, 20))
        states["stalled"] = self.wait_for("stalled", lambda o: (condition(o, "Stalled") or {}).get("status") == "True")

        self.kubectl.apply(vm("failed", self.namespace, node="node-2", image="/var/lib/qatvm/images/missing.qcow2"))
        states["failed"] = self.wait_for("failed", lambda o: (o.get("status") or {}).get("phase") == "Failed")

        self.kubectl.apply(vm("changed", self.namespace, node="node-2"))
        self.ready("changed")
        # The API server's answer to a change (running: vcpus and memory are frozen once placed):
        # generation moved on, status not yet.
        patched = self.kubectl.run("patch", "qvm", "changed", "-n", self.namespace, "--type=merge",
                                   "-p", '{"spec":{"running":false}}', "-o", "json")
        states["unobserved"] = json.loads(patched.stdout)

        self.kubectl.apply(vm("deleting", self.namespace, node="node-2"))
        self.ready("deleting")
        self.kubectl.run("patch", "qvm", "deleting", "-n", self.namespace, "--type=json",
                         "-p", json.dumps([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]))
        self.kubectl.run("delete", "qvm", "deleting", "-n", self.namespace, "--wait=false")
        # Held by our finalizer alone: the agent has removed the domain and given the VFs back.
        states["deleting"] = self.wait_for("deleting", lambda o: o["metadata"].get("finalizers") == [HOLD])
        return states

    def release(self) -> None:
        """Let go of the held deletion, so the namespace can go."""
        if self.kubectl.exists("qvm", "deleting", "-n", self.namespace):
            self.kubectl.run("patch", "qvm", "deleting", "-n", self.namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')

    @contextmanager
    def _watching(self, name: str) -> Iterator[Callable[[Callable[[dict[str, Any]], bool]], list[dict[str, Any]]]]:
        """Every version of one VM the API server sends a watcher, from before it exists."""
        argv = [str(self.kubectl.binary), f"--kubeconfig={self.kubectl.kubeconfig}", "get", "qvm", "-n", self.namespace,
                f"--field-selector=metadata.name={name}", "--watch", "-o", "json"]
        watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            yield lambda done: _versions_until(watcher, done)
        finally:
            watcher.kill()
            watcher.wait()


def _versions_until(watcher: subprocess.Popen[str], done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Read kubectl's stream of indented JSON objects (each closes with `}` alone on a line)."""
    assert watcher.stdout is not None
    versions: list[dict[str, Any]] = []
    chunk: list[str] = []
    for line in watcher.stdout:
        chunk.append(line)
        if line.rstrip("\n") == "}":
            versions.append(json.loads("".join(chunk)))
            chunk = []
            if done(versions[-1]):
                return versions
    raise AssertionError(f"the watch ended after {len(versions)} versions, none of them the one awaited")


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """A captured object with what differs between runs (ids, times, the namespace) made fixed."""
    namespace = obj["metadata"]["namespace"]
    text = json.dumps(obj).replace(namespace, FIXTURE_NAMESPACE)
    # A simulated node's paths, as a real node would name them (from its own root).
    obj = json.loads(re.sub(r"/[^\s\"]*/nodes/node-[0-9]+/", "/", text))
    metadata = obj["metadata"]
    for key in ("managedFields", "annotations"):
        metadata.pop(key, None)
    metadata["uid"] = "00000000-0000-0000-0000-000000000000"
    metadata["resourceVersion"] = "1"
    for key in ("creationTimestamp", "deletionTimestamp"):
        if key in metadata:
            metadata[key] = FIXED_TIME
    status = obj.get("status") or {}
    for c in status.get("conditions", []):
        c["lastTransitionTime"] = FIXED_TIME
    if (status.get("domain") or {}).get("uuid"):
        status["domain"]["uuid"] = "00000000-0000-0000-0000-000000000000"
    return obj


def shape(obj: dict[str, Any]) -> dict[str, Any]:
    """What a health check reads from an object, without the words and numbers in it."""
    status = obj.get("status") or {}
    return {
        "running": (obj.get("spec") or {}).get("running"),
        "deleting": "deletionTimestamp" in obj["metadata"],
        "generationObserved": status.get("observedGeneration") == obj["metadata"].get("generation"),
        "phase": status.get("phase"),
        "conditions": sorted((c["type"], c["status"], c.get("reason")) for c in status.get("conditions", [])),
    }


# What Flux/kpt (kstatus) and Argo CD (manifests/argocd/health.lua) must say of each state.
EXPECTED: dict[str, tuple[str, str]] = {
    "placed": ("InProgress", "Progressing"),
    "ready": ("Current", "Healthy"),
    "stopped": ("Current", "Suspended"),
    "waiting": ("InProgress", "Progressing"),
    "stalled": ("Failed", "Degraded"),
    "failed": ("Failed", "Degraded"),
    "unobserved": ("InProgress", "Progressing"),
    "deleting": ("Terminating", "Progressing"),
}
