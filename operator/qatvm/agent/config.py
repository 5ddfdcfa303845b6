"""Everything an agent needs to know about its node, as one typed value."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from qatvm.domain.spec import CpuMode, VirtType
from qatvm.node.devices import ExtraVfId


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

    @property
    def sysfs(self) -> Path:
        return self.sysfs_root or self.host_root / "sys"

    @property
    def state_dir(self) -> Path:
        return self.host_root / "var/lib/qatvm"

    def on_host(self, path: str) -> Path:
        """A path as the node sees it (`/var/lib/images/x.qcow2`) under the host root."""
        return self.host_root / path.lstrip("/")
