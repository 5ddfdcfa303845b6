"""Is this machine ready to pass QAT VFs to VMs? Each check says what it saw and what to fix.

Run before `qatvm local up --host-node` starts anything, so a person with a QAT server learns
every missing piece at once (firmware, kernel command line, modules, libvirt, SR-IOV, folders)
instead of one agent error at a time. Only reads: nothing on the machine is changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from qatvm.domain.spec import VirtType
from qatvm.node.devices import BY_PF_DEVICE, INTEL, VFIO_PCI, ExtraVfId
from qatvm.node.discovery import DEVICES, discover
from qatvm.node.sysfs import Sysfs

if TYPE_CHECKING:
    from qatvm.hypervisor import Hypervisor

# How many unassignable VFs a finding names before it summarises.
NAMED = 4


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    # What was seen, in a few words.
    detail: str
    # What to do about it; None when nothing needs doing.
    fix: str | None = None

    def lines(self) -> list[str]:
        mark = "ok  " if self.ok else "FAIL"
        return [f"{mark} {self.check}: {self.detail}"] + ([f"     fix: {self.fix}"] if self.fix else [])


@dataclass(frozen=True)
class HostPaths:
    """Node paths the agent will use, and the root they are under (`/` on a real machine)."""

    host_root: Path
    state_dir: PurePosixPath
    image_dirs: tuple[PurePosixPath, ...]

    def on_host(self, path: PurePosixPath) -> Path:
        return self.host_root.joinpath(*path.parts[1:])


def check_readiness(
    sysfs: Sysfs,
    paths: HostPaths,
    libvirt_uri: str,
    open_hypervisor: Callable[[str], Hypervisor],
    virt_type: VirtType,
    extra_vf_ids: Sequence[ExtraVfId] = (),
) -> list[Finding]:
    return [
        _driver_files(sysfs),
        _iommu(sysfs),
        _vfio(sysfs),
        _vfs(sysfs, extra_vf_ids),
        _libvirt(libvirt_uri, open_hypervisor),
        *([_kvm(sysfs)] if virt_type is VirtType.KVM else []),
        _state_dir(paths),
        *(_image_dir(paths, d) for d in paths.image_dirs),
    ]


def _driver_files(sysfs: Sysfs) -> Finding:
    probe = sysfs.path("bus/pci/drivers_probe")
    if os.access(probe, os.W_OK):
        return Finding("privileges", True, f"{probe} is writable")
    return Finding(
        "privileges", False, f"cannot write {probe}",
        "run as root: the agent moves VFs between drivers through sysfs and hands /dev/vfio to libvirt",
    )


def _iommu(sysfs: Sysfs) -> Finding:
    groups = sysfs.listdir("kernel/iommu_groups") if sysfs.exists("kernel/iommu_groups") else []
    if groups:
        return Finding("IOMMU", True, f"on ({len(groups)} IOMMU groups)")
    return Finding(
        "IOMMU", False, "off: the kernel made no IOMMU groups",
        "enable VT-d (AMD: AMD-Vi/IOMMU) in the firmware and boot with `intel_iommu=on iommu=pt` "
        "(add them to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot)",
    )


def _vfio(sysfs: Sysfs) -> Finding:
    if sysfs.exists(f"bus/pci/drivers/{VFIO_PCI}"):
        return Finding("vfio-pci", True, "loaded")
    return Finding(
        "vfio-pci", False, "the vfio-pci driver is not loaded",
        "`modprobe vfio-pci`; to load it at every boot: `echo vfio-pci > /etc/modules-load.d/vfio-pci.conf`",
    )


def _sriov_pfs_off(sysfs: Sysfs, extra_vf_ids: Sequence[ExtraVfId]) -> list[tuple[str, int]]:
    """SR-IOV capable PFs of a managed kind with no VF enabled, with their sriov_totalvfs."""
    extra = {(e.vendor, e.device) for e in extra_vf_ids}
    off = []
    for address in sysfs.listdir(DEVICES):
        dev = f"{DEVICES}/{address}"
        if not sysfs.exists(f"{dev}/sriov_totalvfs"):
            continue
        pci_id = (sysfs.read(f"{dev}/vendor").removeprefix("0x"), sysfs.read(f"{dev}/device").removeprefix("0x"))
        managed = (pci_id[0] == INTEL and pci_id[1] in BY_PF_DEVICE) or pci_id in extra
        if managed and int(sysfs.read(f"{dev}/sriov_numvfs")) == 0:
            off.append((address, int(sysfs.read(f"{dev}/sriov_totalvfs"))))
    return off


def _vfs(sysfs: Sysfs, extra_vf_ids: Sequence[ExtraVfId]) -> Finding:
    inventory = discover(sysfs, extra_vf_ids)
    off = _sriov_pfs_off(sysfs, extra_vf_ids)
    enable = "; ".join(f"`echo {total} > /sys/{DEVICES}/{address}/sriov_numvfs`" for address, total in off)
    assignable = [vf for vf in inventory.vfs if vf.assignable and vf.healthy]
    if not inventory.vfs:
        if off:
            return Finding(
                "VFs", False, f"SR-IOV is off on {', '.join(a for a, _ in off)}",
                f"enable VFs (as many as you want, up to the number shown): {enable}; "
                "the QAT driver's service (qat_service, qatmgr) may do this at boot",
            )
        return Finding(
            "VFs", False, "no QAT PF or VF on this machine",
            "check `lspci -d 8086:` for the QAT part and that its driver (4xxx, c6xx, ...) is loaded; "
            "another SR-IOV device is managed only with --extra-vf-ids VVVV:DDDD=NAME",
        )
    if not assignable:
        reasons = [f"{vf.pci_address}: {vf.reason}" for vf in inventory.vfs[:NAMED]]
        more = len(inventory.vfs) - NAMED
        return Finding(
            "VFs", False, f"{len(inventory.vfs)} VFs, none assignable",
            "; ".join(reasons) + (f"; and {more} more" if more > 0 else ""),
        )
    detail = f"{len(assignable)} of {len(inventory.vfs)} VFs assignable"
    return Finding("VFs", True, detail + (f"; SR-IOV is still off on {', '.join(a for a, _ in off)}" if off else ""))


def _libvirt(uri: str, open_hypervisor: Callable[[str], Hypervisor]) -> Finding:
    # Imported here: the other checks run on machines without libvirt's Python binding.
    from qatvm.hypervisor import HypervisorError

    try:
        open_hypervisor(uri).close()
    except HypervisorError as error:
        return Finding(
            "libvirt", False, str(error),
            "start libvirt (`systemctl enable --now libvirtd`, or virtqemud on split-daemon systems) "
            "or name another with --libvirt-uri",
        )
    return Finding("libvirt", True, f"{uri} answers")


def _kvm(sysfs: Sysfs) -> Finding:
    kvm = sysfs.dev_root / "kvm"
    if kvm.exists():
        return Finding("KVM", True, f"{kvm} is there")
    return Finding(
        "KVM", False, f"no {kvm}",
        "enable VT-x in the firmware and `modprobe kvm_intel`, or run VMs under software emulation "
        "with --virt-type qemu --cpu-mode maximum (slow)",
    )


def _state_dir(paths: HostPaths) -> Finding:
    target = paths.on_host(paths.state_dir)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if os.access(existing, os.W_OK) and existing.is_dir():
        return Finding("agent state directory", True, f"{paths.state_dir} is writable")
    return Finding(
        "agent state directory", False, f"{paths.state_dir} cannot be written ({existing} is read-only)",
        "give the agent a writable directory with --agent-state-dir DIR (it holds VM disks and binding records)",
    )


def _image_dir(paths: HostPaths, directory: PurePosixPath) -> Finding:
    if paths.on_host(directory).is_dir():
        return Finding("images directory", True, f"{directory} is there")
    return Finding(
        "images directory", False, f"{directory} does not exist",
        f"`mkdir -p {directory}` and put the base images VMs name in spec.image.path there, "
        "or name another with --image-dir",
    )
