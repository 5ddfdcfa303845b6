"""The status of a `QatNode`: one entry per VF an agent found on its node."""

from __future__ import annotations

from pydantic import Field, computed_field

from qatvm.api.base import ApiModel, ObjectRef

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


class QatNodeStatus(ApiModel):
    # The counts are derived from `vfs`; when a status is read back they are recomputed.
    vfs: list[QatVf]

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
