"""`qatvm inventory`: what an admin sees of this node's QAT VFs and NUMA nodes, straight from sysfs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from qatvm.api.cpulist import format_cpulist
from qatvm.api.hugepages import PageSize
from qatvm.api.qatnode import QatNodeStatus, QatVf
from qatvm.api.quantity import format_bytes
from qatvm.node.capacity import HostReservation, numa_capacity
from qatvm.node.devices import ExtraVfId
from qatvm.node.discovery import NodeInventory, discover
from qatvm.node.numa import HostNumaNode, read_numa_nodes
from qatvm.node.sysfs import DEFAULT_ROOT, HostSysfs

COLUMNS = ("PF", "VF", "GENERATION", "SERVICES", "NUMA", "IOMMU GROUP", "DRIVER", "ASSIGNABLE", "HEALTH")
NUMA_COLUMNS = ("NUMA", "CPUS", "MEMORY", *(f"HUGEPAGES {size} FREE/TOTAL" for size in PageSize), "QAT VFS")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qatvm inventory", description=__doc__)
    parser.add_argument("--sysfs-root", type=Path, default=DEFAULT_ROOT, help="sysfs to read (default /sys)")
    parser.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table")
    parser.add_argument(
        "--extra-vf-ids",
        type=_extra_vf_ids,
        default=[],
        metavar="VVVV:DDDD[=NAME],...",
        help="more VF device IDs to report, e.g. 1b36:0010=qemu-nvme (NAME is shown as the generation)",
    )
    return parser


def _extra_vf_ids(text: str) -> list[ExtraVfId]:
    try:
        return ExtraVfId.parse_list(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's own words
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (args.sysfs_root / "bus" / "pci" / "devices").is_dir():
        print(f"qatvm inventory: {args.sysfs_root} is not a sysfs with PCI devices", file=sys.stderr)
        return 2
    sysfs = HostSysfs(args.sysfs_root)
    inventory = discover(sysfs, args.extra_vf_ids)
    numa = read_numa_nodes(sysfs)
    if args.output == "table":
        print(render_table(inventory, numa), end="")
        return 0
    # Nothing is reserved here: this is the node as the kernel shows it.
    nothing_kept = HostReservation(cpus=frozenset(), memory_per_numa_node=0)
    status = QatNodeStatus(vfs=inventory.vfs, numa=numa_capacity(numa, nothing_kept)).model_dump(by_alias=True, mode="json")
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        print(yaml.safe_dump(status, sort_keys=False), end="")
    return 0


def _row(vf: QatVf) -> tuple[str, ...]:
    return (
        vf.pf_address or "-",
        vf.pci_address,
        vf.generation,
        ";".join(vf.services) if vf.services else "-",
        str(vf.numa_node) if vf.numa_node is not None else "-",
        str(vf.iommu_group) if vf.iommu_group is not None else "-",
        vf.driver or "-",
        "yes" if vf.assignable else "no",
        "ok" if vf.healthy else "unhealthy",
    )


def _numa_row(node: HostNumaNode, vfs: list[QatVf]) -> tuple[str, ...]:
    pools = (f"{node.hugepages[size].free}/{node.hugepages[size].total}" for size in PageSize)
    return (str(node.id), format_cpulist(node.cpus), format_bytes(node.memory), *pools,
            str(sum(vf.numa_node == node.id for vf in vfs)))


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [columns, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_table(inventory: NodeInventory, numa: list[HostNumaNode] | None = None) -> str:
    lines = []
    if inventory.vfs:
        lines += _table(COLUMNS, [_row(vf) for vf in inventory.vfs])
    else:
        lines.append("No QAT VFs found.")

    notes = [f"{vf.pci_address}: {vf.reason}" for vf in inventory.vfs if vf.reason]
    notes += [
        f"{pf.address} ({pf.generation}): SR-IOV is off; enable VFs by writing a count to its sriov_numvfs"
        for pf in inventory.pfs
        if pf.vfs_enabled == 0
    ]
    if notes:
        lines += ["", *notes]
    lines.append("")
    if numa:
        lines += _table(NUMA_COLUMNS, [_numa_row(node, inventory.vfs) for node in numa])
    else:
        lines.append("No NUMA nodes found (the kernel has no devices/system/node).")
    return "\n".join(lines) + "\n"
