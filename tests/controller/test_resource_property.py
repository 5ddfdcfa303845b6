"""Whatever VMs arrive, placement never hands out more CPUs, memory or huge pages than a node has."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from qatvm.api.cpulist import format_cpulist, parse_cpulist
from qatvm.api.hugepages import PageSize, pages_for
from qatvm.api.qatnode import NumaNodeCapacity, QatVf
from qatvm.api.vm import NumaPolicy, QatRequest, ResourceAllocation
from qatvm.controller.placement import NodeInventory, Placement, place
from qatvm.controller.resources import ResourceRequest

MIB = 1 << 20


@st.composite
def nodes(draw: st.DrawFn) -> tuple[NodeInventory, ...]:
    result = []
    for n in range(draw(st.integers(1, 2))):
        capacity, vfs, first_cpu = [], [], 0
        for numa in range(draw(st.integers(1, 3))):
            width = draw(st.integers(1, 6))
            capacity.append(NumaNodeCapacity(
                id=numa, cpus=format_cpulist(range(first_cpu, first_cpu + width)),
                memory=draw(st.integers(0, 16)) * 512 * MIB,
                hugepages={PageSize.SIZE_1GI: draw(st.integers(0, 4)), PageSize.SIZE_2MI: draw(st.integers(0, 2048))},
            ))
            first_cpu += width
            bus = 0x10 + 8 * numa
            vfs += [QatVf(pci_address=f"0000:{bus:02x}:00.{fn}", pf_address=f"0000:{bus:02x}:00.0", device_id="4941",
                          generation="4xxx", numa_node=numa, iommu_group=bus * 10 + fn, healthy=True, assignable=True)
                    for fn in range(1, draw(st.integers(1, 4)) + 1)]
        result.append(NodeInventory(name=f"n{n}", labels={}, vfs=tuple(vfs), capacity=tuple(capacity)))
    return tuple(result)


vms = st.lists(
    st.tuples(
        st.builds(QatRequest, count=st.integers(1, 2), numa=st.sampled_from(list(NumaPolicy))),
        st.builds(ResourceRequest, vcpus=st.integers(1, 4), memory=st.integers(1, 8).map(lambda m: m * 256 * MIB),
                  page_size=st.none() | st.sampled_from(list(PageSize)), dedicated=st.booleans()),
    ),
    min_size=1, max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(nodes(), vms)
def test_placements_never_exceed_what_a_node_has(inventory: tuple[NodeInventory, ...], arrivals: list) -> None:  # type: ignore[type-arg]
    held: dict[str, list[tuple[Placement, ResourceAllocation]]] = {n.name: [] for n in inventory}
    taken: set[tuple[str, str]] = set()
    for qat, need in arrivals:
        current = [NodeInventory(n.name, n.labels, n.vfs, n.capacity, tuple(a for _, a in held[n.name])) for n in inventory]
        result = place(qat, {}, current, taken, resources=need)
        if not isinstance(result, Placement):
            continue
        assert result.resources is not None
        taken |= {(result.node, vf.pci_address) for vf in result.vfs}
        held[result.node].append((result, result.resources))
        numa_of_vfs = {vf.numa_node for vf in result.vfs}
        if qat.numa is NumaPolicy.REQUIRE:
            assert numa_of_vfs == {result.resources.numa_node} and result.resources.strict
        elif result.resources.numa_node is not None:
            assert numa_of_vfs == {result.resources.numa_node} and qat.numa is NumaPolicy.PREFER
    for node in inventory:
        allocations = [a for _, a in held[node.name]]
        by_id = {c.id: c for c in node.capacity}
        for numa, capacity in by_id.items():
            bound = [a for a in allocations if a.numa_node == numa]
            assert sum(a.vcpus for a in bound) <= len(capacity.cpu_set)
            assert sum(a.memory_bytes for a in bound if a.hugepage_size is None) <= capacity.memory
            for size in PageSize:
                assert sum(pages_for(a.memory_bytes, size) for a in bound if a.hugepage_size is size) <= capacity.hugepages[size]
        assert sum(a.vcpus for a in allocations) <= sum(len(c.cpu_set) for c in node.capacity)
        assert sum(a.memory_bytes for a in allocations if a.hugepage_size is None) <= sum(c.memory for c in node.capacity)
        dedicated = Counter(cpu for a in allocations if a.dedicated for cpu in parse_cpulist(a.cpus or ""))
        assert all(count == 1 for count in dedicated.values()), "a CPU dedicated to two VMs"
        for a in allocations:
            if a.dedicated:
                cpus = parse_cpulist(a.cpus or "")
                assert len(cpus) == a.vcpus
                home = by_id[a.numa_node].cpu_set if a.numa_node is not None else frozenset().union(*(c.cpu_set for c in node.capacity))
                assert cpus <= home
