"""Read a node's NUMA layout from sysfs: each NUMA node's CPUs, memory and huge page pools.

Real nodes and simulated ones are read the same way, from `devices/system/node/node<N>/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qatvm.api.cpulist import parse_cpulist
from qatvm.api.hugepages import PageSize
from qatvm.node.sysfs import Sysfs

NODES = "devices/system/node"
_NODE_DIR = re.compile(r"^node(\d+)$")
_MEMTOTAL = re.compile(r"^Node \d+ MemTotal:\s+(\d+) kB$", re.MULTILINE)


@dataclass(frozen=True)
class HugepagePool:
    total: int
    free: int


@dataclass(frozen=True)
class HostNumaNode:
    id: int
    cpus: frozenset[int]
    memory: int
    # Only the sizes qatvm offers; a pool the kernel lacks reads as empty.
    hugepages: dict[PageSize, HugepagePool]

    @property
    def pooled(self) -> int:
        """Bytes held in huge page pools: not available as ordinary memory."""
        return sum(size.bytes * pool.total for size, pool in self.hugepages.items())


def read_numa_nodes(sysfs: Sysfs) -> list[HostNumaNode]:
    """Every NUMA node with CPUs or memory, by id; empty when the kernel has no NUMA support."""
    if not sysfs.exists(NODES):
        return []
    nodes = []
    for name in sysfs.listdir(NODES):
        match = _NODE_DIR.match(name)
        if match is None:
            continue
        path = f"{NODES}/{name}"
        meminfo = _MEMTOTAL.search(sysfs.read(f"{path}/meminfo"))
        if meminfo is None:
            raise ValueError(f"{sysfs.path(path)}/meminfo has no MemTotal line")
        nodes.append(
            HostNumaNode(
                id=int(match.group(1)),
                cpus=parse_cpulist(sysfs.read(f"{path}/cpulist")),
                memory=int(meminfo.group(1)) << 10,
                hugepages={size: _pool(sysfs, f"{path}/hugepages/{size.sysfs_dir}") for size in PageSize},
            )
        )
    return sorted(nodes, key=lambda n: n.id)


def _pool(sysfs: Sysfs, path: str) -> HugepagePool:
    if not sysfs.exists(path):
        return HugepagePool(total=0, free=0)
    return HugepagePool(total=int(sysfs.read(f"{path}/nr_hugepages")), free=int(sysfs.read(f"{path}/free_hugepages")))
