"""Fixtures shared by all tests: one real control plane per session, and kubectl on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import lightkube
import pytest
from lightkube import KubeConfig

from qatvm.api.lease import NODE_LEASE_NAMESPACE
from qatvm.controlplane.server import ControlPlane
from qatvm.kube import apply_crds, client
from qatvm.kube_writes import Writer
from qatvm.node.sysfs import Sysfs
from qatvm.simulation import HardwareProfile, SimulatedSysfs, generate
from qatvm.testing.kubectl import Kubectl
from minute_watch import MinuteWatch


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, with the qatvm CRDs applied.

    Built binaries are required: `.ci/run` builds them, and a missing build is a failure
    (with the command to run), never a skip.
    """
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), audit=True)
    plane.start()
    try:
        apply_crds(client(plane.kubeconfig))
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane.kubectl, control_plane.kubeconfig)


@pytest.fixture(scope="session")
def minute_watch(control_plane: ControlPlane, kubectl: Kubectl) -> MinuteWatch:
    watch = MinuteWatch(control_plane, kubectl)
    watch.start()
    return watch


@pytest.fixture(scope="session", autouse=True)
def _minute_watch_first(request: pytest.FixtureRequest) -> None:
    """When a selected test takes the minute-long watch, it starts with the session."""
    if any("minute_watch" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("minute_watch")


@pytest.fixture(scope="session")
def node_lease_namespace(kubectl: Kubectl) -> str:
    """The namespace of the agents' node leases, made once."""
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NODE_LEASE_NAMESPACE}})
    return NODE_LEASE_NAMESPACE


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[lightkube.AsyncClient]:
    """An admin's async client, as the operator's code takes one."""
    client = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    yield client
    await client.close()


@pytest.fixture
async def writer(control_plane: ControlPlane) -> AsyncIterator[Writer]:
    """The operator's writer (VM and QatNode patches, Events) as an admin."""
    made = Writer(KubeConfig.from_file(str(control_plane.kubeconfig)), "qatvm-test")
    yield made
    await made.close()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., Sysfs]:
    """Generate a simulated node from a profile (a dict is validated) and open its sysfs."""

    def make(profile: dict[str, Any] | HardwareProfile, name: str = "node") -> Sysfs:
        root = tmp_path / name / "sys"
        generate(HardwareProfile.model_validate(profile), root)
        return SimulatedSysfs(root)

    return make
