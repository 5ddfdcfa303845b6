"""Sysfs writes replayed on a real kernel and on the simulated one, and what each kernel did.

Imported on the host (for the simulated kernel) and inside the guest (for the real one), so it
uses only `qatvm.node.sysfs`. A scenario starts with one VF on its host driver (nvme) and no
driver_override, performs its writes through `Sysfs.write` (the production code's only door
to sysfs), and records, after every write, its outcome (`ok` or the errno's name), the VF's
driver link, its driver_override and whether its /dev/vfio/<group> exists. `restore` then puts
the VF back, so scenarios can run one after another on one kernel.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from qatvm.node.sysfs import Sysfs

HOST_DRIVER = "nvme"
# No such device on any of the machines compared here.
ABSENT = "0000:ff:1f.7"


@dataclass(frozen=True)
class Scenario:
    name: str
    # (attribute relative to the sysfs root, value): `{vf}`, `{dev}` (the VF's device folder) and
    # `{pf}` (the PF's) are filled in per machine.
    writes: tuple[tuple[str, str], ...]


DEV = "bus/pci/devices/{vf}"
UNBIND_HOST = (f"bus/pci/drivers/{HOST_DRIVER}/unbind", "{vf}")
OVERRIDE_VFIO = (DEV + "/driver_override", "vfio-pci")
CLEAR_OVERRIDE = (DEV + "/driver_override", "\n")
BIND_VFIO = ("bus/pci/drivers/vfio-pci/bind", "{vf}")
UNBIND_VFIO = ("bus/pci/drivers/vfio-pci/unbind", "{vf}")
PROBE = ("bus/pci/drivers_probe", "{vf}")
UNBIND_PF = (f"bus/pci/drivers/{HOST_DRIVER}/unbind", "{pf}")
PROBE_PF = ("bus/pci/drivers_probe", "{pf}")
# QEMU's NVMe VF; only a driverless device with this ID is taken by the new ID.
NEW_ID = ("bus/pci/drivers/vfio-pci/new_id", "1b36 0010")
REMOVE_ID = ("bus/pci/drivers/vfio-pci/remove_id", "1b36 0010")

SCENARIOS = (
    Scenario("the anchors' bind recipe", (UNBIND_HOST, OVERRIDE_VFIO, BIND_VFIO, CLEAR_OVERRIDE)),
    Scenario("the anchors' give-back recipe", (UNBIND_HOST, OVERRIDE_VFIO, BIND_VFIO, UNBIND_VFIO, CLEAR_OVERRIDE, PROBE)),
    Scenario("bind to vfio-pci with no override", (UNBIND_HOST, BIND_VFIO)),
    Scenario("bind to vfio-pci while on the host driver", (OVERRIDE_VFIO, BIND_VFIO)),
    Scenario("bind to vfio-pci twice", (UNBIND_HOST, OVERRIDE_VFIO, BIND_VFIO, BIND_VFIO)),
    Scenario("unbind from a driver it is not bound to", (UNBIND_VFIO,)),
    Scenario("unbind a driverless device", (UNBIND_HOST, UNBIND_HOST)),
    Scenario("unbind keeps the override", (UNBIND_HOST, OVERRIDE_VFIO, BIND_VFIO, UNBIND_VFIO)),
    Scenario("drivers_probe honours a stale override", (UNBIND_HOST, OVERRIDE_VFIO, PROBE)),
    Scenario("drivers_probe of a bound device", (PROBE,)),
    Scenario("drivers_probe of an absent device", (("bus/pci/drivers_probe", ABSENT),)),
    Scenario("bind an absent device", ((f"bus/pci/drivers/{HOST_DRIVER}/bind", ABSENT),)),
    Scenario(
        "bind to the host driver against the override",
        (UNBIND_HOST, OVERRIDE_VFIO, (f"bus/pci/drivers/{HOST_DRIVER}/bind", "{vf}")),
    ),
    Scenario("override naming no loaded driver", (UNBIND_HOST, (DEV + "/driver_override", "nosuchdriver"), PROBE)),
    Scenario("override without a newline, then cleared by a newline", (OVERRIDE_VFIO, CLEAR_OVERRIDE)),
    Scenario("override emptied by a zero-length write", (OVERRIDE_VFIO, (DEV + "/driver_override", ""))),
    Scenario("override changed while bound", (UNBIND_HOST, OVERRIDE_VFIO, BIND_VFIO, (DEV + "/driver_override", HOST_DRIVER))),
    Scenario("bind with a trailing newline, as echo writes", (UNBIND_HOST, OVERRIDE_VFIO, (BIND_VFIO[0], "{vf}\n"))),
    Scenario("unbind an absent device", (("bus/pci/drivers/vfio-pci/unbind", ABSENT),)),
    Scenario(
        "new_id and remove_id on vfio-pci",
        (
            UNBIND_HOST,
            NEW_ID,
            NEW_ID,
            REMOVE_ID,
            REMOVE_ID,
        ),
    ),
    Scenario("override of 4094 characters", ((DEV + "/driver_override", "x" * 4094),)),
    Scenario("override of 4095 characters", ((DEV + "/driver_override", "x" * 4095),)),
    Scenario("write a read-only attribute", ((DEV + "/vendor", "0x8086"),)),
    Scenario("write a missing attribute", ((DEV + "/no_such_attribute", "1"),)),
    Scenario("sriov_numvfs above sriov_totalvfs", (("bus/pci/devices/{pf}/sriov_numvfs", "3"),)),
    Scenario("sriov_numvfs changed while enabled", (("bus/pci/devices/{pf}/sriov_numvfs", "1"),)),
    Scenario("sriov_numvfs unchanged", (("bus/pci/devices/{pf}/sriov_numvfs", "2"),)),
    Scenario(
        "PF unbound: VFs stay, sriov_numvfs refuses",
        (UNBIND_PF, ("bus/pci/devices/{pf}/sriov_numvfs", "1"), ("bus/pci/devices/{pf}/sriov_numvfs", "0"), PROBE_PF),
    ),
    Scenario("sriov_numvfs not a number", (("bus/pci/devices/{pf}/sriov_numvfs", "two"),)),
)


# Attributes the project and the anchors' recipe read or write, relative to the sysfs root.
READ_ATTRIBUTES = (
    "bus/pci/drivers_probe",
    "bus/pci/drivers/vfio-pci/bind",
    "bus/pci/drivers/vfio-pci/unbind",
    "bus/pci/drivers/vfio-pci/new_id",
    "bus/pci/drivers/vfio-pci/remove_id",
    "module/vfio_pci/parameters/disable_denylist",
    "bus/pci/devices/{pf}/sriov_totalvfs",
    "bus/pci/devices/{pf}/sriov_numvfs",
    "bus/pci/devices/{pf}/sriov_drivers_autoprobe",
    "bus/pci/devices/{pf}/sriov_vf_device",
    "bus/pci/devices/{pf}/remove",
    "bus/pci/devices/{vf}/vendor",
    "bus/pci/devices/{vf}/device",
    "bus/pci/devices/{vf}/driver_override",
)


def read_attributes(sysfs: Sysfs, pf: str, vf: str) -> dict[str, str]:
    """What reading each of READ_ATTRIBUTES gives: its value, or the errno's name."""
    values = {}
    for rel in READ_ATTRIBUTES:
        try:
            values[rel] = sysfs.read(rel.format(pf=pf, vf=vf))
        except OSError as error:
            values[rel] = errno.errorcode.get(error.errno or 0, str(error.errno))
    return values


