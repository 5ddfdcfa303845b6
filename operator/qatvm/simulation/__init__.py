"""Simulated QAT hardware: a sysfs tree laid out as Linux lays it, and a kernel that reacts to writes.

`generate(profile, root)` writes the tree; `qatvm.node.sysfs.open_sysfs(root)` then returns
a sysfs whose writes go through `SimulatedKernel`. All state lives in the tree itself, so a
restarted process sees what the last one left.
"""

from qatvm.simulation.generator import generate
from qatvm.simulation.profile import DEFAULT_PROFILE, HardwareProfile, load_profile

__all__ = ["DEFAULT_PROFILE", "HardwareProfile", "generate", "load_profile"]
