"""Move a VF to vfio-pci and back, following the recipe in anchors.md, on any `Sysfs`.

The driver a VF had before its first bind is written to a small record under `state_dir`
before anything is unbound, and `release` restores exactly that driver. The record also names
the VM it was bound for (namespace, name, UID): a VF recorded for one VM is never bound for
another, and a VM's removal gives back only the VFs recorded for its UID. The record is
needed because the kernel cannot be asked for it: gen4+ VFs have no in-tree driver, so a
VF may have had none, or a driver that only binds through driver_override (qat_vfio_pci),
which `drivers_probe` would never pick again. Without a record (state lost), `release`
falls back to the anchors' recipe and lets `drivers_probe` choose.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pydantic import BaseModel

from qatvm.api.base import ObjectRef
from qatvm.node.devices import BY_PF_DEVICE, BY_VF_DEVICE, VFIO_DENYLIST_PARAM, VFIO_PCI, vfio_denylisted
from qatvm.node.sysfs import Sysfs

DEFAULT_STATE_DIR = Path("/var/lib/qatvm/binding")
CLEAR_OVERRIDE = "\n"
VFIO_BIND = f"bus/pci/drivers/{VFIO_PCI}/bind"


class BindingError(Exception):
    """A VF could not be moved between drivers; the message says what to fix."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"{address}: {message}")
        self.address = address


class DeviceVanishedError(BindingError):
    def __init__(self, address: str) -> None:
        super().__init__(address, "the device is gone from sysfs (removed, or SR-IOV disabled on its PF)")


class VfioNotLoadedError(BindingError):
    def __init__(self, address: str) -> None:
        super().__init__(address, "the vfio-pci driver is not loaded: run `modprobe vfio-pci`")


class IommuOffError(BindingError):
    def __init__(self, address: str) -> None:
        super().__init__(
            address,
            "the device has no IOMMU group, so the IOMMU is off: boot with intel_iommu=on "
            "(and enable VT-d in the firmware)",
        )


class DenylistedError(BindingError):
    def __init__(self, address: str, part: str) -> None:
        super().__init__(
            address,
            f"vfio-pci refuses {part} devices by default: load it with disable_denylist=1 "
            "(`modprobe -r vfio-pci && modprobe vfio-pci disable_denylist=1`)",
        )


class DeviceBusyError(BindingError):
    def __init__(self, address: str, driver: str | None) -> None:
        super().__init__(address, f"another driver ({driver or 'unknown'}) claimed the device meanwhile; retry")


class BindFailedError(BindingError):
    """The kernel refused for a reason sysfs does not show, or the driver link did not follow."""


class HeldByAnotherError(BindingError):
    """The VF is recorded as bound for another VM, which has not given it back yet."""

    def __init__(self, address: str, holder: ObjectRef) -> None:
        super().__init__(
            address,
            f"still held by VM {holder.namespace}/{holder.name} (uid {holder.uid}); it is bound for "
            "another VM only once that VM's domain is gone and the VF is back with its host driver",
        )
        self.holder = holder


def vfio_blocker(sysfs: Sysfs, address: str) -> BindingError | None:
    """Why vfio-pci would refuse this device right now, or None if nothing visible stops it."""
    dev = f"bus/pci/devices/{address}"
    if not sysfs.exists(dev):
        return DeviceVanishedError(address)
    if not sysfs.exists(f"bus/pci/drivers/{VFIO_PCI}"):
        return VfioNotLoadedError(address)
    if sysfs.readlink(f"{dev}/iommu_group") is None:
        return IommuOffError(address)
    vendor, device = sysfs.read(f"{dev}/vendor")[2:], sysfs.read(f"{dev}/device")[2:]
    # Kernels before the denylist have no such parameter, and no denylist either.
    if vfio_denylisted(vendor, device) and sysfs.exists(VFIO_DENYLIST_PARAM) and sysfs.read(VFIO_DENYLIST_PARAM) != "Y":
        gen = BY_VF_DEVICE.get(device) or BY_PF_DEVICE[device]
        return DenylistedError(address, gen.name)
    return None


class BindingRecord(BaseModel):
    address: str
    previous_driver: str | None
    # The VM the VF was bound for; None for a bind made outside a VM (a tool, a test) and for
    # records written before owners were recorded.
    owner: ObjectRef | None = None


