"""What the agent knows about a VM when it builds a domain: plain values, no Kubernetes, no XML."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from qatvm.api.base import ObjectRef
from qatvm.api.hugepages import PageSize
from qatvm.domain.naming import domain_name, domain_uuid

# Domain numbers above 0xffff exist (Intel VMD puts devices in domain 0x10000 and up).
_PCI_ADDRESS = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$")

# A domain XML cannot carry control characters in a path (libvirt's schema also refuses line
# breaks); libvirt network and host bridge names are plain tokens.
_NOT_IN_PATH = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_DEVICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_TOKEN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

MIB = 1024 * 1024


def _pci_address(value: str) -> str:
    normalized = value.strip().lower()
    if not _PCI_ADDRESS.match(normalized):
        raise ValueError(f"{value!r} is not a PCI address like 0000:3d:01.2")
    return normalized


PciAddress = Annotated[str, AfterValidator(_pci_address)]


def _host_path(value: Path) -> Path:
    if not value.is_absolute() or value == Path("/"):
        raise ValueError(f"{str(value)!r} is not an absolute path to a file")
    if _NOT_IN_PATH.search(str(value)):
        raise ValueError(f"{str(value)!r} holds control characters, which a domain XML cannot carry")
    return value


HostPath = Annotated[Path, AfterValidator(_host_path)]


def split_pci_address(address: PciAddress) -> tuple[int, int, int, int]:
    """(domain, bus, slot, function) of an address already checked by `PciAddress`."""
    match = _PCI_ADDRESS.match(address)
    if match is None:
        raise ValueError(f"{address!r} is not a PCI address like 0000:3d:01.2")
    return (
        int(match.group(1), 16),
        int(match.group(2), 16),
        int(match.group(3), 16),
        int(match.group(4), 16),
    )


class VirtType(StrEnum):
    KVM = "kvm"
    # Software emulation, for hosts without /dev/kvm; passthrough still needs an IOMMU.
    QEMU = "qemu"


class CpuMode(StrEnum):
    HOST_PASSTHROUGH = "host-passthrough"
    HOST_MODEL = "host-model"
    # The only one that works without KVM.
    MAXIMUM = "maximum"


class NetworkKind(StrEnum):
    # QEMU's own user-mode NAT: needs nothing on the host, so it is the default.
    USER = "user"
    NETWORK = "network"
    BRIDGE = "bridge"


class NetworkSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: NetworkKind = NetworkKind.USER
    source: str | None = Field(default=None, pattern=_DEVICE_NAME)
    """The libvirt network name (kind network) or host bridge (kind bridge)."""

    @model_validator(mode="after")
    def _source_matches_kind(self) -> Self:
        if (self.kind is NetworkKind.USER) != (self.source is None):
            needs = "takes no source" if self.kind is NetworkKind.USER else "needs a source"
            raise ValueError(f"network kind {self.kind.value!r} {needs}")
        return self


class HostPlacement(BaseModel):
    """The host CPUs a VM's vCPUs run on, and the host NUMA node its vCPUs and memory stay on."""

    model_config = ConfigDict(frozen=True)

    # None: no NUMA node in particular (dedicated CPUs with `qat.numa: none`).
    host_node: int | None = Field(default=None, ge=0)
    # True: memory from no other NUMA node (`qat.numa: require`); False: preferably from this one.
    strict: bool = False
    # The vCPUs share these host CPUs (the NUMA node's CPUs no VM holds as dedicated) ...
    shared_cpus: frozenset[int] = frozenset()
    # ... or each vCPU i runs alone on dedicated_cpus[i].
    dedicated_cpus: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _some_cpus(self) -> Self:
        if not self.shared_cpus and not self.dedicated_cpus:
            raise ValueError("a NUMA binding needs host CPUs, shared or dedicated")
        if len(set(self.dedicated_cpus)) != len(self.dedicated_cpus):
            raise ValueError(f"a dedicated CPU is given twice: {list(self.dedicated_cpus)}")
        return self


class DomainSpec(BaseModel):
    # A misspelt field would otherwise be dropped silently, and the domain built without it.
    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: ObjectRef
    vcpus: int = Field(ge=1, le=1024)
    memory_bytes: int = Field(ge=16 * MIB)
    disk: HostPath
    """The VM's own copy-on-write qcow2 overlay (see `qatvm.domain.disks`)."""
    cloud_init_iso: HostPath | None = None
    hostdevs: tuple[PciAddress, ...] = ()
    network: NetworkSpec = NetworkSpec()
    virt_type: VirtType = VirtType.KVM
    cpu_mode: CpuMode = CpuMode.HOST_PASSTHROUGH
    # q35 gives each passed-through VF a PCIe port, which VF drivers in the guest expect.
    machine: str = Field(default="q35", pattern=_TOKEN)
    arch: str = Field(default="x86_64", pattern=_TOKEN)
    # Guest memory from the host's huge pages of this size; None: ordinary pages.
    hugepage_size: PageSize | None = None
    placement: HostPlacement | None = None

    @model_validator(mode="after")
    def _distinct_hostdevs(self) -> Self:
        if len(set(self.hostdevs)) != len(self.hostdevs):
            raise ValueError(f"a PCI device is listed twice in hostdevs: {list(self.hostdevs)}")
        return self

    @model_validator(mode="after")
    def _one_cpu_per_vcpu(self) -> Self:
        dedicated = self.placement.dedicated_cpus if self.placement else ()
        if dedicated and len(dedicated) != self.vcpus:
            raise ValueError(f"{self.vcpus} vCPUs need as many dedicated CPUs, not {len(dedicated)}")
        return self

    @property
    def name(self) -> str:
        return domain_name(self.owner.namespace, self.owner.name)

    @property
    def uuid(self) -> UUID:
        return domain_uuid(self.owner.uid)
