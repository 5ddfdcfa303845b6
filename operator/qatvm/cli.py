"""The `qatvm` command: one entry point, each subcommand implemented where its work lives."""

from __future__ import annotations

import importlib
import sys

# Subcommand -> (module, help). Modules are imported only when their subcommand runs, so
# `qatvm inventory` on a node does not pay for Kubernetes or libvirt imports.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "build": ("qatvm.controlplane.binaries", "build the control plane's Go binaries into the cache"),
    "local": ("qatvm.local.cluster", "run a local cluster: up, down, status"),
    "controller": ("qatvm.controller.main", "run the scheduler (one active per cluster)"),
    "agent": ("qatvm.agent.main", "run a node's agent: inventory, VF binding, libvirt domains"),
    "inventory": ("qatvm.node.inventory_cli", "list this node's QAT VFs"),
    "simulation": ("qatvm.simulation.cli", "a simulated QAT node: write its sysfs tree, run its agent"),
}


def _usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    lines = [f"usage: {prog} COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in commands.items()]
    lines += ["", f"`{prog} COMMAND --help` explains each command."]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str]], args: list[str]) -> int:
    """Run the `main(argv)` of the module `args[0]` names, with the rest of `args`."""
    if not args or args[0] in ("-h", "--help"):
        print(_usage(prog, commands))
        return 0 if args else 2
    entry = commands.get(args[0])
    if entry is None:
        print(f"{prog}: unknown command {args[0]!r}\n\n{_usage(prog, commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        from qatvm import __version__

        print(f"qatvm {__version__}")
        return 0
    return dispatch("qatvm", SUBCOMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
