"""Everything an agent needs to know about its node, as one typed value."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, model_validator

from qatvm.domain.spec import CpuMode, VirtType
from qatvm.node.capacity import HostReservation
from qatvm.node.devices import ExtraVfId
from qatvm.node.images import DEFAULT_IMAGE_DIR, ImagePolicy


# The agent's own files on the node: binding records, VM overlays and cloud-init seeds.
STATE_DIR = PurePosixPath("/var/lib/qatvm")


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    node: str
    # The node's root filesystem: `/` on a real node, `DIR/nodes/<node>` on a simulated one.
    # VM image paths, sysfs (`sys/`) and the agent's own files (`var/lib/qatvm/`) live under it.
    host_root: Path = Path("/")
    sysfs_root: Path | None = None
    libvirt_uri: str = "qemu:///system"
    virt_type: VirtType = VirtType.KVM
    cpu_mode: CpuMode = CpuMode.HOST_PASSTHROUGH
    extra_vf_ids: tuple[ExtraVfId, ...] = ()
    # How often sysfs is read again for VFs that appear, vanish or turn unhealthy.
    scan_seconds: float = 5.0
    # How often everything the node holds is checked against a fresh LIST of its VMs, by UID.
    audit_seconds: float = 30.0
    # A node path (under host_root): where the node keeps the agent's files. Moved where the
    # default is not writable (a read-only root) or not where the admin wants VM disks.
    state_path: PurePosixPath = STATE_DIR
    # Node paths; the only places `spec.image.path` (and every backing file) may resolve into.
    image_dirs: tuple[PurePosixPath, ...] = (DEFAULT_IMAGE_DIR,)
    # What VMs may never have of the node's CPUs and memory.
    reservation: HostReservation = HostReservation()
    # The node lease: how long one renewal vouches for the node, and how often it is renewed.
    lease_seconds: int = 40
    lease_renew_seconds: float = 10.0

    @model_validator(mode="after")
    def _image_dirs_spare_the_state(self) -> AgentConfig:
        self.images.check_config()
        return self

    @property
    def sysfs(self) -> Path:
        return self.sysfs_root or self.host_root / "sys"

    @property
    def state_dir(self) -> Path:
        return self.host_root / self.state_path.relative_to("/")

    @property
    def images(self) -> ImagePolicy:
        return ImagePolicy(self.host_root, self.image_dirs, self.state_path)
