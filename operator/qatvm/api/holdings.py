"""Add up what VMs hold of one node's CPUs and memory, per NUMA node, from their allocations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from qatvm.api.cpulist import format_cpulist, parse_cpulist
from qatvm.api.hugepages import pages_for
from qatvm.api.qatnode import Holdings
from qatvm.api.vm import ResourceAllocation


def _add(into: Holdings, allocation: ResourceAllocation) -> Holdings:
    hugepages = dict(into.hugepages)
    memory = into.memory
    if allocation.hugepage_size is None:
        memory += allocation.memory_bytes
    else:
        size = allocation.hugepage_size
        hugepages[size] = hugepages.get(size, 0) + pages_for(allocation.memory_bytes, size)
    dedicated = parse_cpulist(into.dedicated_cpus)
    if allocation.dedicated and allocation.cpus:
        dedicated |= parse_cpulist(allocation.cpus)
    return Holdings(vcpus=into.vcpus + allocation.vcpus, memory=memory, hugepages=hugepages,
                    dedicated_cpus=format_cpulist(dedicated))


def hold(allocations: Iterable[ResourceAllocation]) -> tuple[dict[int, Holdings], Holdings]:
    """What the allocations hold of each NUMA node they are bound to, and of none in particular."""
    bound: dict[int, Holdings] = defaultdict(Holdings)
    unbound = Holdings()
    for allocation in allocations:
        if allocation.numa_node is None:
            unbound = _add(unbound, allocation)
        else:
            bound[allocation.numa_node] = _add(bound[allocation.numa_node], allocation)
    return dict(bound), unbound
