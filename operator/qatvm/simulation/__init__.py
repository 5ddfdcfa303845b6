"""Simulated QAT hardware: a sysfs tree laid out as Linux lays it, and a kernel that reacts to writes.

`generate(profile, root)` writes the tree; `SimulatedSysfs(root)` is then a sysfs whose writes
go through `SimulatedKernel`. All state lives in the tree itself, so a restarted process sees
what the last one left. Production code never imports this package: whoever runs it on a
simulated node hands it the simulation's sysfs and hypervisor (`qatvm.simulation.access`).
"""

from qatvm.simulation.generator import generate
from qatvm.simulation.kernel import SIMULATION_MARKER, SimulatedSysfs
from qatvm.simulation.profile import DEFAULT_PROFILE, HardwareProfile, load_profile

__all__ = ["DEFAULT_PROFILE", "SIMULATION_MARKER", "HardwareProfile", "SimulatedSysfs", "generate", "load_profile"]
