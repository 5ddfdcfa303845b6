"""Where a VM's vCPUs run, from the controller's allocation and the node's own NUMA layout.

The controller picks dedicated CPUs (it alone sees every allocation, so two VMs never get the
same one) and records them in `status.resources`. The shared CPUs are the node's: a NUMA node's
CPUs (the host's reservation taken off) less every CPU any VM on the node holds as dedicated,
so they are computed here, from sysfs and the VMs this agent runs, each time a domain is defined.
"""

from __future__ import annotations

from qatvm.api.cpulist import parse_cpulist
from qatvm.api.vm import ResourceAllocation
from qatvm.domain.spec import HostPlacement
from qatvm.node.capacity import HostReservation
from qatvm.node.numa import read_numa_nodes
from qatvm.node.sysfs import Sysfs


def shared_cpus(sysfs: Sysfs, reservation: HostReservation, numa_node: int | None, dedicated: frozenset[int]) -> frozenset[int]:
    """CPUs of `numa_node` (None: of every NUMA node) that VMs share."""
    nodes = [n for n in read_numa_nodes(sysfs) if numa_node is None or n.id == numa_node]
    usable = frozenset().union(*(n.cpus - reservation.cpus_of(n) for n in nodes))
    return usable - dedicated


def host_placement(
    allocation: ResourceAllocation | None, sysfs: Sysfs, reservation: HostReservation, dedicated: frozenset[int]
) -> HostPlacement | None:
    """None when the VM floats: no NUMA node and no dedicated CPUs."""
    if allocation is None or (allocation.numa_node is None and not allocation.cpus):
        return None
    own = tuple(sorted(parse_cpulist(allocation.cpus))) if allocation.dedicated and allocation.cpus else ()
    return HostPlacement(
        host_node=allocation.numa_node,
        strict=allocation.strict,
        shared_cpus=shared_cpus(sysfs, reservation, allocation.numa_node, dedicated | frozenset(own)),
        dedicated_cpus=own,
    )
