"""Placement by CPUs, memory and huge pages, one rule each, on hand-made inventories."""

from __future__ import annotations

from qatvm.api.hugepages import PageSize
from qatvm.api.qatnode import NumaNodeCapacity, QatVf
from qatvm.api.vm import QatRequest, ResourceAllocation
from qatvm.controller.placement import NodeInventory, NoFit, Placement, place
from qatvm.controller.resources import ResourceRequest

GIB = 1 << 30


def vf(bus: int, fn: int, numa: int) -> QatVf:
    return QatVf(
        pci_address=f"0000:{bus:02x}:00.{fn}", pf_address=f"0000:{bus:02x}:00.0", device_id="4941",
        generation="4xxx", services=["sym", "asym"], numa_node=numa, iommu_group=bus * 100 + fn,
        healthy=True, assignable=True,
    )


def numa(id_: int, cpus: str, memory_gib: int, pages_1g: int = 0, pages_2m: int = 0) -> NumaNodeCapacity:
    return NumaNodeCapacity(id=id_, cpus=cpus, memory=memory_gib * GIB,
                            hugepages={PageSize.SIZE_1GI: pages_1g, PageSize.SIZE_2MI: pages_2m})


# The default simulated node after the default reservation: CPU 0 and 16 kept, 32 GiB less
# 8 GiB of 1 GiB pages less 1 GiB for the host on each NUMA node.
TWO_SOCKETS = (numa(0, "1-15", 23, pages_1g=8), numa(1, "17-31", 23, pages_1g=8))
TWO_PFS = (vf(0x10, 1, 0), vf(0x10, 2, 0), vf(0x18, 1, 1), vf(0x18, 2, 1))


def node(name: str, vfs: tuple[QatVf, ...] = TWO_PFS, capacity: tuple[NumaNodeCapacity, ...] = TWO_SOCKETS,
         *allocations: ResourceAllocation) -> NodeInventory:
    return NodeInventory(name=name, labels={}, vfs=vfs, capacity=capacity, allocations=allocations)


def want(vcpus: int = 2, memory_gib: float = 4, page: PageSize | None = None, dedicated: bool = False) -> ResourceRequest:
    return ResourceRequest(vcpus=vcpus, memory=int(memory_gib * GIB), page_size=page, dedicated=dedicated)


def held(numa_node: int | None, vcpus: int = 0, memory: str = "0", page: PageSize | None = None,
         cpus: str | None = None) -> ResourceAllocation:
    return ResourceAllocation(vcpus=vcpus, memory=memory, hugepage_size=page, numa_node=numa_node, cpus=cpus,
                              dedicated=cpus is not None)


def placed(result: Placement | NoFit) -> Placement:
    assert isinstance(result, Placement), result
    assert result.resources is not None
    return result


def test_fits_by_vfs_but_not_by_memory() -> None:
    result = place(QatRequest(count=1, numa="none"), {}, [node("n1")], set(), resources=want(memory_gib=47))
    assert isinstance(result, NoFit)
    assert result.reason == "InsufficientMemory"
    assert result.message == "needs 47Gi memory; no node could hold it even when idle (the largest has 46Gi)"
    assert result.never
    assert placed(place(QatRequest(count=1, numa="none"), {}, [node("n1")], set(), resources=want(memory_gib=46)))


def test_memory_held_by_placed_vms_counts_and_waiting_may_help() -> None:
    busy = node("n1", TWO_PFS, TWO_SOCKETS, held(None, 4, "40Gi"))
    result = place(QatRequest(count=1, numa="none"), {}, [busy], set(), resources=want(memory_gib=8))
    assert isinstance(result, NoFit) and not result.never
    # What others hold now is not told: only what does not move as they come and go.
    assert result.message == "needs 8Gi memory; no node with its VFs free has that free now (1 of 1 QAT nodes could hold it when idle)"


def test_require_fits_the_node_but_not_the_numa_node_of_the_vfs() -> None:
    # The dc VFs are on NUMA node 1 only, and NUMA node 1 is full; NUMA node 0 is empty.
    vfs = (vf(0x10, 1, 0), vf(0x18, 1, 1))
    full = node("n1", vfs, TWO_SOCKETS, held(1, 14, "20Gi"))
    only_1 = (vf(0x18, 1, 1),)
    result = place(QatRequest(count=1, numa="require"), {}, [node("n1", only_1, TWO_SOCKETS, held(1, 14, "20Gi"))], set(),
                   resources=want(vcpus=2))
    assert isinstance(result, NoFit)
    assert result.reason == "InsufficientCPU"
    assert result.message.startswith("needs 2 vCPUs on the NUMA node of its VFs; no node with its VFs free has that free now")
    assert not result.never
    # Given a VF on NUMA node 0 too, require takes that one and binds there, strictly.
    ok = placed(place(QatRequest(count=1, numa="require"), {}, [full], set(), resources=want(vcpus=2)))
    assert [v.numa_node for v in ok.vfs] == [0]
    assert ok.resources and (ok.resources.numa_node, ok.resources.strict, ok.resources.cpus) == (0, True, None)


def test_prefer_binds_where_the_vfs_are_and_falls_back_to_the_whole_node() -> None:
    only_1 = (vf(0x18, 1, 1),)
    roomy = placed(place(QatRequest(count=1, numa="prefer"), {}, [node("n1", only_1)], set(), resources=want()))
    assert roomy.resources and (roomy.resources.numa_node, roomy.resources.strict) == (1, False)
    crowded = node("n1", only_1, TWO_SOCKETS, held(1, 14, "20Gi"))
    fallback = placed(place(QatRequest(count=1, numa="prefer"), {}, [crowded], set(), resources=want(vcpus=2)))
    assert fallback.resources and fallback.resources.numa_node is None
    assert [v.pci_address for v in fallback.vfs] == ["0000:18:00.1"]


