"""The real kernel's NUMA layout, read by the code that reads every node's, and the simulated
one checked against it: the same files, in the same format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from guest_node import Node

from qatvm.node.numa import read_numa_nodes
from qatvm.node.sysfs import Sysfs
from qatvm.simulation import HardwareProfile

pytestmark = pytest.mark.realkernel

MakeNode = Callable[..., Sysfs]

READ = """
import json, os
from qatvm.node.numa import read_numa_nodes
from qatvm.node.sysfs import HostSysfs
root = "/sys/devices/system/node"
nodes = read_numa_nodes(HostSysfs())
print(json.dumps({
    "nodes": [{"id": n.id, "cpus": sorted(n.cpus), "memory": n.memory,
               "pools": {str(size): [p.total, p.free] for size, p in n.hugepages.items()}} for n in nodes],
    "entries": sorted(e for e in os.listdir(f"{root}/node0") if e in ("cpulist", "meminfo", "hugepages", "distance")),
    "pools": sorted(os.listdir(f"{root}/node0/hugepages")),
    "pool_files": sorted(os.listdir(f"{root}/node0/hugepages/hugepages-2048kB")),
    "online": open(f"{root}/online").read().strip(),
    "meminfo_head": open(f"{root}/node1/meminfo").read().splitlines()[0].split()[:3],
    "distance": open(f"{root}/node0/distance").read().split(),
}))
"""


@pytest.fixture(scope="module")
def real(node: Node) -> dict[str, Any]:
    return node.json(READ)  # type: ignore[no-any-return]


def test_discovery_reads_the_guests_two_numa_nodes(real: dict[str, Any]) -> None:
    assert [(n["id"], n["cpus"]) for n in real["nodes"]] == [(0, [0]), (1, [1])]
    # 1 GiB of RAM each, less what firmware and the kernel keep before MemTotal is counted.
    for n in real["nodes"]:
        assert 900 << 20 < n["memory"] <= 1 << 30, n
        assert n["pools"]["2Mi"] == [0, 0]
    assert real["online"] == "0-1"


def test_the_simulated_layout_has_the_real_ones_files_and_format(real: dict[str, Any], make_node: MakeNode) -> None:
    sysfs = make_node(HardwareProfile.model_validate({"numa_nodes": [{"cpus": "0"}, {"cpus": "1"}]}))
    root = "devices/system/node"
    assert sorted(e for e in sysfs.listdir(f"{root}/node0") if e in ("cpulist", "meminfo", "hugepages", "distance")) == real["entries"]
    # Real kernels list only the pools the CPU supports; the simulated x86-64 node has both sizes,
    # as a guest whose CPU has 1 GiB pages (pdpe1gb) does.
    assert set(real["pools"]) <= set(sysfs.listdir(f"{root}/node0/hugepages"))
    assert set(real["pool_files"]) >= set(sysfs.listdir(f"{root}/node0/hugepages/hugepages-2048kB"))
    assert sysfs.read(f"{root}/online") == real["online"]
    assert sysfs.read(f"{root}/node1/meminfo").splitlines()[0].split()[:3] == real["meminfo_head"]
    # Remote distances differ by machine (QEMU says 20, many two-socket servers 21); the shape may not.
    assert [d == "10" for d in sysfs.read(f"{root}/node0/distance").split()] == [d == "10" for d in real["distance"]]
    assert [(n.id, sorted(n.cpus)) for n in read_numa_nodes(sysfs)] == [(n["id"], n["cpus"]) for n in real["nodes"]]
