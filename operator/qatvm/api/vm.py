"""The QatVirtualMachine object as the operator reads and writes it.

Field names follow crds/qatvirtualmachines.qatvm.io.yaml exactly; the API server validates and
defaults, so these models only type what arrives and what the operator writes back.
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from qatvm.api.base import ApiModel, ObjectRef
from qatvm.api.hugepages import PageSize
from qatvm.api.quantity import parse_bytes

GROUP = "qatvm.io"
VERSION = "v1alpha1"
PLURAL = "qatvirtualmachines"
KIND = "QatVirtualMachine"
# Keeps a VM until its node has removed its domain and given its VFs back. The API server puts it
# on every new VM (manifests/vm-finalizer-policy.yaml); the VM's agent removes it, or, for a VM
# deleted before it was placed, the controller.
FINALIZER = "agent.qatvm.io/finalizer"


class NumaPolicy(StrEnum):
    NONE = "none"
    PREFER = "prefer"
    REQUIRE = "require"


class QatRequest(ApiModel):
    count: int
    services: list[str] | None = None
    generation: str | None = None
    numa: NumaPolicy = NumaPolicy.PREFER


class Image(ApiModel):
    path: str


class CloudInit(ApiModel):
    user_data: str | None = None


class Hugepages(ApiModel):
    page_size: PageSize


class VmSpec(ApiModel):
    running: bool = True
    vcpus: int = 1
    memory: str = "1Gi"
    # Guest memory from the host's huge page pool of this size; None: ordinary memory.
    hugepages: Hugepages | None = None
    # Each vCPU on a host CPU no other qatvm VM uses.
    dedicated_cpus: bool = False
    qat: QatRequest
    image: Image
    cloud_init: CloudInit | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)


class Phase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPED = "Stopped"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class AllocatedDevice(ApiModel):
    """One VF allocated to the VM: where it sits on the host, recorded before it is bound."""

    pci_address: str
    pf_address: str | None = None
    device_id: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    driver: str | None = None


class ResourceAllocation(ApiModel):
    """The CPUs and memory the controller gave the VM, recorded with its VFs."""

    vcpus: int
    memory: str
    hugepage_size: PageSize | None = None
    # The NUMA node its vCPUs and memory are bound to; None: they float over the whole node.
    numa_node: int | None = None
    # Host CPUs the vCPUs are pinned to (a CPU list); None: not pinned.
    cpus: str | None = None
    dedicated: bool = False
    # `qat.numa: require`: memory may come from no other NUMA node.
    strict: bool = False

    @property
    def memory_bytes(self) -> int:
        return parse_bytes(self.memory)


class DomainStatus(ApiModel):
    name: str | None = None
    uuid: str | None = None
    state: str | None = None


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime.datetime | None = None
    observed_generation: int | None = None


class VmStatus(ApiModel):
    phase: Phase | None = None
    node_name: str | None = None
    pci_addresses: str | None = None
    devices: list[AllocatedDevice] = Field(default_factory=list)
    resources: ResourceAllocation | None = None
    domain: DomainStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class QatVirtualMachine(ApiModel):
    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: VmSpec
    status: VmStatus = Field(default_factory=VmStatus)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(
            namespace=self.metadata.get("namespace", ""),
            name=self.metadata.get("name", ""),
            uid=self.metadata.get("uid", ""),
        )
