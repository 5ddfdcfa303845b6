"""The host checks `qatvm local up --host-node` runs first, on simulated kernels in each state a
real machine can be in; each failure must say what to fix."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from qatvm.domain.spec import VirtType
from qatvm.hypervisor import open_hypervisor
from qatvm.node.devices import ExtraVfId
from qatvm.node.passthrough_readiness import Finding, HostPaths, check_readiness
from qatvm.node.sysfs import Sysfs

READY: dict[str, Any] = {"pfs": [{"generation": "4xxx", "vfs": 2}]}
IMAGES = PurePosixPath("/var/lib/qatvm/images")


def check(sysfs: Sysfs, *, uri: str = "test:///default", virt: VirtType = VirtType.QEMU,
          extra: str = "", images: bool = True) -> dict[str, Finding]:
    root = sysfs.root.parent
    if images:
        root.joinpath(*IMAGES.parts[1:]).mkdir(parents=True, exist_ok=True)
    paths = HostPaths(root, PurePosixPath("/var/lib/qatvm"), (IMAGES,))
    findings = check_readiness(sysfs, paths, uri, open_hypervisor, virt, ExtraVfId.parse_list(extra))
    return {f.check: f for f in findings}


def failed(findings: dict[str, Finding]) -> list[str]:
    return [name for name, f in findings.items() if not f.ok]


def test_a_ready_machine_passes_every_check(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node(READY))
    assert failed(findings) == []
    assert findings["VFs"].detail == "2 of 2 VFs assignable"
    assert findings["IOMMU"].detail.startswith("on (")
    assert "KVM" not in findings, "software emulation needs no /dev/kvm"


def test_iommu_off_names_the_kernel_switch(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node({**READY, "iommu": False}))
    assert failed(findings) == ["IOMMU", "VFs"]
    assert "intel_iommu=on" in (findings["IOMMU"].fix or "") and "VT-d" in (findings["IOMMU"].fix or "")
    # The VFs are there but useless, and say so each.
    assert "none assignable" in findings["VFs"].detail and "intel_iommu=on" in (findings["VFs"].fix or "")


def test_vfio_pci_not_loaded_says_modprobe(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node({**READY, "vfio_pci": False}))
    assert "vfio-pci" in failed(findings)
    assert "modprobe vfio-pci" in (findings["vfio-pci"].fix or "")


def test_sriov_off_says_how_to_enable_vfs(make_node: Callable[..., Sysfs]) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 0, "total_vfs": 16}]})
    findings = check(sysfs)
    assert failed(findings) == ["VFs"]
    pf = next(a for a in sysfs.listdir("bus/pci/devices") if sysfs.exists(f"bus/pci/devices/{a}/sriov_totalvfs"))
    assert f"`echo 16 > /sys/bus/pci/devices/{pf}/sriov_numvfs`" in (findings["VFs"].fix or "")


def test_a_machine_without_qat_says_so(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node({"nics": [{}]}))
    assert failed(findings) == ["VFs"]
    assert findings["VFs"].detail == "no QAT PF or VF on this machine"
    assert "--extra-vf-ids" in (findings["VFs"].fix or "")


def test_an_extra_sr_iov_device_with_sriov_off_is_found_by_its_id(make_node: Callable[..., Sysfs]) -> None:
    # As with QEMU's NVMe controller, whose PF and VFs share one ID.
    sysfs = make_node({"nics": [{"vfs": 0, "vf_device": "154c"}]})
    findings = check(sysfs, extra="8086:1572=nic")
    assert "SR-IOV is off on" in findings["VFs"].detail
    assert "sriov_numvfs" in (findings["VFs"].fix or "")


def test_unreachable_libvirt_says_how_to_start_it(make_node: Callable[..., Sysfs], tmp_path: Path) -> None:
    findings = check(make_node(READY), uri=f"qemu+unix:///system?socket={tmp_path}/no-such-socket")
    assert failed(findings) == ["libvirt"]
    assert "cannot connect to libvirt" in findings["libvirt"].detail
    assert "systemctl enable --now libvirtd" in (findings["libvirt"].fix or "")


def test_kvm_is_checked_only_for_kvm_domains(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node(READY), virt=VirtType.KVM)
    assert failed(findings) == ["KVM"]
    assert "--virt-type qemu" in (findings["KVM"].fix or "")


def test_a_missing_images_directory_says_mkdir(make_node: Callable[..., Sysfs]) -> None:
    findings = check(make_node(READY), images=False)
    assert failed(findings) == ["images directory"]
    assert f"`mkdir -p {IMAGES}`" in (findings["images directory"].fix or "")


def test_the_checks_change_nothing(make_node: Callable[..., Sysfs]) -> None:
    sysfs = make_node(READY)
    root = sysfs.root.parent
    before = subprocess.run(["find", str(root), "-printf", "%p %s %l\n"], capture_output=True, text=True).stdout
    check(sysfs, images=False, virt=VirtType.KVM)
    after = subprocess.run(["find", str(root), "-printf", "%p %s %l\n"], capture_output=True, text=True).stdout
    assert after == before
    assert not (root / "var/lib/qatvm").exists()
