"""The simulation stays apart from production code: only whoever runs code on a simulated node
plugs it in, and nothing in production looks at a tree to guess that it is simulated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qatvm.node.discovery import discover
from qatvm.node.inventory_cli import render_table
from qatvm.node.numa import read_numa_nodes
from qatvm.node.sysfs import HostSysfs, Sysfs
from qatvm.simulation import DEFAULT_PROFILE, SimulatedSysfs, generate

VF = "0000:10:00.1"  # the default profile's first VF: gen4, on no driver


def test_production_modules_never_import_the_simulation() -> None:
    code = (
        "import sys\n"
        "import qatvm.agent.main, qatvm.node.sysfs, qatvm.node.inventory_cli, qatvm.hypervisor, qatvm.controller.main\n"
        "print(sorted(m for m in sys.modules if m.startswith('qatvm.simulation')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def _bind_to_vfio(sysfs: Sysfs) -> None:
    sysfs.write(f"bus/pci/devices/{VF}/driver_override", "vfio-pci")
    sysfs.write("bus/pci/drivers_probe", VF)


def test_production_reads_a_simulated_tree_as_plain_files(tmp_path: Path) -> None:
    """Read, a simulated tree looks the same either way (so `qatvm inventory` may list one);
    written through production's sysfs, it is files that change and a kernel that never hears."""
    generate(DEFAULT_PROFILE, tmp_path / "sys")
    host, simulated = HostSysfs(tmp_path / "sys"), SimulatedSysfs(tmp_path / "sys")
    assert render_table(discover(host), read_numa_nodes(host)) == render_table(
        discover(simulated), read_numa_nodes(simulated)
    )

    _bind_to_vfio(host)
    assert host.read(f"bus/pci/devices/{VF}/driver_override") == "vfio-pci"
    assert simulated.readlink(f"bus/pci/devices/{VF}/driver") is None

    _bind_to_vfio(simulated)
    assert simulated.readlink(f"bus/pci/devices/{VF}/driver") == "vfio-pci"