def observe(sysfs: Sysfs, pf: str, vf: str) -> dict[str, list[dict[str, object]]]:
    """Run every scenario on `vf` (a VF of `pf`); return each one's observations."""
    results = {}
    for scenario in SCENARIOS:
        steps: list[dict[str, object]] = []
        try:
            for rel, value in scenario.writes:
                path, text = rel.format(vf=vf, pf=pf), value.format(vf=vf, pf=pf)
                label = path.replace(vf, "VF").replace(pf, "PF")
                steps.append({"write": label, **_write(sysfs, path, text), **state(sysfs, pf, vf)})
        finally:
            restore(sysfs, pf, vf)
        results[scenario.name] = steps
    return results


def _write(sysfs: Sysfs, rel: str, value: str) -> dict[str, object]:
    try:
        sysfs.write(rel, value)
    except OSError as error:
        return {"outcome": errno.errorcode.get(error.errno or 0, str(error.errno))}
    return {"outcome": "ok"}


def state(sysfs: Sysfs, pf: str, vf: str) -> dict[str, object]:
    dev = f"bus/pci/devices/{vf}"
    group = sysfs.readlink(f"{dev}/iommu_group")
    return {
        "pf_driver": sysfs.readlink(f"bus/pci/devices/{pf}/driver"),
        "sriov_numvfs": sysfs.read(f"bus/pci/devices/{pf}/sriov_numvfs"),
        "driver": sysfs.readlink(f"{dev}/driver"),
        "driver_override": sysfs.read(f"{dev}/driver_override"),
        "vfio_group_device": group is not None and os.path.exists(sysfs.dev_root / "vfio" / group),
    }


def restore(sysfs: Sysfs, pf: str, vf: str) -> None:
    """PF and VF back on the host driver with no override, whatever a scenario left behind."""
    if sysfs.readlink(f"bus/pci/devices/{pf}/driver") is None:
        sysfs.write("bus/pci/drivers_probe", pf)
    dev = f"bus/pci/devices/{vf}"
    driver = sysfs.readlink(f"{dev}/driver")
    if driver not in (None, HOST_DRIVER):
        sysfs.write(f"bus/pci/drivers/{driver}/unbind", vf)
    if sysfs.read(f"{dev}/driver_override") != "(null)":
        sysfs.write(f"{dev}/driver_override", "\n")
    if sysfs.readlink(f"{dev}/driver") is None:
        sysfs.write("bus/pci/drivers_probe", vf)
    # Probes that userspace asks for run synchronously, so the link is final already.
    if sysfs.readlink(f"{dev}/driver") != HOST_DRIVER:
        raise RuntimeError(f"{vf} did not return to {HOST_DRIVER}")
