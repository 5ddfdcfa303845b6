"""How an agent reaches its node: the kernel's sysfs and the hypervisor.

A node agent reaches the host's own: sysfs as plain files (`HostSysfs`) and libvirt by URI.
Whoever runs an agent on something else (the local cluster on its simulated nodes) hands in
its own access; nothing here looks at the node to guess which it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qatvm.hypervisor import Hypervisor, open_hypervisor
from qatvm.node.sysfs import HostSysfs, Sysfs


@dataclass(frozen=True)
class NodeAccess:
    # The sysfs rooted at a path (the agent's `--sysfs-root`).
    sysfs: Callable[[Path], Sysfs] = HostSysfs
    # The hypervisor at a URI (the agent's `--libvirt-uri`).
    hypervisor: Callable[[str], Hypervisor] = open_hypervisor


HOST = NodeAccess()
