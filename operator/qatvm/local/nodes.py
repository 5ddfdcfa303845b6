"""A simulated node on disk: a small root filesystem the node's agent treats as `/`.

`DIR/nodes/<node>/` holds `sys/` (the simulated sysfs, written once from the hardware profile
and then changed only by the simulated kernel), `dev/vfio/`, `var/lib/qatvm/images/base.qcow2`
(the base image the examples name, in the agent's default image directory: a node path such as
`/var/lib/qatvm/images/x` means `DIR/nodes/<node>/var/lib/qatvm/images/x`, and nothing outside
`DIR/nodes/<node>/` is reachable as an image), `var/lib/qatvm/` (the agent's state) and `hypervisor.xml`
(the node's libvirt test driver state, so domains outlive an agent restart).

Its agent is `qatvm simulation agent` (`AGENT`): the production agent handed the simulation's
sysfs and hypervisor, as a process or as the agent container's command on a real kubelet.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from qatvm.node.images import DEFAULT_IMAGE_DIR
from qatvm.simulation import SIMULATION_MARKER, HardwareProfile, generate

# In the agent's default image directory: the only place its VMs' images may come from.
BASE_IMAGE = (DEFAULT_IMAGE_DIR / "base.qcow2").relative_to("/")
BASE_IMAGE_SIZE = "64M"
# The qatvm subcommand of a simulated node's agent.
AGENT = ("simulation", "agent")


@dataclass(frozen=True)
class SimulatedNode:
    name: str
    root: Path

    @property
    def sysfs(self) -> Path:
        return self.root / "sys"

    @property
    def libvirt_uri(self) -> str:
        return f"qatvm-test://{self.root / 'hypervisor.xml'}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "agent.kubeconfig"

    def prepare(self, profile: HardwareProfile) -> None:
        """Lay the node out once; an existing node keeps its state (bound VFs, domains, disks)."""
        if not (self.sysfs / SIMULATION_MARKER).exists():
            generate(profile, self.sysfs)
        image = self.root / BASE_IMAGE
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(image), BASE_IMAGE_SIZE],
                check=True, capture_output=True, text=True, timeout=60,
            )
