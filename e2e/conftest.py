"""End-to-end fixtures: a cluster to run against, and a view of a local cluster's nodes.

Set QATVM_E2E_KUBECONFIG to run against an existing cluster (kind, a real one): the checks that
look inside a node then skip, saying so. Otherwise each session starts its own `qatvm local up`
in a temporary folder and stops it at the end; with QATVM_E2E_KUBELET=1 it is
`qatvm local up --kubelet`: the operator runs as pods of the shipped manifests on real kubelets,
and the tests marked `kubelet` (which act on those pods) run too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qatvm.testing.cluster import KUBELET_ENV, E2eCluster, LocalNodes, local_cluster
from qatvm.testing.installed import require_commands
from qatvm.testing.kubectl import Kubectl


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eCluster]:
    external = os.environ.get("QATVM_E2E_KUBECONFIG")
    if external:
        kubectl_binary = Path(os.environ.get("QATVM_E2E_KUBECTL", "kubectl"))
        yield E2eCluster(Kubectl(kubectl_binary, Path(external)), local=None)
        return
    with local_cluster(tmp_path_factory.mktemp("e2e") / "cluster", nodes=2, kubelet=KUBELET_MODE) as cluster:
        yield cluster


KUBELET_MODE = os.environ.get(KUBELET_ENV) == "1"


@pytest.fixture
def kubectl(cluster: E2eCluster) -> Kubectl:
    return cluster.kubectl


@pytest.fixture
def nodes(cluster: E2eCluster) -> LocalNodes:
    if cluster.local is None:
        pytest.skip("looks inside the nodes' sysfs and hypervisor, which only a local cluster exposes")
    return cluster.local


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eCluster]:
    """A local cluster of its own, started with --monitoring; its tests fill node-1 up."""
    if os.environ.get("QATVM_E2E_KUBECONFIG"):
        pytest.skip("fills a node and reads the local Prometheus: needs a `qatvm local up --monitoring` of its own")
    require_commands({"prometheus": "prometheus"})
    with local_cluster(tmp_path_factory.mktemp("monitored") / "cluster", nodes=2, monitoring=True) as cluster:
        yield cluster
