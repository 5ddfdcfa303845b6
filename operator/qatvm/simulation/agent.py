"""`qatvm simulation agent`: `qatvm agent` on a simulated node, for the local cluster and kind.

The same agent, flags and all; only its node access differs: sysfs writes go through the
simulated kernel, and `--libvirt-uri qatvm-test:///PATH.xml` keeps the node's domains in PATH.
"""

from __future__ import annotations

import sys

from qatvm.agent import main as agent
from qatvm.simulation.access import SIMULATED


def main(argv: list[str] | None = None) -> int:
    return agent.main(argv, SIMULATED, prog="qatvm simulation agent")


if __name__ == "__main__":
    sys.exit(main())
