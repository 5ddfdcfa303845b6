"""The short description of one node's PCI hardware that the generator turns into a sysfs tree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qatvm.api.cpulist import parse_cpulist
from qatvm.api.hugepages import PageSize
from qatvm.api.quantity import parse_bytes
from qatvm.node.devices import BY_NAME, INTEL, VFIO_PCI, vfio_denylisted

# "pf0", "pf0.vf3", "nic1", "dev0": a device named by its place in the profile.
DEVICE_REF = re.compile(r"^(pf|nic|dev)(\d+)(?:\.vf(\d+))?$")
_HEX4 = r"^[0-9a-f]{4}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PfSpec(_Spec):
    """A QAT physical function and the VFs enabled on it."""

    generation: str
    numa_node: int = Field(default=0, ge=-1)
    # sriov_numvfs at start; 0 leaves SR-IOV off.
    vfs: int = Field(default=8, ge=0)
    total_vfs: int = Field(default=16, ge=1, le=255)
    # qat/cfg_services, gen4+ only; the driver's default when omitted.
    services: str | None = None
    state: Literal["up", "down"] = "up"
    # The debugfs heartbeat/status the QAT driver keeps ("failed" reads -1).
    heartbeat: Literal["ok", "failed"] = "ok"
    # VF index -> driver it is bound to at start (e.g. an admin pre-bound some to vfio-pci).
    vf_drivers: dict[int, str] = Field(default_factory=dict)
    # No ACS on the path: the PF and all its VFs land in one IOMMU group.
    shared_iommu_group: bool = False

    @field_validator("generation")
    @classmethod
    def _known_generation(cls, value: str) -> str:
        if value not in BY_NAME:
            raise ValueError(f"unknown generation {value!r}; known: {', '.join(BY_NAME)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PfSpec:
        gen = BY_NAME[self.generation]
        if self.vfs > self.total_vfs:
            raise ValueError(f"vfs ({self.vfs}) exceeds total_vfs ({self.total_vfs})")
        if gen.services is None and (self.services is not None or self.state != "up"):
            raise ValueError(f"{gen.name} has no qat/cfg_services or qat/state")
        if self.services is not None:
            check_services(self.services, gen.services or ())
        for index in self.vf_drivers:
            if not 0 <= index < self.vfs:
                raise ValueError(f"vf_drivers names VF {index}, but only {self.vfs} VFs are enabled")
        return self


class NicSpec(_Spec):
    """A network card beside the QAT parts (an Intel X710 with its iavf VFs by default)."""

    vendor: str = Field(default="8086", pattern=_HEX4)
    device: str = Field(default="1572", pattern=_HEX4)
    driver: str = "i40e"
    numa_node: int = Field(default=0, ge=-1)
    vfs: int = Field(default=0, ge=0)
    total_vfs: int = Field(default=64, ge=1, le=255)
    vf_device: str = Field(default="154c", pattern=_HEX4)
    vf_driver: str = "iavf"
    share_iommu_group_with: str | None = Field(default=None, pattern=DEVICE_REF.pattern)


class DeviceSpec(_Spec):
    """A plain PCI function, such as a QAT VF as a VM sees it: no PF, no SR-IOV."""

    vendor: str = Field(default="8086", pattern=_HEX4)
    device: str = Field(pattern=_HEX4)
    class_code: str = Field(default="0b4000", pattern=r"^[0-9a-f]{6}$")
    driver: str | None = None
    numa_node: int = Field(default=-1, ge=-1)
    share_iommu_group_with: str | None = Field(default=None, pattern=DEVICE_REF.pattern)


class NumaNodeSpec(_Spec):
    """One NUMA node: its CPUs, its memory and the huge pages reserved on it at boot."""

    cpus: str
    memory: str = "32Gi"
    # Pages in each pool; all free, as on a node that runs nothing yet.
    hugepages: dict[PageSize, int] = Field(default_factory=dict)

    @field_validator("cpus")
    @classmethod
    def _cpulist(cls, value: str) -> str:
        if not parse_cpulist(value):
            raise ValueError("a NUMA node needs at least one CPU")
        return value

    @field_validator("memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        parse_bytes(value)
        return value

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)

    @model_validator(mode="after")
    def _pages_fit(self) -> NumaNodeSpec:
        pooled = sum(size.bytes * count for size, count in self.hugepages.items())
        if pooled > self.memory_bytes:
            raise ValueError(f"hugepages take {pooled} bytes, more than the node's memory ({self.memory})")
        return self


def _two_numa_nodes() -> list[NumaNodeSpec]:
    # Eight 1 GiB pages and 1 GiB of 2 MiB pages on each, so VMs can ask for either size.
    return [
        NumaNodeSpec(cpus="0-15", memory="32Gi", hugepages={PageSize.SIZE_1GI: 8, PageSize.SIZE_2MI: 512}),
        NumaNodeSpec(cpus="16-31", memory="32Gi", hugepages={PageSize.SIZE_1GI: 8, PageSize.SIZE_2MI: 512}),
    ]


class HardwareProfile(_Spec):
    """One node: its PCI functions and the state of the kernel modules qatvm cares about."""

    # intel_iommu=on: without it there are no IOMMU groups at all.
    iommu: bool = True
    vfio_pci: bool = True
    disable_denylist: bool = False
    # Whether the in-tree VF drivers (c6xxvf, ...) are loaded and claim VFs as they appear.
    vf_drivers_loaded: bool = True
    # Whether debugfs is mounted (at <sysfs>/kernel/debug), where QAT heartbeats show.
    debugfs: bool = True
    pfs: list[PfSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    devices: list[DeviceSpec] = Field(default_factory=list)
    # NUMA node N is item N. Unless a profile says otherwise, a node is a two-socket server.
    numa_nodes: list[NumaNodeSpec] = Field(default_factory=_two_numa_nodes, min_length=1)

    @model_validator(mode="after")
    def _numa_layout(self) -> HardwareProfile:
        seen: set[int] = set()
        for node in self.numa_nodes:
            cpus = parse_cpulist(node.cpus)
            if cpus & seen:
                raise ValueError(f"CPUs {sorted(cpus & seen)} belong to more than one NUMA node")
            seen |= cpus
        for item in [*self.pfs, *self.nics, *self.devices]:
            if item.numa_node >= len(self.numa_nodes):
                raise ValueError(f"a device sits on NUMA node {item.numa_node}, but the profile has {len(self.numa_nodes)}")
        return self

    @model_validator(mode="after")
    def _prebinding_possible(self) -> HardwareProfile:
        for pf in self.pfs:
            if VFIO_PCI not in pf.vf_drivers.values():
                continue
            if not self.vfio_pci:
                raise ValueError("vf_drivers binds VFs to vfio-pci, but vfio_pci is false")
            if not self.iommu:
                raise ValueError("vf_drivers binds VFs to vfio-pci, which needs iommu: true")
            if vfio_denylisted(INTEL, BY_NAME[pf.generation].vf_devices[0]) and not self.disable_denylist:
                raise ValueError(f"vfio-pci denylists {pf.generation} VFs: set disable_denylist: true")
        return self


def check_services(value: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless `value` is a `;`-list of distinct services the part offers."""
    items = value.split(";")
    if not items or len(set(items)) != len(items) or not set(items) <= set(allowed):
        raise ValueError(f"services {value!r} must be distinct items of {', '.join(allowed)}, joined by ';'")


def load_profile(path: Path) -> HardwareProfile:
    """Read a profile from YAML (JSON is YAML too)."""
    return HardwareProfile.model_validate(yaml.safe_load(path.read_text()) or {})


# What the local cluster gives each simulated node: two 4xxx PFs, one per NUMA node,
# eight of sixteen VFs enabled on each.
DEFAULT_PROFILE = HardwareProfile(
    pfs=[
        PfSpec(generation="4xxx", numa_node=0, vfs=8, services="sym;asym"),
        PfSpec(generation="4xxx", numa_node=1, vfs=8, services="dc"),
    ],
)
