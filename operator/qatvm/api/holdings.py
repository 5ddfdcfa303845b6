"""Add up what VMs hold of one node's CPUs and memory, per NUMA node, from their allocations."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from qatvm.api.cpulist import format_cpulist, parse_cpulist
from qatvm.api.hugepages import PageSize, pages_for
from qatvm.api.qatnode import Holdings
from qatvm.api.vm import ResourceAllocation


def hold(allocations: Iterable[ResourceAllocation]) -> tuple[dict[int, Holdings], Holdings]:
    """What the allocations hold of each NUMA node they are bound to, and of none in particular."""
    # Summed as plain numbers and sets, one Holdings each at the end: the controller adds up a
    # node's allocations for every VM it places there.
    vcpus: dict[int | None, int] = defaultdict(int)
    memory: dict[int | None, int] = defaultdict(int)
    hugepages: dict[int | None, Counter[PageSize]] = defaultdict(Counter)
    dedicated: dict[int | None, set[int]] = defaultdict(set)
    for allocation in allocations:
        key = allocation.numa_node
        vcpus[key] += allocation.vcpus
        if allocation.hugepage_size is None:
            memory[key] += allocation.memory_bytes
        else:
            hugepages[key][allocation.hugepage_size] += pages_for(allocation.memory_bytes, allocation.hugepage_size)
        if allocation.dedicated and allocation.cpus:
            dedicated[key] |= parse_cpulist(allocation.cpus)

    def of(key: int | None) -> Holdings:
        return Holdings(vcpus=vcpus[key], memory=memory[key], hugepages=dict(hugepages[key]),
                        dedicated_cpus=format_cpulist(dedicated[key]))

    return {key: of(key) for key in vcpus if key is not None}, of(None)
