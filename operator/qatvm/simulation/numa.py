"""Lay out a profile's NUMA nodes as Linux does under `devices/system/node/`.

The files are the kernel's: `node<N>/cpulist`, `node<N>/meminfo` (lines such as
`Node 0 MemTotal:       33554432 kB`) and one directory per huge page pool,
`node<N>/hugepages/hugepages-<size>kB/{nr,free,surplus}_hugepages`. Nothing else writes them
while the simulation runs: the test driver's domains take no host memory.
"""

from __future__ import annotations

from pathlib import Path

from qatvm.api.cpulist import format_cpulist, parse_cpulist
from qatvm.api.hugepages import PageSize
from qatvm.simulation.profile import NumaNodeSpec
from qatvm.simulation.tree import Tree

# What a freshly booted node's kernel itself holds of each NUMA node's memory.
KERNEL_KIB = 512 * 1024


def _meminfo(index: int, spec: NumaNodeSpec) -> str:
    total = spec.memory_bytes >> 10
    pooled = sum(size.kib * count for size, count in spec.hugepages.items())
    free = max(total - pooled - KERNEL_KIB, 0)
    default_pages = spec.hugepages.get(PageSize.SIZE_2MI, 0)
    rows = [
        ("MemTotal", f"{total} kB"),
        ("MemFree", f"{free} kB"),
        ("MemUsed", f"{total - free} kB"),
        # The node's meminfo counts only the default pool (2 MiB on x86-64).
        ("HugePages_Total", str(default_pages)),
        ("HugePages_Free", str(default_pages)),
        ("HugePages_Surp", "0"),
    ]
    return "\n".join(f"Node {index} {name + ':':<16}{value:>14}" for name, value in rows)


def write_numa_nodes(sysfs_root: Path, nodes: list[NumaNodeSpec]) -> None:
    system = sysfs_root / "devices" / "system"
    ids = format_cpulist(range(len(nodes)))
    node_dir = system / "node"
    node_dir.mkdir(parents=True)
    for name in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory"):
        Tree.put(node_dir / name, ids)
    every_cpu: set[int] = set()
    for index, spec in enumerate(nodes):
        cpus = parse_cpulist(spec.cpus)
        every_cpu |= cpus
        path = node_dir / f"node{index}"
        path.mkdir()
        Tree.put(path / "cpulist", format_cpulist(cpus))
        Tree.put(path / "meminfo", _meminfo(index, spec))
        Tree.put(path / "distance", " ".join("10" if other == index else "21" for other in range(len(nodes))))
        for size in PageSize:
            pool = path / "hugepages" / size.sysfs_dir
            pool.mkdir(parents=True)
            count = str(spec.hugepages.get(size, 0))
            Tree.put(pool / "nr_hugepages", count)
            Tree.put(pool / "free_hugepages", count)
            Tree.put(pool / "surplus_hugepages", "0")
    cpu_dir = system / "cpu"
    cpu_dir.mkdir()
    for name in ("online", "possible", "present"):
        Tree.put(cpu_dir / name, format_cpulist(every_cpu))
