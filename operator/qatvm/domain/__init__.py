"""Libvirt domains for qatvm VMs: typed XML models, the builder, and the files a domain uses."""

from __future__ import annotations

from qatvm.domain.builder import build_domain
from qatvm.domain.models import QATVM_XMLNS, Domain, DomainIdentity, VmOwner
from qatvm.domain.naming import domain_name, domain_uuid
from qatvm.domain.spec import CpuMode, DomainSpec, NetworkKind, NetworkSpec, VirtType

__all__ = [
    "QATVM_XMLNS",
    "CpuMode",
    "Domain",
    "DomainIdentity",
    "DomainSpec",
    "NetworkKind",
    "NetworkSpec",
    "VirtType",
    "VmOwner",
    "build_domain",
    "domain_name",
    "domain_uuid",
]