def test_a_vm_bound_to_no_numa_node_counts_against_every_bound_one() -> None:
    # 26 of 30 vCPUs float; a VM bound to NUMA node 0 (15 CPUs) cannot take 5 more.
    crowded = node("n1", TWO_PFS, TWO_SOCKETS, held(None, 26, "1Gi"))
    result = place(QatRequest(count=1, numa="require"), {}, [crowded], set(), resources=want(vcpus=5))
    assert isinstance(result, NoFit) and result.reason == "InsufficientCPU"
    assert placed(place(QatRequest(count=1, numa="require"), {}, [crowded], set(), resources=want(vcpus=4)))


def test_hugepages_of_both_sizes_come_from_their_own_pool() -> None:
    capacity = (numa(0, "1-15", 2, pages_1g=4, pages_2m=1024),)
    vfs = (vf(0x10, 1, 0), vf(0x10, 2, 0))
    one_gi = placed(place(QatRequest(count=1), {}, [node("n1", vfs, capacity)], set(),
                          resources=want(memory_gib=4, page=PageSize.SIZE_1GI)))
    assert one_gi.resources and one_gi.resources.hugepage_size is PageSize.SIZE_1GI
    # Four 1 GiB pages are held now: none left of that size, while 2 MiB pages and memory are untouched.
    after = node("n1", vfs, capacity, one_gi.resources)
    refused = place(QatRequest(count=1), {}, [after], set(), resources=want(memory_gib=1, page=PageSize.SIZE_1GI))
    assert isinstance(refused, NoFit) and refused.reason == "InsufficientHugepages"
    assert refused.message.startswith("needs 1 huge pages of 1Gi; no node with its VFs free has that free now")
    two_mi = placed(place(QatRequest(count=1), {}, [after], set(), resources=want(memory_gib=2, page=PageSize.SIZE_2MI)))
    assert two_mi.resources and two_mi.resources.hugepage_size is PageSize.SIZE_2MI
    # 2 GiB of 2 MiB pages is 1024 of them: the whole pool.
    fuller = node("n1", vfs, capacity, one_gi.resources, two_mi.resources)
    last = place(QatRequest(count=1), {}, [fuller], set(), resources=want(memory_gib=0.002, page=PageSize.SIZE_2MI))
    assert isinstance(last, NoFit) and last.reason == "InsufficientHugepages"
    # Ordinary memory (2 GiB) was never touched by the huge page VMs.
    assert placed(place(QatRequest(count=1), {}, [fuller], set(), resources=want(vcpus=1, memory_gib=2)))


def test_dedicated_cpus_are_exact_high_and_never_shared() -> None:
    first = placed(place(QatRequest(count=1, numa="require"), {}, [node("n1")], set(),
                         resources=want(vcpus=4, dedicated=True)))
    assert first.resources and (first.resources.numa_node, first.resources.cpus) == (0, "12-15")
    second = placed(place(QatRequest(count=1, numa="require"), {}, [node("n1", TWO_PFS, TWO_SOCKETS, first.resources)],
                          set(), resources=want(vcpus=4, dedicated=True)))
    assert second.resources and second.resources.cpus == "8-11"
    # A shared VM bound to NUMA node 0 is not pinned to exact CPUs: it floats over the undedicated ones.
    shared = placed(place(QatRequest(count=1, numa="require"), {},
                          [node("n1", TWO_PFS, TWO_SOCKETS, first.resources, second.resources)], set(), resources=want(vcpus=2)))
    assert shared.resources and shared.resources.cpus is None and not shared.resources.dedicated


def test_dedicated_needs_undedicated_cpus_not_just_a_count() -> None:
    capacity = (numa(0, "1-4", 8),)
    vfs = (vf(0x10, 1, 0), vf(0x10, 2, 0))
    taken = held(0, 3, "1Gi", cpus="2-4")
    result = place(QatRequest(count=1), {}, [node("n1", vfs, capacity, taken)], set(), resources=want(vcpus=2, dedicated=True))
    assert isinstance(result, NoFit) and result.reason == "InsufficientCPU"
    assert result.message.startswith("needs 2 vCPUs; no node with its VFs free has that free now")


def test_tenant_message_names_no_node() -> None:
    nodes = [node(f"secret-node-{i}", TWO_PFS, TWO_SOCKETS, held(None, 30, "1Gi")) for i in range(3)]
    result = place(QatRequest(count=1, numa="none"), {}, nodes, set(), resources=want(vcpus=1))
    assert isinstance(result, NoFit)
    assert "secret-node" not in result.message
    assert result.message == "needs 1 vCPUs; no node with its VFs free has that free now (3 of 3 QAT nodes could hold it when idle)"


def test_a_node_without_published_capacity_takes_nothing() -> None:
    result = place(QatRequest(count=1), {}, [node("n1", TWO_PFS, ())], set(), resources=want())
    assert isinstance(result, NoFit)
    assert result.message == "the QAT nodes that have its VFs have not published their CPUs and memory yet"
    assert not result.never  # an agent that publishes them changes the layout, and the VM is judged again


def test_pack_and_resources_together_pick_the_node_that_fits() -> None:
    small = node("a-small", TWO_PFS, (numa(0, "1-3", 2), numa(1, "5-7", 2)))
    big = node("b-big")
    result = placed(place(QatRequest(count=1), {}, [small, big], set(), resources=want(vcpus=7)))
    assert result.node == "b-big"
