"""A simulated Linux kernel: what sysfs writes do to a generated tree, and how they fail.

Each write is applied under a lock on the tree's root, like the kernel's device lock, so
several processes may share one simulated node. The kernel's own memory (the profile it
was booted with, and dynamic IDs added through `new_id`) is kept in the marker file, so a
restarted process finds the same kernel.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from pydantic import BaseModel, Field

from qatvm.node.devices import BY_PF_DEVICE, GENERATIONS, VFIO_DENYLIST_PARAM, VFIO_PCI, vfio_denylisted
from qatvm.node.sysfs import Sysfs
from qatvm.simulation.profile import HardwareProfile, check_services
from qatvm.simulation.tree import NO_OVERRIDE, VFIO_GROUP_MODE, Tree, bdf, devfn_of

PAGE_SIZE = 4096
# The kernel's memory, at the root of every simulated tree; it also tells a generated tree from
# an empty directory. A real sysfs cannot hold it (sysfs refuses to create files).
SIMULATION_MARKER = ".qatvm-simulated"


class KernelState(BaseModel):
    """What the simulated kernel remembers beyond the tree itself."""

    profile: HardwareProfile
    # PFs whose VFs share the PF's IOMMU group (no ACS between them).
    shared_group_pfs: list[str] = Field(default_factory=list)
    # driver -> "vvvv:dddd" IDs added through new_id.
    dynids: dict[str, list[str]] = Field(default_factory=dict)


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class SimulatedKernel:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = Tree(root)
        self._marker = root / SIMULATION_MARKER
        # The writable attributes and their store methods (driver, device and qat/ ones).
        self._store: dict[str, Callable[[str, str], None]] = {
            "bind": self._bind,
            "unbind": self._unbind,
            "new_id": self._new_id,
            "remove_id": self._remove_id,
            "driver_override": self._driver_override,
            "sriov_numvfs": self._sriov_numvfs,
            "sriov_drivers_autoprobe": self._sriov_autoprobe,
            "remove": self._remove,
            "qat/state": self._qat_state,
            "qat/cfg_services": self._qat_services,
        }

    # --- state -------------------------------------------------------------------------

    def load(self) -> KernelState:
        return KernelState.model_validate_json(self._marker.read_text())

    def save(self, state: KernelState) -> None:
        tmp = self._marker.with_name(self._marker.name + ".tmp")
        tmp.write_text(state.model_dump_json(indent=2))
        os.replace(tmp, self._marker)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- the one entry point -----------------------------------------------------------

    def write(self, rel: str, value: str) -> None:
        """Apply a write to `root/rel` as Linux would, raising OSError with Linux's errno."""
        with self._locked():
            path = self.root / rel
            if not os.path.exists(path):
                raise _fail(errno.ENOENT)
            parts = Path(os.path.realpath(path)).relative_to(os.path.realpath(self.root)).parts
            store = self._store_for(parts)
            # sysfs_kf_write() returns 0 for an empty write before calling store(): opening
            # for write is checked (above), but nothing changes. debugfs has no such rule.
            if value == "" and parts[:2] != ("kernel", "debug"):
                return
            store(value)

    def _store_for(self, parts: tuple[str, ...]) -> Callable[[str], None]:
        """The store method a write to `parts` reaches; EACCES if the file takes no writes."""
        if parts == ("bus", "pci", "drivers_probe"):
            return lambda value: self._drivers_probe(value.strip())
        if parts[:2] == ("kernel", "debug") and parts[-1] == "inject_error":
            return lambda _: self._inject_heartbeat_error(Path(self.root, *parts).parent)
        target, attr = None, None
        if parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5:
            target, attr = parts[3], parts[4]  # a driver
        elif parts[0] == "devices" and parts[-2] == "qat":
            target, attr = parts[-3], f"qat/{parts[-1]}"  # a QAT PF
        elif parts[0] == "devices":
            target, attr = parts[-2], parts[-1]  # a device
        handler = self._store.get(attr or "")
        if target is None or handler is None:
            # Read-only attributes refuse opening for write, even to root.
            raise _fail(errno.EACCES)
        return partial(handler, target)

    # --- driver core -------------------------------------------------------------------

    def _bind(self, driver: str, value: str) -> None:
        address = value.strip()
        if self.tree.device_dir(address) is None or not self._matches(driver, address):
            raise _fail(errno.ENODEV)
        self._probe(driver, address)

    def _unbind(self, driver: str, value: str) -> None:
        address = value.strip()
        if self.tree.device_dir(address) is None or self.tree.driver_of(address) != driver:
            raise _fail(errno.ENODEV)
        self._release(address)

    def _drivers_probe(self, address: str) -> None:
        if self.tree.device_dir(address) is None:
            raise _fail(errno.ENODEV)
        self._autoprobe(address)

    def _autoprobe(self, address: str) -> None:
        """Offer a driverless device to each loaded driver; a failing probe is only logged."""
        if self.tree.driver_of(address) is not None:
            return
        for driver in self.tree.loaded_drivers():
            if self._matches(driver, address):
                try:
                    self._probe(driver, address)
                    return
                except OSError:
                    continue

    def _matches(self, driver: str, address: str) -> bool:
        """pci_match_device: driver_override, when set, is the only driver that matches."""
        override = self.tree.attr(address, "driver_override")
        if override != NO_OVERRIDE:
            return override == driver
        pci_id = ":".join(self.tree.pci_id(address))
        state = self.load()
        return pci_id in state.dynids.get(driver, []) or pci_id in _static_ids(state.profile, driver)

    def _probe(self, driver: str, address: str) -> None:
        if self.tree.driver_of(address) is not None:
            raise _fail(errno.EBUSY)
        group = self.tree.group_of(address)
        if driver == VFIO_PCI:
            vendor, device = self.tree.pci_id(address)
            param = self.root / VFIO_DENYLIST_PARAM  # absent on kernels without the denylist
            if vfio_denylisted(vendor, device) and param.exists() and param.read_text().strip() != "Y":
                raise _fail(errno.EINVAL)
            if group is None:  # vfio_group_find_or_alloc: no IOMMU, no group
                raise _fail(errno.EINVAL)
            self.tree.vfio_node(str(group), VFIO_GROUP_MODE)
        self.tree.attach(address, driver)
        if driver in _QAT_PF_DRIVERS and self.tree.pci_id(address)[1] in BY_PF_DEVICE:
            self._qat_pf_up(address)

    def _release(self, address: str) -> None:
        """Detach the device from its driver, with the driver's remove() side effects."""
        driver = self.tree.driver_of(address)
        if driver in _QAT_PF_DRIVERS and self.tree.pci_id(address)[1] in BY_PF_DEVICE:
            self._disable_vfs(address)
            self._qat_pf_gone(address)
        self.tree.detach(address)
        group = self.tree.group_of(address)
        if driver == VFIO_PCI and group is not None:
            still_vfio = [m for m in self.tree.group_members(group) if self.tree.driver_of(m) == VFIO_PCI]
            if not still_vfio:
                (self.tree.vfio_dev / str(group)).unlink(missing_ok=True)

    def _new_id(self, driver: str, value: str) -> None:
        fields = value.split()
        if len(fields) < 2:
            raise _fail(errno.EINVAL)
        pci_id = f"{int(fields[0], 16):04x}:{int(fields[1], 16):04x}"
        state = self.load()
        ids = state.dynids.setdefault(driver, [])
        if pci_id in ids:
            raise _fail(errno.EEXIST)
        ids.append(pci_id)
        self.save(state)
        for address in sorted(os.listdir(self.tree.pci / "devices")):
            if self.tree.driver_of(address) is None and self._matches(driver, address):
                try:
                    self._probe(driver, address)
                except OSError:
                    continue

    def _remove_id(self, driver: str, value: str) -> None:
        fields = value.split()
        if len(fields) < 2:
            raise _fail(errno.EINVAL)
        pci_id = f"{int(fields[0], 16):04x}:{int(fields[1], 16):04x}"
        state = self.load()
        if pci_id not in state.dynids.get(driver, []):
            raise _fail(errno.ENODEV)
        state.dynids[driver].remove(pci_id)
        self.save(state)

    # --- per-device attributes ---------------------------------------------------------

    def _driver_override(self, address: str, value: str) -> None:
        # driver_set_override() keeps one byte for the newline that show() adds, so it refuses
        # PAGE_SIZE - 1 bytes and more, counted before the newline is cut.
        if len(value.encode()) >= PAGE_SIZE - 1:
            raise _fail(errno.EINVAL)
        # It takes the string up to a NUL (strlen) and then up to a newline; what is left
        # empty clears the override. Setting it never triggers a probe.
        override = value.split("\0", 1)[0].split("\n", 1)[0]
        Tree.put(self.tree.pci / "devices" / address / "driver_override", override or NO_OVERRIDE)

    def _sriov_numvfs(self, pf: str, value: str) -> None:
        wanted = _parse_int(value)
        if wanted < 0:
            raise _fail(errno.EINVAL)
        if wanted > int(self.tree.attr(pf, "sriov_totalvfs")):
            raise _fail(errno.ERANGE)
        current = int(self.tree.attr(pf, "sriov_numvfs"))
        if wanted == current:
            return
        if self.tree.driver_of(pf) is None:  # no driver, so no sriov_configure()
            raise _fail(errno.ENOENT)
        if wanted == 0:
            return self._disable_vfs(pf)
        if current:
            raise _fail(errno.EBUSY)  # "VFs already enabled. Disable before enabling"
        self._enable_vfs(pf, wanted)

    def _sriov_autoprobe(self, pf: str, value: str) -> None:
        if value.strip() not in ("0", "1"):
            raise _fail(errno.EINVAL)
        Tree.put(self.tree.pci / "devices" / pf / "sriov_drivers_autoprobe", value.strip())

    def _remove(self, address: str, value: str) -> None:
        if _parse_int(value) == 0:
            return
        if self.tree.driver_of(address) is not None:
            self._release(address)
        self._disable_vfs(address)
        self.tree.remove_device(address)

    # --- SR-IOV ------------------------------------------------------------------------

    def _enable_vfs(self, pf: str, count: int) -> None:
        pf_dir = self.tree.device_dir(pf)
        assert pf_dir is not None
        domain, bus, devfn = devfn_of(pf)
        offset, stride = int(self.tree.attr(pf, "sriov_offset")), int(self.tree.attr(pf, "sriov_stride"))
        # sriov_vf_device is printed unpadded; VF IDs are four digits everywhere else.
        pci_id = (self.tree.pci_id(pf)[0], f"{int(self.tree.attr(pf, 'sriov_vf_device'), 16):04x}")
        class_code = self.tree.attr(pf, "class")[2:]
        numa = int(self.tree.attr(pf, "numa_node"))
        pf_group = self.tree.group_of(pf)
        shared = pf in self.load().shared_group_pfs
        vfs = []
        for index in range(count):
            routing_id = devfn + offset + index * stride  # ARI: devfn overflows into the bus
            vf = bdf(domain, bus + routing_id // 256, routing_id % 256)
            self.tree.add_device(pf_dir.parent, vf, pci_id, class_code, numa)
            self.tree.link_vf(pf, index, vf)
            if pf_group is not None:
                self.tree.join_group(vf, pf_group if shared else self.tree.new_group())
            vfs.append(vf)
        Tree.put(pf_dir / "sriov_numvfs", str(count))
        if self.tree.attr(pf, "sriov_drivers_autoprobe") == "1":
            for vf in vfs:
                self._autoprobe(vf)

    def _disable_vfs(self, pf: str) -> None:
        pf_dir = self.tree.device_dir(pf)
        assert pf_dir is not None
        if not (pf_dir / "sriov_numvfs").exists():
            return
        for vf in reversed(self.tree.virtfns(pf)):
            if self.tree.driver_of(vf) is not None:
                self._release(vf)
            self.tree.remove_device(vf)
        Tree.put(pf_dir / "sriov_numvfs", "0")

    # --- the QAT driver ----------------------------------------------------------------

    def _qat_pf_up(self, pf: str) -> None:
        """What adf_probe leaves behind: qat/ attributes (gen4+) and the debugfs heartbeat."""
        pf_dir = self.tree.device_dir(pf)
        assert pf_dir is not None
        gen = BY_PF_DEVICE[self.tree.pci_id(pf)[1]]
        if gen.configurable_services:
            (pf_dir / "qat").mkdir()
            Tree.put(pf_dir / "qat" / "state", "up")
            Tree.put(pf_dir / "qat" / "cfg_services", "sym;asym")
        if self.tree.debugfs.is_dir():
            heartbeat = self.tree.debugfs / f"qat_{gen.pf_driver}_{pf}" / "heartbeat"
            heartbeat.mkdir(parents=True)
            for name, value in (("status", "0"), ("queries_sent", "0"), ("queries_fail", "0")):
                Tree.put(heartbeat / name, value)
            (heartbeat / "inject_error").touch()

    def _qat_pf_gone(self, pf: str) -> None:
        pf_dir = self.tree.device_dir(pf)
        assert pf_dir is not None
        shutil.rmtree(pf_dir / "qat", ignore_errors=True)
        gen = BY_PF_DEVICE[self.tree.pci_id(pf)[1]]
        shutil.rmtree(self.tree.debugfs / f"qat_{gen.pf_driver}_{pf}", ignore_errors=True)

    def _qat_state(self, pf: str, value: str) -> None:
        # adf's state_store refuses a no-op transition as well as an unknown word.
        if value.strip() not in ("up", "down") or value.strip() == self.tree.attr(pf, "qat/state"):
            raise _fail(errno.EINVAL)
        Tree.put(self.tree.pci / "devices" / pf / "qat" / "state", value.strip())

    def _qat_services(self, pf: str, value: str) -> None:
        if self.tree.attr(pf, "qat/state") != "down":
            raise _fail(errno.EINVAL)  # "must be down to reconfigure the service"
        gen = BY_PF_DEVICE[self.tree.pci_id(pf)[1]]
        try:
            check_services(value.strip(), gen.services or ())
        except ValueError:
            raise _fail(errno.EINVAL) from None
        Tree.put(self.tree.pci / "devices" / pf / "qat" / "cfg_services", value.strip())

    def _inject_heartbeat_error(self, heartbeat: Path) -> None:
        Tree.put(heartbeat / "status", "-1")


_QAT_PF_DRIVERS = frozenset(g.pf_driver for g in GENERATIONS)


def _static_ids(profile: HardwareProfile, driver: str) -> set[str]:
    """The IDs a driver's own id_table matches (vfio-pci and qat_vfio_pci: none)."""
    ids = {f"8086:{g.pf_device}" for g in GENERATIONS if g.pf_driver == driver}
    ids |= {f"8086:{vf}" for g in GENERATIONS if g.vf_driver == driver for vf in g.vf_devices}
    for nic in profile.nics:
        if nic.driver == driver:
            ids.add(f"{nic.vendor}:{nic.device}")
        if nic.vf_driver == driver:
            ids.add(f"{nic.vendor}:{nic.vf_device}")
    ids |= {f"{d.vendor}:{d.device}" for d in profile.devices if d.driver == driver}
    return ids


def _parse_int(value: str) -> int:
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise _fail(errno.EINVAL) from None


class SimulatedSysfs(Sysfs):
    """Sysfs over a generated tree; writes go through the simulated kernel."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.kernel = SimulatedKernel(root)

    def read(self, rel: str) -> str:
        # kernfs refuses to open an attribute without a read bit for reading, even to root;
        # on the disk under a simulated tree root would read it, so check the mode here.
        if not os.stat(self.file(rel)).st_mode & 0o444:
            raise _fail(errno.EACCES)
        return super().read(rel)

    def write(self, rel: str, value: str) -> None:
        self.kernel.write(rel, value)
