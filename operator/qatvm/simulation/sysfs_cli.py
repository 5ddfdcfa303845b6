"""`qatvm simulation sysfs`: write a simulated node's sysfs tree for humans and the local cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from qatvm.simulation.generator import generate
from qatvm.simulation.profile import DEFAULT_PROFILE, load_profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qatvm simulation sysfs",
        description="Generate a simulated node: ROOT becomes its /sys (and ROOT/../dev its /dev). "
        "Point `qatvm inventory --sysfs-root ROOT` or `qatvm simulation agent --sysfs-root ROOT` at it.",
    )
    parser.add_argument("--profile", type=Path, help="hardware profile (YAML or JSON); default: two 4xxx PFs")
    parser.add_argument("--root", type=Path, help="directory to create (must be absent or empty)")
    parser.add_argument("--print-default-profile", action="store_true", help="print the default profile and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.print_default_profile:
        print(yaml.safe_dump(DEFAULT_PROFILE.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.root is None:
        parser.error("--root is required")
    try:
        profile = load_profile(args.profile) if args.profile else DEFAULT_PROFILE
        generate(profile, args.root)
    except (OSError, ValueError) as err:
        print(f"qatvm simulation sysfs: {err}", file=sys.stderr)
        return 1
    print(f"simulated node written to {args.root}")
    return 0
