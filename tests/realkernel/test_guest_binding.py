"""The project's discovery and vfio-pci binding, run inside the guest against its real /sys."""

from __future__ import annotations

import pytest
from guest_node import Node

pytestmark = pytest.mark.realkernel

# QEMU's NVMe VF, added by configuration as an admin would add an ID qatvm does not know.
EXTRA_VF_ID = "1b36:0010=qemu-nvme"

DISCOVER = f"""
from qatvm.node.devices import ExtraVfId
from qatvm.node.discovery import discover
from qatvm.node.sysfs import HostSysfs
def inventory(extra=({EXTRA_VF_ID!r},)):
    return discover(HostSysfs(), [ExtraVfId.parse(e) for e in extra])
"""

# The state a VF is in, as the kernel shows it; `vfio` says whether its group's device node
# is a character device that opens and that the kernel reports viable (VFIO_GROUP_GET_STATUS).
KERNEL_STATE = """
import fcntl, json, os, stat, struct
VFIO_GROUP_GET_STATUS = 0x3B67  # _IO(';', 100 + 3)
VFIO_GROUP_FLAGS_VIABLE = 1
def kernel_state(vf):
    dev = f"/sys/bus/pci/devices/{vf}"
    group = os.path.basename(os.readlink(f"{dev}/iommu_group"))
    node = f"/dev/vfio/{group}"
    state = {"driver": os.path.basename(os.readlink(f"{dev}/driver")) if os.path.exists(f"{dev}/driver") else None,
             "driver_override": open(f"{dev}/driver_override").read().strip(),
             "controller": sorted(os.listdir(f"{dev}/nvme")) != [] if os.path.isdir(f"{dev}/nvme") else False,
             "vfio": None}
    if os.path.exists(node):
        fd = os.open(node, os.O_RDWR)
        try:
            status = bytearray(struct.pack("II", 8, 0))
            fcntl.ioctl(fd, VFIO_GROUP_GET_STATUS, status)
            viable = bool(struct.unpack("II", status)[1] & VFIO_GROUP_FLAGS_VIABLE)
        finally:
            os.close(fd)
        state["vfio"] = {"char_device": stat.S_ISCHR(os.stat(node).st_mode), "viable": viable}
    return state
"""


def test_discovery_reports_the_vfs_with_the_configured_id(node: Node) -> None:
    vfs = node.json(DISCOVER + "import json\nprint(json.dumps([vf.model_dump(mode='json') for vf in inventory().vfs]))")
    # The PF carries the same ID but is an SR-IOV PF, so it is not reported as a VF.
    assert [vf["pci_address"] for vf in vfs] == node.vfs
    groups = node.json(
        "import json, os\n"
        f"print(json.dumps([int(os.path.basename(os.readlink(f'/sys/bus/pci/devices/{{vf}}/iommu_group'))) for vf in {node.vfs!r}]))"
    )
    for vf, group in zip(vfs, groups, strict=True):
        assert vf["pf_address"] == node.pf
        assert vf["device_id"] == "0010"
        assert vf["generation"] == "qemu-nvme"
        assert vf["iommu_group"] == group
        assert vf["numa_node"] is None
        assert vf["driver"] == "nvme"
        assert vf["healthy"] and vf["assignable"], vf["reason"]


def test_discovery_without_the_extra_id_finds_no_qat(node: Node) -> None:
    found = node.json(DISCOVER + "import json\ninv = inventory(extra=())\nprint(json.dumps([len(inv.pfs), len(inv.vfs)]))")
    assert found == [0, 0]


def test_bind_to_vfio_and_give_back(node: Node) -> None:
    vf = node.vfs[0]
    steps = node.json(
        DISCOVER
        + KERNEL_STATE
        + f"""
import json, os
from pathlib import Path
from qatvm.api.base import ObjectRef
from qatvm.node.binding import VfBinder
from qatvm.node.sysfs import HostSysfs
vf, state_dir = {vf!r}, Path("/run/qatvm-binding")
owner = ObjectRef(namespace="tenant", name="vm", uid="uid-1")
binder = VfBinder(HostSysfs(), state_dir)
steps = {{"before": kernel_state(vf)}}
try:
    binder.bind_to_vfio(vf, owner)
    steps["bound"] = kernel_state(vf)
    steps["record"] = json.loads((state_dir / f"{{vf}}.json").read_text())
    steps["inventory_driver"] = next(v.driver for v in inventory().vfs if v.pci_address == vf)
    binder.bind_to_vfio(vf, owner)
    steps["bound_again"] = kernel_state(vf)
finally:
    binder.release(vf, owner.uid)
steps["released"] = kernel_state(vf)
steps["record_left"] = os.path.exists(state_dir / f"{{vf}}.json")
binder.release(vf, owner.uid)
steps["released_again"] = kernel_state(vf)
print(json.dumps(steps))
"""
    )
    on_nvme = {"driver": "nvme", "driver_override": "(null)", "controller": True, "vfio": None}
    on_vfio = {"driver": "vfio-pci", "driver_override": "(null)", "controller": False,
               "vfio": {"char_device": True, "viable": True}}
    assert steps["before"] == on_nvme
    assert steps["bound"] == on_vfio
    assert steps["record"] == {
        "address": vf, "previous_driver": "nvme", "owner": {"namespace": "tenant", "name": "vm", "uid": "uid-1"}
    }
    assert steps["inventory_driver"] == "vfio-pci"
    assert steps["bound_again"] == on_vfio
    # Back on nvme, which starts the controller again (its nvme/ child), and nothing left over.
    assert steps["released"] == on_nvme
    assert not steps["record_left"]
    assert steps["released_again"] == on_nvme
