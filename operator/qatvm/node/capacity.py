"""What of a node's NUMA nodes VMs may use: the kernel's layout less what the host keeps back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qatvm.api.cpulist import format_cpulist
from qatvm.api.qatnode import Holdings, NumaNodeCapacity
from qatvm.node.numa import HostNumaNode


@dataclass(frozen=True)
class HostReservation:
    """CPUs and memory the host keeps for itself (kernel, kubelet, libvirt, QEMU's own threads)."""

    # None: the lowest-numbered CPU of each NUMA node, where the kernel's housekeeping lands.
    cpus: frozenset[int] | None = None
    memory_per_numa_node: int = 1 << 30

    def cpus_of(self, node: HostNumaNode) -> frozenset[int]:
        if self.cpus is None:
            return frozenset({min(node.cpus)}) if node.cpus else frozenset()
        return self.cpus & node.cpus


def numa_capacity(
    nodes: list[HostNumaNode], reservation: HostReservation, held: Mapping[int, Holdings] | None = None
) -> list[NumaNodeCapacity]:
    """Each NUMA node as the QatNode status shows it, with what `held` says VMs bound to it hold."""
    held = held or {}
    result = []
    for node in nodes:
        reserved = reservation.cpus_of(node)
        ordinary = max(node.memory - node.pooled, 0)
        kept = min(reservation.memory_per_numa_node, ordinary)
        result.append(
            NumaNodeCapacity(
                id=node.id,
                cpus=format_cpulist(node.cpus - reserved),
                reserved_cpus=format_cpulist(reserved),
                memory=ordinary - kept,
                reserved_memory=kept,
                hugepages={size: pool.total for size, pool in node.hugepages.items()},
                hugepages_free={size: pool.free for size, pool in node.hugepages.items()},
                allocated=held.get(node.id, Holdings()),
            )
        )
    return result
