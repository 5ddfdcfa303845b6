"""Kubernetes client plumbing shared by the CLI, the local cluster and the operator."""

from __future__ import annotations

import time
from pathlib import Path

from lightkube import Client
from lightkube.codecs import load_all_yaml
from lightkube.config.kubeconfig import KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from qatvm.api.vm import GROUP, VERSION
from qatvm.paths import project_root

FIELD_MANAGER = "qatvm"

QatVirtualMachineResource = create_namespaced_resource(
    GROUP, VERSION, "QatVirtualMachine", "qatvirtualmachines"
)
QatNodeResource = create_global_resource(GROUP, VERSION, "QatNode", "qatnodes")


def client(kubeconfig: Path | None = None, field_manager: str = FIELD_MANAGER) -> Client:
    """A client for `kubeconfig`, or for the usual KUBECONFIG / in-cluster lookup when None."""
    config = KubeConfig.from_file(str(kubeconfig)) if kubeconfig else KubeConfig.from_env()
    return Client(config=config, field_manager=field_manager)


def crd_dir() -> Path:
    return project_root() / "crds"


def apply_crds(kube: Client, directory: Path | None = None, timeout: float = 30.0) -> list[str]:
    """Server-side apply every CRD in `directory` and wait until the API server serves them."""
    names = []
    for path in sorted((directory or crd_dir()).glob("*.yaml")):
        for crd in load_all_yaml(path.read_text()):
            kube.apply(crd, force=True)
            names.append(crd.metadata.name)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in list(pending):
            status = kube.get(CustomResourceDefinition, name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not established after {timeout:.0f}s: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.1)
    return names
