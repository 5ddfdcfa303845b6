"""`qatvm simulation`: a simulated QAT node, for the local cluster, tests and people trying qatvm."""

from __future__ import annotations

import sys

from qatvm.cli import dispatch

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sysfs": ("qatvm.simulation.sysfs_cli", "write a simulated sysfs tree from a hardware profile"),
    "agent": ("qatvm.simulation.agent", "run a node's agent on a simulated node (`qatvm agent`'s flags)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("qatvm simulation", SUBCOMMANDS, sys.argv[1:] if argv is None else argv)
