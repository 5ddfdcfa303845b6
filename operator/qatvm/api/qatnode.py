"""The status of a `QatNode`: one entry per VF an agent found on its node, and its NUMA nodes."""

from __future__ import annotations

from pydantic import Field, computed_field

from qatvm.api.base import ApiModel, ObjectRef
from qatvm.api.cpulist import parse_cpulist
from qatvm.api.hugepages import PageSize
from qatvm.api.quantity import format_bytes

BDF_PATTERN = r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"


class QatVf(ApiModel):
    pci_address: str = Field(pattern=BDF_PATTERN)
    # None inside a VM, where the VF is seen without its PF.
    pf_address: str | None = Field(default=None, pattern=BDF_PATTERN)
    device_id: str = Field(pattern=r"^[0-9a-f]{4}$")
    generation: str
    # The PF's qat/cfg_services (gen4+); None where the generation has fixed services.
    services: list[str] | None = None
    numa_node: int | None = Field(default=None, ge=0)
    # None only when the kernel runs without an IOMMU, and then the VF is not assignable.
    iommu_group: int | None = Field(default=None, ge=0)
    driver: str | None = None
    healthy: bool
    assignable: bool
    # Why the VF is unhealthy or not assignable, in words an admin can act on.
    reason: str | None = None
    allocated_to: ObjectRef | None = None

    @property
    def free(self) -> bool:
        return self.healthy and self.assignable and self.allocated_to is None


class Holdings(ApiModel):
    """What qatvm VMs hold of some CPUs and memory."""

    vcpus: int = 0
    memory: int = 0
    hugepages: dict[PageSize, int] = Field(default_factory=dict)
    # CPUs given to single VMs (`dedicatedCpus`), as a CPU list.
    dedicated_cpus: str = ""


class NumaNodeCapacity(ApiModel):
    """One NUMA node: what VMs may use of it (the host's reservation taken off) and what they hold."""

    id: int = Field(ge=0)
    cpus: str
    reserved_cpus: str = ""
    # Bytes of ordinary memory VMs may use: the node's memory less its huge page pools and the
    # host's reservation.
    memory: int = Field(ge=0)
    reserved_memory: int = Field(default=0, ge=0)
    # Pages in each pool as the kernel counts them (whatever holds them).
    hugepages: dict[PageSize, int] = Field(default_factory=dict)
    hugepages_free: dict[PageSize, int] = Field(default_factory=dict)
    # VMs bound to this NUMA node (`qat.numa` prefer or require).
    allocated: Holdings = Field(default_factory=Holdings)

    @property
    def cpu_set(self) -> frozenset[int]:
        return parse_cpulist(self.cpus)


class QatNodeStatus(ApiModel):
    # The counts are derived from `vfs`; when a status is read back they are recomputed.
    vfs: list[QatVf]
    # Empty when the agent could not read the node's NUMA layout: such a node takes no VM.
    numa: list[NumaNodeCapacity] = Field(default_factory=list)
    # VMs whose vCPUs and memory float over the whole node (`qat.numa: none`).
    unbound: Holdings = Field(default_factory=Holdings)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def free_cpus(self) -> int:
        held = self.unbound.vcpus + sum(n.allocated.vcpus for n in self.numa)
        return sum(len(n.cpu_set) for n in self.numa) - held

    @computed_field  # type: ignore[prop-decorator]
    @property
    def free_memory(self) -> str:
        held = self.unbound.memory + sum(n.allocated.memory for n in self.numa)
        return format_bytes(sum(n.memory for n in self.numa) - held)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return len(self.vfs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def free(self) -> int:
        return sum(vf.free for vf in self.vfs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def unhealthy(self) -> int:
        return sum(not vf.healthy for vf in self.vfs)