class VfBinder:
    def __init__(self, sysfs: Sysfs, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.sysfs = sysfs
        self.state_dir = state_dir

    def bind_to_vfio(self, address: str, owner: ObjectRef | None = None) -> None:
        """Leave the device bound to vfio-pci for `owner` with driver_override cleared; idempotent.
        Refuses a VF recorded for another VM (HeldByAnotherError) before touching anything."""
        record = self._load(address)
        if record is not None and record.owner is not None and owner is not None and record.owner.uid != owner.uid:
            raise HeldByAnotherError(address, record.owner)
        current = self._driver(address)
        if current != VFIO_PCI:
            blocker = vfio_blocker(self.sysfs, address)
            if blocker is not None:
                raise blocker
        # An existing record is older than this attempt and names the true original driver;
        # one bound before we ever touched it (an admin pre-bound it) is left there by release.
        if record is None:
            self._save(BindingRecord(address=address, previous_driver=current, owner=owner))
        elif record.owner is None and owner is not None:
            self._save(record.model_copy(update={"owner": owner}))
        if current == VFIO_PCI:
            self._clear_override(address)
            return
        try:
            if current is not None:
                self._write(address, f"bus/pci/drivers/{current}/unbind", address)
            self._write(address, f"bus/pci/devices/{address}/driver_override", VFIO_PCI)
            self._write(address, VFIO_BIND, address)
            self._confirm(address, VFIO_PCI)
        except BindingError as failure:
            self._roll_back(address, failure)
            raise
        self._clear_override(address)

    def release(self, address: str, owner_uid: str | None = None) -> None:
        """Give the device back to the driver it had before `bind_to_vfio`; idempotent. With
        `owner_uid`, only a VF recorded for that VM is given back; any other is left alone."""
        record = self._load(address)
        if owner_uid is not None and (record is None or record.owner is None or record.owner.uid != owner_uid):
            return
        if not self.sysfs.exists(f"bus/pci/devices/{address}"):
            self._forget(address)  # nothing left to give back
            return
        current = self._driver(address)
        target = record.previous_driver if record is not None else None
        if record is None and current != VFIO_PCI:
            return  # never ours
        if current not in (VFIO_PCI, None) or current == target:
            # Already back where it was, or someone else has taken it since: not ours to move.
            self._clear_override(address)
            self._forget(address)
            return
        if current == VFIO_PCI:
            self._write(address, f"bus/pci/drivers/{VFIO_PCI}/unbind", address)
        self._clear_override(address)
        if record is None:
            self._write(address, "bus/pci/drivers_probe", address)
        elif target is not None:
            if not self.sysfs.exists(f"bus/pci/drivers/{target}"):
                raise BindFailedError(address, f"its previous driver {target} is not loaded: run `modprobe {target}`")
            # Through driver_override, because some drivers (qat_vfio_pci) match no other way.
            self._write(address, f"bus/pci/devices/{address}/driver_override", target)
            self._write(address, f"bus/pci/drivers/{target}/bind", address)
            self._clear_override(address)
            self._confirm(address, target)
        self._forget(address)

    def held(self) -> list[str]:
        """Addresses bound by qatvm and not given back yet, from the records on disk."""
        return [record.address for record in self.records()]

    def records(self) -> list[BindingRecord]:
        """Every VF bound by qatvm and not given back yet, with the VM it was bound for: the
        agent checks these owners against the API to find VFs whose VM is gone."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                found.append(BindingRecord.model_validate_json(path.read_text()))
            except FileNotFoundError:
                continue  # given back while we were listing
        return found

    def held_by(self, uid: str) -> list[str]:
        return [record.address for record in self.records() if record.owner is not None and record.owner.uid == uid]

    # --- steps -------------------------------------------------------------------------

    def _driver(self, address: str) -> str | None:
        if not self.sysfs.exists(f"bus/pci/devices/{address}"):
            raise DeviceVanishedError(address)
        return self.sysfs.readlink(f"bus/pci/devices/{address}/driver")

    def _clear_override(self, address: str) -> None:
        rel = f"bus/pci/devices/{address}/driver_override"
        if self.sysfs.read(rel) != "(null)":
            self._write(address, rel, CLEAR_OVERRIDE)

    def _confirm(self, address: str, driver: str) -> None:
        bound = self._driver(address)
        if bound != driver:
            raise BindFailedError(address, f"bound to {bound or 'no driver'} after binding to {driver}")

    def _write(self, address: str, rel: str, value: str) -> None:
        try:
            self.sysfs.write(rel, value)
        except OSError as err:
            raise self._explain(address, rel, err) from err

    def _explain(self, address: str, rel: str, err: OSError) -> BindingError:
        """Turn the kernel's errno into what to fix, looking at sysfs for the cause."""
        if not self.sysfs.exists(f"bus/pci/devices/{address}"):
            return DeviceVanishedError(address)
        blocker = vfio_blocker(self.sysfs, address) if rel == VFIO_BIND else None
        if blocker is not None:
            return blocker
        if err.errno == errno.EBUSY:
            return DeviceBusyError(address, self.sysfs.readlink(f"bus/pci/devices/{address}/driver"))
        return BindFailedError(address, f"the kernel refused: {os.strerror(err.errno or 0)} (see `dmesg`)")

    def _roll_back(self, address: str, failure: BindingError) -> None:
        try:
            self.release(address)
        except BindingError as err:
            failure.add_note(f"and giving it back to its previous driver failed too: {err}")

    # --- the record --------------------------------------------------------------------

    def _record_path(self, address: str) -> Path:
        return self.state_dir / f"{address}.json"

    def _load(self, address: str) -> BindingRecord | None:
        try:
            return BindingRecord.model_validate_json(self._record_path(address).read_text())
        except FileNotFoundError:
            return None

    def _save(self, record: BindingRecord) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self._record_path(record.address)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)

    def _forget(self, address: str) -> None:
        self._record_path(address).unlink(missing_ok=True)
