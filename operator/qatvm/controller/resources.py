"""Whether a VM's vCPUs, memory and huge pages fit what a node has left, and which CPUs it gets.

Pure functions of a node's published capacity (`QatNode` status `numa`) and the allocations the
controller itself has recorded in VM statuses (never the agent's counts, which lag behind).

Accounting is one vCPU to one host CPU (no overcommit), memory in bytes, huge pages per pool:

- a VM bound to a NUMA node (`qat.numa` prefer or require) takes from that NUMA node;
- a VM bound to none takes from the node as a whole, wherever the kernel puts it; so a bound
  VM must fit both its NUMA node and the node as a whole;
- `dedicatedCpus` takes exact CPUs that no other VM's dedicated CPUs include; VMs without it
  share the CPUs no VM holds as dedicated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qatvm.api.cpulist import format_cpulist, parse_cpulist
from qatvm.api.holdings import hold
from qatvm.api.hugepages import PageSize, pages_for
from qatvm.api.qatnode import NumaNodeCapacity
from qatvm.api.quantity import format_bytes
from qatvm.api.vm import ResourceAllocation, VmSpec


@dataclass(frozen=True)
class ResourceRequest:
    vcpus: int
    memory: int
    page_size: PageSize | None = None
    dedicated: bool = False

    @classmethod
    def of(cls, spec: VmSpec) -> ResourceRequest:
        return cls(
            vcpus=spec.vcpus,
            memory=spec.memory_bytes,
            page_size=spec.hugepages.page_size if spec.hugepages else None,
            dedicated=spec.dedicated_cpus,
        )

    @property
    def pages(self) -> int:
        return pages_for(self.memory, self.page_size) if self.page_size else 0


@dataclass(frozen=True)
class Left:
    """What one NUMA node (or a whole node) has left for new VMs."""

    cpus: int
    # CPUs no VM holds as dedicated: where a new dedicated VM may take its CPUs.
    undedicated: frozenset[int]
    memory: int
    pages: dict[PageSize, int]


@dataclass(frozen=True)
class NodeResources:
    numa: dict[int, Left]
    whole: Left


@dataclass(frozen=True)
class Shortfall:
    """One resource a VM needs more of than is left, with both numbers."""

    resource: str  # "CPU", "Memory" or "Hugepages": the reason is Insufficient<resource>
    needed: int
    left: int
    what: str  # "vCPUs", "dedicated CPUs", "memory", "huge pages of 1Gi"

    def describe(self, value: int) -> str:
        return format_bytes(value) if self.resource == "Memory" else str(value)


def left_on(capacity: list[NumaNodeCapacity], allocations: Iterable[ResourceAllocation]) -> NodeResources:
    """What a node has left once `allocations` (every VM placed on it) are taken off."""
    allocations = list(allocations)
    bound, unbound = hold(allocations)
    dedicated = frozenset().union(*(parse_cpulist(a.cpus) for a in allocations if a.dedicated and a.cpus))
    numa = {}
    for node in capacity:
        held = bound.get(node.id)
        numa[node.id] = Left(
            cpus=len(node.cpu_set) - (held.vcpus if held else 0),
            undedicated=node.cpu_set - dedicated,
            memory=node.memory - (held.memory if held else 0),
            pages={size: count - (held.hugepages.get(size, 0) if held else 0) for size, count in node.hugepages.items()},
        )
    everything = [*bound.values(), unbound]
    whole = Left(
        cpus=sum(len(n.cpu_set) for n in capacity) - sum(h.vcpus for h in everything),
        undedicated=frozenset().union(*(n.cpu_set for n in capacity)) - dedicated,
        memory=sum(n.memory for n in capacity) - sum(h.memory for h in everything),
        pages={size: sum(n.hugepages.get(size, 0) for n in capacity) - sum(h.hugepages.get(size, 0) for h in everything)
               for size in PageSize},
    )
    return NodeResources(numa=numa, whole=whole)


def shortfall(request: ResourceRequest, left: Left) -> Shortfall | None:
    """The first resource `left` lacks for `request`, or None when it fits."""
    if request.vcpus > left.cpus:
        return Shortfall("CPU", request.vcpus, left.cpus, "vCPUs")
    if request.dedicated and request.vcpus > len(left.undedicated):
        return Shortfall("CPU", request.vcpus, len(left.undedicated), "dedicated CPUs")
    if request.page_size is None:
        if request.memory > left.memory:
            return Shortfall("Memory", request.memory, left.memory, "memory")
        return None
    have = left.pages.get(request.page_size, 0)
    if request.pages > have:
        return Shortfall("Hugepages", request.pages, have, f"huge pages of {request.page_size}")
    return None


def fits(request: ResourceRequest, node: NodeResources, numa: int | None) -> Shortfall | None:
    """Why the request does not fit NUMA node `numa` of the node (None: the node as a whole)."""
    if numa is not None:
        if numa not in node.numa:
            return Shortfall("CPU", request.vcpus, 0, "vCPUs")
        short = shortfall(request, node.numa[numa])
        if short is not None:
            return short
    return shortfall(request, node.whole)


def allocate(request: ResourceRequest, node: NodeResources, numa: int | None, strict: bool) -> ResourceAllocation:
    """The allocation to record for a request that fits (`fits` returned None)."""
    cpus = None
    if request.dedicated:
        pool = node.numa[numa].undedicated if numa is not None else node.whole.undedicated
        # The highest-numbered CPUs: the host's housekeeping sits at the low end of each NUMA node.
        cpus = format_cpulist(sorted(pool)[-request.vcpus:])
    return ResourceAllocation(
        vcpus=request.vcpus,
        memory=format_bytes(request.memory),
        hugepage_size=request.page_size,
        numa_node=numa,
        cpus=cpus,
        dedicated=request.dedicated,
        strict=strict and numa is not None,
    )


def describe(allocation: ResourceAllocation) -> str:
    """A placement's CPUs and memory in the words of the Scheduled event (`NUMA node 1, CPUs 28-31`)."""
    where = f"NUMA node {allocation.numa_node}" + (" (strict)" if allocation.strict else "") if allocation.numa_node is not None else "no NUMA node"
    memory = f"{allocation.memory} of {allocation.hugepage_size} huge pages" if allocation.hugepage_size else allocation.memory
    cpus = f", dedicated CPUs {allocation.cpus}" if allocation.cpus else ""
    return f"{allocation.vcpus} vCPUs and {memory} on {where}{cpus}"
