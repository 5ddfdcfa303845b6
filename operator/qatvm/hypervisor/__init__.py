"""The libvirt layer: one connection per URI, idempotent domain lifecycle, clear errors."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from qatvm.hypervisor.connection import Hypervisor, OwnedDomain, open_connection
from qatvm.hypervisor.errors import (
    ConnectionFailed,
    DomainActive,
    DomainConflict,
    DomainNotFound,
    HypervisorError,
    PassthroughUnsupported,
)
from qatvm.hypervisor.persistent import PERSISTENT_TEST_SCHEME, PersistentTestHypervisor
from qatvm.hypervisor.state import DomainState

__all__ = [
    "PERSISTENT_TEST_SCHEME",
    "ConnectionFailed",
    "DomainActive",
    "DomainConflict",
    "DomainNotFound",
    "DomainState",
    "Hypervisor",
    "HypervisorError",
    "OwnedDomain",
    "PassthroughUnsupported",
    "PersistentTestHypervisor",
    "open_hypervisor",
]


def open_hypervisor(uri: str) -> Hypervisor:
    """Any libvirt URI (`qemu:///system`, `test:///default`, ...), or `qatvm-test:///PATH.xml`
    for a simulated node whose domains outlive the process (see `qatvm.hypervisor.persistent`)."""
    parts = urlsplit(uri)
    if parts.scheme != PERSISTENT_TEST_SCHEME:
        return Hypervisor(open_connection(uri))
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise ConnectionFailed(f"{uri!r}: write {PERSISTENT_TEST_SCHEME}:///ABSOLUTE/PATH.xml")
    return PersistentTestHypervisor(Path(parts.path))
