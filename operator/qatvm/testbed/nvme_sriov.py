"""Inside the test guest: turn QEMU's NVMe controller into a PF with working VFs.

Writing sriov_numvfs alone gives VFs that the nvme driver fails to start (QEMU's secondary
controllers have no queues until the PF's admin hands them some), so they end up with no
driver at all. A QAT VF on a real host sits on its VF driver (c6xxvf, ...) before the agent
takes it, so this module does what `nvme virt-mgmt` would: moves the flexible queue and
interrupt resources from the primary controller to each secondary one and brings it online.
The VFs then bind to nvme, and giving one back from vfio-pci has a real driver to return to.

Run in the guest: `python -m qatvm.testbed.nvme_sriov [COUNT]`; prints {"pf": BDF, "vfs": [BDF...]}.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import sys
from pathlib import Path

PCI = Path("/sys/bus/pci")
NVME_VENDOR = "0x1b36"
NVME_DEVICE = "0x0010"

NVME_IOCTL_ADMIN_CMD = 0xC0484E41  # _IOWR('N', 0x41, struct nvme_passthru_cmd): 72 bytes
VIRTUALIZATION_MANAGEMENT = 0x1C
# Actions and resource types of Virtualization Management (NVMe 1.4, figure 5.22).
PRIMARY_FLEXIBLE_ALLOCATION = 1
SECONDARY_ASSIGN = 8
SECONDARY_ONLINE = 9
QUEUES = 0
INTERRUPTS = 1
# An admin and one I/O queue: the least the nvme driver starts a controller with. The guest's
# QEMU device gets exactly this many flexible queues per VF.
QUEUES_PER_VF = 2


def physical_function() -> Path:
    for device in (PCI / "devices").iterdir():
        ids = ((device / "vendor").read_text().strip(), (device / "device").read_text().strip())
        if (device / "sriov_totalvfs").exists() and ids == (NVME_VENDOR, NVME_DEVICE):
            return device
    raise FileNotFoundError("no SR-IOV capable NVMe controller in this guest")


def virtualization_management(controller: str, action: int, resource: int, cntlid: int, count: int) -> None:
    command = struct.pack(
        "=BBHIIIQQIIIIIIIIII",
        VIRTUALIZATION_MANAGEMENT, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        action | resource << 8 | cntlid << 16, count, 0, 0, 0, 0, 0, 0,
    )
    fd = os.open(f"/dev/{controller}", os.O_RDWR)
    try:
        fcntl.ioctl(fd, NVME_IOCTL_ADMIN_CMD, bytearray(command))
    finally:
        os.close(fd)


def virtfns(pf: Path, count: int) -> list[Path]:
    return [(pf / f"virtfn{i}").resolve(strict=True) for i in range(count)]


def enable(count: int) -> tuple[Path, list[Path]]:
    pf = physical_function()
    if int((pf / "sriov_numvfs").read_text()) == count:
        return pf, virtfns(pf, count)
    controller = next((pf / "nvme").iterdir()).name
    # The primary keeps the flexible resources until it gives them up and is reset.
    for resource in (QUEUES, INTERRUPTS):
        virtualization_management(controller, PRIMARY_FLEXIBLE_ALLOCATION, resource, 0, 0)
    (pf / "reset").write_text("1")
    # Not probed yet: nvme would fail on a VF that is still offline and leave it driverless.
    (pf / "sriov_drivers_autoprobe").write_text("0")
    (pf / "sriov_numvfs").write_text(str(count))
    (pf / "sriov_drivers_autoprobe").write_text("1")
    vfs = virtfns(pf, count)
    for index, vf in enumerate(vfs):
        # QEMU numbers the secondary controllers right after the primary (cntlid 0).
        cntlid = index + 1
        virtualization_management(controller, SECONDARY_ASSIGN, INTERRUPTS, cntlid, 1)
        virtualization_management(controller, SECONDARY_ASSIGN, QUEUES, cntlid, QUEUES_PER_VF)
        virtualization_management(controller, SECONDARY_ONLINE, QUEUES, cntlid, 0)
        # A probe asked for from userspace runs synchronously: the link is there on return.
        (PCI / "drivers_probe").write_text(vf.name)
        if not (vf / "driver").exists() or (vf / "driver").resolve().name != "nvme":
            raise RuntimeError(f"{vf.name} did not bind to nvme once online")
    return pf, vfs


def main(argv: list[str] | None = None) -> None:
    count = int((argv if argv is not None else sys.argv[1:] or ["2"])[0])
    pf, vfs = enable(count)
    print(json.dumps({"pf": pf.name, "vfs": [vf.name for vf in vfs]}))


if __name__ == "__main__":
    main()
