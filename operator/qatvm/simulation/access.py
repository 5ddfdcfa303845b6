"""A simulated node as an agent reaches it: sysfs through the simulated kernel, and libvirt's test
driver kept in the node's file (`qatvm-test:///PATH.xml`) or any other libvirt URI."""

from __future__ import annotations

from qatvm.agent.access import NodeAccess
from qatvm.simulation.hypervisor import open_hypervisor
from qatvm.simulation.kernel import SimulatedSysfs

SIMULATED = NodeAccess(sysfs=SimulatedSysfs, hypervisor=open_hypervisor)
