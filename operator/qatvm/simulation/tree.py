"""Filesystem operations that lay out PCI devices, drivers and IOMMU groups as Linux's sysfs does.

Only structure lives here; when each operation happens (and what fails) is the simulated
kernel's business, in `kernel.py`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from qatvm.node.sysfs import dev_root

# Attributes of /sys/bus/pci/drivers/<driver>/ that drivers accept writes on.
DRIVER_FILES = ("bind", "unbind", "new_id", "remove_id")
NO_OVERRIDE = "(null)"  # what driver_override reads when unset (a NULL printed with %s)
# Linux's modes for the write-only attributes: DRIVER_ATTR_WO and BUS_ATTR_WO are 0200, a PCI
# device's `remove` is 0220. kernfs refuses to open a file with no read bit for reading, even
# to root, so the simulated Sysfs reads these modes to fail the same way.
WRITE_ONLY = 0o200
REMOVE_MODE = 0o220
# /dev/vfio/<group> is root's alone (devtmpfs' default 0600); /dev/vfio/vfio, the container,
# is open to everyone (vfio's devnode asks for 0666).
VFIO_GROUP_MODE = 0o600
VFIO_CONTAINER_MODE = 0o666


def bdf(domain: int, bus: int, devfn: int) -> str:
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def devfn_of(address: str) -> tuple[int, int, int]:
    domain, bus, slot_fn = address.split(":")
    slot, fn = slot_fn.split(".")
    return int(domain, 16), int(bus, 16), int(slot, 16) << 3 | int(fn)


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pci = root / "bus" / "pci"
        self.groups = root / "kernel" / "iommu_groups"
        self.debugfs = root / "kernel" / "debug"
        self.vfio_dev = dev_root(root) / "vfio"

    # --- reading -----------------------------------------------------------------------

    def device_dir(self, address: str) -> Path | None:
        link = self.pci / "devices" / address
        return Path(os.path.realpath(link)) if link.exists() else None

    def attr(self, address: str, name: str) -> str:
        return (self.pci / "devices" / address / name).read_text().rstrip("\n")

    def pci_id(self, address: str) -> tuple[str, str]:
        return self.attr(address, "vendor")[2:], self.attr(address, "device")[2:]

    def _link_name(self, link: Path) -> str | None:
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def driver_of(self, address: str) -> str | None:
        return self._link_name(self.pci / "devices" / address / "driver")

    def group_of(self, address: str) -> int | None:
        name = self._link_name(self.pci / "devices" / address / "iommu_group")
        return int(name) if name is not None else None

    def group_members(self, group: int) -> list[str]:
        return sorted(os.listdir(self.groups / str(group) / "devices"))

    def virtfns(self, pf: str) -> list[str]:
        """The PF's VFs in index order."""
        pf_dir = self.pci / "devices" / pf
        links = [n for n in os.listdir(pf_dir) if n.startswith("virtfn")]
        return [os.path.basename(os.readlink(pf_dir / n)) for n in sorted(links, key=lambda n: int(n[6:]))]

    def loaded_drivers(self) -> list[str]:
        return sorted(os.listdir(self.pci / "drivers"))

    # --- writing -----------------------------------------------------------------------

    @staticmethod
    def put(path: Path, value: str) -> None:
        path.write_text(value + "\n")

    @staticmethod
    def write_only(path: Path, mode: int = WRITE_ONLY) -> None:
        """An empty attribute that can only be written; chmod, so the umask cannot widen it."""
        path.touch()
        path.chmod(mode)

    def vfio_node(self, name: str, mode: int) -> None:
        """/dev/vfio/<name> as a regular file with the kernel's mode.

        Linux makes a character device. A simulated tree cannot honestly make one: a device
        node would point at whatever real driver owns its number, mknod needs CAP_MKNOD (not
        held by unprivileged users, nor in most containers), and nodev mounts refuse to open it.
        What the project and its tests rely on is that the node exists exactly while a member of
        the group is on vfio-pci, and that only root may open it (libvirt/QEMU open it, never
        our code), so a regular file with the same mode keeps both.
        """
        self.vfio_dev.mkdir(parents=True, exist_ok=True)
        (self.vfio_dev / name).touch()
        (self.vfio_dev / name).chmod(mode)

    @staticmethod
    def symlink(link: Path, target: Path) -> None:
        """A relative link, as sysfs makes them (`../../../bus/pci/drivers/4xxx`)."""
        link.symlink_to(os.path.relpath(target, link.parent))

    def skeleton(self, iommu: bool, debugfs: bool) -> None:
        (self.root / "devices").mkdir(parents=True)
        (self.pci / "devices").mkdir(parents=True)
        (self.pci / "drivers").mkdir()
        self.write_only(self.pci / "drivers_probe")
        (self.root / "module").mkdir()
        if iommu:
            self.groups.mkdir(parents=True)
        if debugfs:
            self.debugfs.mkdir(parents=True)

    def add_driver(self, name: str) -> None:
        path = self.pci / "drivers" / name
        path.mkdir()
        for attr in DRIVER_FILES:
            self.write_only(path / attr)

    def host_bridge(self, domain: int, bus: int) -> Path:
        path = self.root / "devices" / f"pci{domain:04x}:{bus:02x}"
        path.mkdir(exist_ok=True)
        return path

    def add_device(self, parent: Path, address: str, pci_id: tuple[str, str], class_code: str, numa_node: int) -> Path:
        path = parent / address
        path.mkdir()
        vendor, device = pci_id
        for name, value in (
            ("vendor", f"0x{vendor}"),
            ("device", f"0x{device}"),
            ("class", f"0x{class_code}"),
            ("numa_node", str(numa_node)),
            ("driver_override", NO_OVERRIDE),
        ):
            self.put(path / name, value)
        self.write_only(path / "remove", REMOVE_MODE)
        self.symlink(path / "subsystem", self.pci)
        self.symlink(self.pci / "devices" / address, path)
        return path

    def add_sriov(self, address: str, total: int, offset: int, stride: int, vf_device: str) -> None:
        path = self.pci / "devices" / address
        for name, value in (
            ("sriov_totalvfs", str(total)),
            ("sriov_numvfs", "0"),
            ("sriov_offset", str(offset)),
            ("sriov_stride", str(stride)),
            # The kernel prints it with %x: `10` for device 0010, unlike `device` (0x%04x).
            ("sriov_vf_device", f"{int(vf_device, 16):x}"),
            ("sriov_drivers_autoprobe", "1"),
        ):
            self.put(path / name, value)

    def link_vf(self, pf: str, index: int, vf: str) -> None:
        pf_dir, vf_dir = self.device_dir(pf), self.device_dir(vf)
        assert pf_dir is not None and vf_dir is not None
        self.symlink(pf_dir / f"virtfn{index}", vf_dir)
        self.symlink(vf_dir / "physfn", pf_dir)

    def new_group(self) -> int:
        taken = [int(n) for n in os.listdir(self.groups)]
        return max(taken, default=-1) + 1

    def join_group(self, address: str, group: int) -> None:
        path = self.device_dir(address)
        assert path is not None
        members = self.groups / str(group) / "devices"
        members.mkdir(parents=True, exist_ok=True)
        self.symlink(members / address, path)
        self.symlink(path / "iommu_group", self.groups / str(group))

    def attach(self, address: str, driver: str) -> None:
        path = self.device_dir(address)
        assert path is not None
        self.symlink(path / "driver", self.pci / "drivers" / driver)
        self.symlink(self.pci / "drivers" / driver / address, path)

    def detach(self, address: str) -> None:
        driver = self.driver_of(address)
        (self.pci / "devices" / address / "driver").unlink()
        (self.pci / "drivers" / str(driver) / address).unlink()

    def remove_device(self, address: str) -> None:
        """Take a driverless device out of every index, then out of the device tree."""
        path = self.device_dir(address)
        assert path is not None
        group = self.group_of(address)
        if group is not None:
            (self.groups / str(group) / "devices" / address).unlink()
            if not self.group_members(group):
                shutil.rmtree(self.groups / str(group))
        physfn = path / "physfn"
        if physfn.is_symlink():
            for link in physfn.resolve().iterdir():
                if link.name.startswith("virtfn") and link.resolve() == path:
                    link.unlink()
        (self.pci / "devices" / address).unlink()
        shutil.rmtree(path)
