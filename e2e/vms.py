"""QatVirtualMachine objects as e2e tests write them, and reads of their status."""

from __future__ import annotations

from typing import Any

from qatvm.testing.kubectl import Kubectl

BASE_IMAGE = "/var/lib/qatvm/images/base.qcow2"


def vm(name: str, namespace: str, count: int = 1, running: bool = True, **qat: Any) -> dict[str, Any]:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "running": running,
            "memory": "256Mi",
            "qat": {"count": count, **qat},
            "image": {"path": BASE_IMAGE},
        },
    }


def status(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    return kubectl.json("get", "qvm", name, "-n", namespace).get("status") or {}


def condition(kubectl: Kubectl, name: str, namespace: str, type_: str) -> dict[str, Any] | None:
    return next((c for c in status(kubectl, name, namespace).get("conditions", []) if c["type"] == type_), None)


def wait_ready(kubectl: Kubectl, name: str, namespace: str, timeout: int = 60) -> None:
    kubectl.run("wait", "--for=condition=Ready", f"qvm/{name}", "-n", namespace, f"--timeout={timeout}s", timeout=timeout + 10)


def all_vms(kubectl: Kubectl) -> list[dict[str, Any]]:
    return kubectl.json("get", "qvm", "-A")["items"]  # type: ignore[no-any-return]
