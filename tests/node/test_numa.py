"""NUMA discovery reads the kernel's files; capacity takes the host's reservation off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from qatvm.api.hugepages import PageSize
from qatvm.node.capacity import HostReservation, numa_capacity
from qatvm.node.numa import HostNumaNode, HugepagePool, read_numa_nodes
from qatvm.node.sysfs import HostSysfs, Sysfs
from qatvm.simulation import DEFAULT_PROFILE, HardwareProfile

MakeNode = Callable[..., Sysfs]
GIB = 1 << 30


def test_default_profile_is_two_sockets_with_pages_of_both_sizes(make_node: MakeNode) -> None:
    sysfs = make_node(DEFAULT_PROFILE)
    assert sysfs.read("devices/system/node/online") == "0-1"
    assert sysfs.read("devices/system/cpu/online") == "0-31"
    assert sysfs.read("devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages") == "8"
    assert sysfs.read("devices/system/node/node1/meminfo").splitlines()[0].split() == ["Node", "1", "MemTotal:", "33554432", "kB"]
    nodes = read_numa_nodes(sysfs)
    assert [(n.id, min(n.cpus), max(n.cpus), len(n.cpus), n.memory) for n in nodes] == [
        (0, 0, 15, 16, 32 * GIB), (1, 16, 31, 16, 32 * GIB),
    ]
    for node in nodes:
        assert node.hugepages == {PageSize.SIZE_2MI: HugepagePool(512, 512), PageSize.SIZE_1GI: HugepagePool(8, 8)}


def test_reads_a_tree_laid_out_as_a_real_kernel_prints_it(tmp_path: Path) -> None:
    # Copied in shape from a two-socket server: node dirs beside other entries, meminfo's
    # padding, only the 2 MiB pool present (no 1 GiB pages configured, no gigantic page support).
    node = tmp_path / "devices/system/node/node1"
    (node / "hugepages/hugepages-2048kB").mkdir(parents=True)
    (tmp_path / "devices/system/node/power").mkdir()
    (tmp_path / "devices/system/node/online").write_text("0-1\n")
    (node / "cpulist").write_text("8-15,24-31\n")
    (node / "meminfo").write_text(
        "Node 1 MemTotal:       65844396 kB\nNode 1 MemFree:        60123456 kB\nNode 1 HugePages_Total:   256\n"
    )
    (node / "hugepages/hugepages-2048kB/nr_hugepages").write_text("256\n")
    (node / "hugepages/hugepages-2048kB/free_hugepages").write_text("200\n")
    [found] = read_numa_nodes(HostSysfs(tmp_path))
    assert found.id == 1
    assert found.cpus == frozenset(range(8, 16)) | frozenset(range(24, 32))
    assert found.memory == 65844396 * 1024
    assert found.hugepages == {PageSize.SIZE_2MI: HugepagePool(256, 200), PageSize.SIZE_1GI: HugepagePool(0, 0)}


def test_a_kernel_without_numa_has_no_nodes(tmp_path: Path) -> None:
    assert read_numa_nodes(HostSysfs(tmp_path)) == []


def test_profile_refuses_overlapping_cpus_and_devices_on_missing_nodes() -> None:
    with pytest.raises(ValidationError, match=r"CPUs \[3\] belong to more than one NUMA node"):
        HardwareProfile.model_validate({"numa_nodes": [{"cpus": "0-3"}, {"cpus": "3-5"}]})
    with pytest.raises(ValidationError, match="sits on NUMA node 1, but the profile has 1"):
        HardwareProfile.model_validate({"numa_nodes": [{"cpus": "0-3"}], "pfs": [{"generation": "4xxx", "numa_node": 1}]})
    with pytest.raises(ValidationError, match="more than the node's memory"):
        HardwareProfile.model_validate({"numa_nodes": [{"cpus": "0", "memory": "4Gi", "hugepages": {"1Gi": 5}}]})


NODE = HostNumaNode(id=0, cpus=frozenset(range(8)), memory=16 * GIB,
                    hugepages={PageSize.SIZE_1GI: HugepagePool(4, 3), PageSize.SIZE_2MI: HugepagePool(512, 512)})


def test_default_reservation_keeps_the_first_cpu_and_1gi_of_each_numa_node() -> None:
    [capacity] = numa_capacity([NODE], HostReservation())
    assert (capacity.cpus, capacity.reserved_cpus) == ("1-7", "0")
    # 16 GiB less 4 GiB and 1 GiB of pools, less 1 GiB for the host.
    assert (capacity.memory, capacity.reserved_memory) == (10 * GIB, GIB)
    assert capacity.hugepages == {PageSize.SIZE_1GI: 4, PageSize.SIZE_2MI: 512}
    assert capacity.hugepages_free == {PageSize.SIZE_1GI: 3, PageSize.SIZE_2MI: 512}


def test_admin_reservation_is_taken_where_it_falls() -> None:
    other = HostNumaNode(id=1, cpus=frozenset(range(8, 16)), memory=2 * GIB, hugepages={})
    capacity = numa_capacity([NODE, other], HostReservation(cpus=frozenset({0, 1, 8}), memory_per_numa_node=4 * GIB))
    assert [(c.cpus, c.reserved_cpus) for c in capacity] == [("2-7", "0-1"), ("9-15", "8")]
    # The reservation cannot exceed what the NUMA node has.
    assert [(c.memory, c.reserved_memory) for c in capacity] == [(7 * GIB, 4 * GIB), (0, 2 * GIB)]
