"""The libvirt layer: one connection per URI, idempotent domain lifecycle, clear errors."""

from __future__ import annotations

from qatvm.hypervisor.connection import Hypervisor, OwnedDomain, open_connection
from qatvm.hypervisor.errors import (
    ConnectionFailed,
    DomainActive,
    DomainConflict,
    DomainNotFound,
    HypervisorError,
    PassthroughUnsupported,
)
from qatvm.hypervisor.state import DomainState

__all__ = [
    "ConnectionFailed",
    "DomainActive",
    "DomainConflict",
    "DomainNotFound",
    "DomainState",
    "Hypervisor",
    "HypervisorError",
    "OwnedDomain",
    "PassthroughUnsupported",
    "open_hypervisor",
]


def open_hypervisor(uri: str) -> Hypervisor:
    """Any libvirt URI: `qemu:///system` on a node, `test:///default` in tests."""
    return Hypervisor(open_connection(uri))
