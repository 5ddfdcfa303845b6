"""`qatvm inventory`: what an admin sees of this node's QAT VFs, straight from sysfs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from qatvm.api.qatnode import QatNodeStatus, QatVf
from qatvm.node.devices import ExtraVfId
from qatvm.node.discovery import NodeInventory, discover
from qatvm.node.sysfs import DEFAULT_ROOT, open_sysfs

COLUMNS = ("PF", "VF", "GENERATION", "SERVICES", "NUMA", "IOMMU GROUP", "DRIVER", "ASSIGNABLE", "HEALTH")


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
    inventory = discover(open_sysfs(args.sysfs_root), args.extra_vf_ids)
    if args.output == "table":
        print(render_table(inventory), end="")
        return 0
    status = QatNodeStatus(vfs=inventory.vfs).model_dump(by_alias=True, mode="json")
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


def render_table(inventory: NodeInventory) -> str:
    lines = []
    if inventory.vfs:
        rows = [COLUMNS, *(_row(vf) for vf in inventory.vfs)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
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
    return "\n".join(lines) + "\n"
