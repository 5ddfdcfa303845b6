from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qatvm.api.base import ObjectRef
from qatvm.domain import DomainSpec
from qatvm.hypervisor import Hypervisor, open_hypervisor


@pytest.fixture
def make_spec() -> Callable[..., DomainSpec]:
    """A spec for a fresh VM (a new UID each call unless given): `make_spec("db", hostdevs=(...))`."""

    def make(name: str, *, namespace: str = "team-a", uid: str | None = None, **fields: object) -> DomainSpec:
        return DomainSpec.model_validate(
            {
                "owner": ObjectRef(namespace=namespace, name=name, uid=uid or str(uuid.uuid4())),
                "vcpus": 2,
                "memory_bytes": 512 * 1024**2,
                "disk": Path(f"/var/lib/qatvm/vms/{namespace}/{name}/disk.qcow2"),
                "hostdevs": ("0000:3d:01.2", "0000:3d:01.3"),
                **fields,
            }
        )

    return make


@pytest.fixture
def hypervisor() -> Iterator[Hypervisor]:
    """libvirt's test driver with its stock node, which already runs one unrelated domain, `test`."""
    with open_hypervisor("test:///default") as connection:
        yield connection


@pytest.fixture
def crashed_node(tmp_path: Path) -> Path:
    """A private copy of data/crashed-node.xml: the state a node's hypervisor was left in."""
    path = tmp_path / "node" / "hypervisor.xml"
    path.parent.mkdir()
    shutil.copyfile(Path(__file__).parent / "data" / "crashed-node.xml", path)
    return path
