"""Kubernetes client plumbing shared by the CLI, the local cluster and the operator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import httpx2
from lightkube import Client
from lightkube.codecs import load_all_yaml
from lightkube.config.kubeconfig import KubeConfig
from lightkube.generic_resource import (
    create_global_resource,
    create_namespaced_resource,
    create_resources_from_crd,
    get_generic_resource,
)
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from qatvm.api.vm import GROUP, VERSION
from qatvm.paths import project_root

FIELD_MANAGER = "qatvm"

QatVirtualMachineResource = create_namespaced_resource(
    GROUP, VERSION, "QatVirtualMachine", "qatvirtualmachines"
)
QatNodeResource = create_global_resource(GROUP, VERSION, "QatNode", "qatnodes")


def client(kubeconfig: Path | None = None, field_manager: str = FIELD_MANAGER, timeout: float | None = None) -> Client:
    """A client for `kubeconfig`, or for the usual KUBECONFIG / in-cluster lookup when None.

    `timeout`: seconds each request may take (lightkube's default is 10)."""
    config = KubeConfig.from_file(str(kubeconfig)) if kubeconfig else KubeConfig.from_env()
    return Client(config=config, field_manager=field_manager, timeout=httpx2.Timeout(timeout) if timeout else None)


def crd_dir() -> Path:
    return project_root() / "crds"


def apply_crds(kube: Client, directory: Path | None = None, timeout: float = 30.0) -> list[str]:
    """Server-side apply every CRD in `directory`; return once each one's objects can be listed.

    `Established` comes before the API server's watch cache for the new resource is filled, and
    a LIST in between fails with "storage is (re)initializing": callers must not see that.
    """
    crds = [
        cast(CustomResourceDefinition, crd)
        for path in sorted((directory or crd_dir()).glob("*.yaml"))
        for crd in load_all_yaml(path.read_text())
    ]
    names = [str(crd.metadata.name) for crd in crds if crd.metadata]
    for crd in crds:
        kube.apply(crd, force=True)
    deadline = time.monotonic() + timeout
    for crd, name in zip(crds, names, strict=True):
        version = next(v.name for v in crd.spec.versions if v.served)
        resource = get_generic_resource(f"{crd.spec.group}/{version}", crd.spec.names.kind) or _register(crd)
        while True:
            try:
                for _ in kube.list(resource, chunk_size=1):
                    break
                break
            except Exception as error:  # noqa: BLE001 - 404 then 503 while the resource comes up
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} not served after {timeout:.0f}s: {error}") from error
                time.sleep(0.1)
    return names


def _register(crd: CustomResourceDefinition) -> Any:
    create_resources_from_crd(crd)
    version = next(v.name for v in crd.spec.versions if v.served)
    return get_generic_resource(f"{crd.spec.group}/{version}", crd.spec.names.kind)
