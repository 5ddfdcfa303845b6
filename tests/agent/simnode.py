"""A simulated node laid out as the local cluster does it, and VMs as the controller places them.

`host_root/sys` (generated hardware), `host_root/var/lib/qatvm` (the agent's state),
`host_root/hypervisor.xml` (libvirt's test driver, persisted) and a real qcow2 base image.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from qatvm.agent.config import AgentConfig
from qatvm.agent.reconciler import VmReconciler
from qatvm.api.qatnode import QatVf
from qatvm.api.vm import AllocatedDevice, QatVirtualMachine
from qatvm.hypervisor import Hypervisor
from qatvm.node.binding import VfBinder
from qatvm.node.discovery import discover
from qatvm.simulation import HardwareProfile, SimulatedSysfs, generate
from qatvm.simulation.hypervisor import open_hypervisor

NODE = "node-1"
BASE = "/var/lib/qatvm/images/base.qcow2"

# Two kinds of VF, so "given back to its previous driver" means something on both:
# gen4 VFs have no driver at all; c62x VFs start on the in-tree c6xxvf.
PROFILE: dict[str, Any] = {
    "disable_denylist": True,
    "pfs": [
        {"generation": "4xxx", "vfs": 4, "services": "sym;asym"},
        {"generation": "c62x", "vfs": 2},
    ],
}
GEN4_A, GEN4_B, GEN4_C, GEN4_D = "0000:10:00.1", "0000:10:00.2", "0000:10:00.3", "0000:10:00.4"
C62X_A, C62X_B = "0000:19:01.0", "0000:19:01.1"


class Node:
    """One simulated node's files, and agents (reconcilers) started on them."""

    def __init__(self, root: Path, profile: dict[str, Any]) -> None:
        self.root = root
        generate(HardwareProfile.model_validate(profile), root / "sys")
        image = root / BASE.lstrip("/")
        image.parent.mkdir(parents=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        self.config = AgentConfig(node=NODE, host_root=root, libvirt_uri=f"qatvm-test://{root}/hypervisor.xml")
        self.sysfs = SimulatedSysfs(root / "sys")
        self.vfs = {vf.pci_address: vf for vf in discover(self.sysfs).vfs}
        self._open: list[Hypervisor] = []

    def agent(self) -> VmReconciler:
        """A new agent process's view: fresh sysfs, binder and hypervisor objects on the same files.

        Earlier hypervisors are closed first: one connection at a time per state file, as one
        agent process per node."""
        self.close()
        hypervisor = open_hypervisor(self.config.libvirt_uri)
        self._open.append(hypervisor)
        binder = VfBinder(SimulatedSysfs(self.config.sysfs), self.config.state_dir / "binding")
        return VmReconciler(self.config, binder, hypervisor)

    def close(self) -> None:
        while self._open:
            self._open.pop().close()

    def driver(self, address: str) -> str | None:
        return self.sysfs.readlink(f"bus/pci/devices/{address}/driver")

    def vm(
        self,
        name: str,
        addresses: list[str],
        *,
        running: bool = True,
        user_data: str | None = None,
        node: str | None = NODE,
        namespace: str = "team-a",
        uid: str | None = None,
    ) -> QatVirtualMachine:
        """A VM as the agent receives it once the controller placed it: nodeName and devices set."""
        devices = [_allocated(self.vfs[a]) for a in addresses]
        body: dict[str, Any] = {
            "metadata": {"namespace": namespace, "name": name, "uid": uid or str(uuid.uuid4()), "generation": 1},
            "spec": {
                "running": running,
                "vcpus": 1,
                "memory": "64Mi",
                "qat": {"count": len(addresses)},
                "image": {"path": BASE},
                **({"cloudInit": {"userData": user_data}} if user_data is not None else {}),
            },
            "status": {"phase": "Scheduled", "nodeName": node, "devices": [d.wire() for d in devices]},
        }
        return QatVirtualMachine.model_validate(body)


def _allocated(vf: QatVf) -> AllocatedDevice:
    # What Scheduler._record writes for each chosen VF.
    return AllocatedDevice(
        pci_address=vf.pci_address, pf_address=vf.pf_address, device_id=vf.device_id,
        numa_node=vf.numa_node, iommu_group=vf.iommu_group, driver=vf.driver,
    )
