"""The IOMMU-off failure path on a real kernel: booted with intel_iommu=off, the VFs have no
IOMMU group, and the project must say what to fix instead of failing in the kernel's words."""

from __future__ import annotations

import pytest
from guest_node import Node

pytestmark = pytest.mark.realkernel


def test_discovery_and_binding_say_the_iommu_is_off(node_without_iommu: Node) -> None:
    node = node_without_iommu
    vf = node.vfs[0]
    seen = node.json(
        f"""
import json, os
from pathlib import Path
from qatvm.node.binding import BindingError, VfBinder
from qatvm.node.devices import ExtraVfId
from qatvm.node.discovery import discover
from qatvm.node.sysfs import HostSysfs
vf, state_dir = {vf!r}, Path("/run/qatvm-binding")
dev = f"/sys/bus/pci/devices/{{vf}}"
sysfs = HostSysfs()
seen = {{"groups": os.listdir("/sys/kernel/iommu_groups"), "group_link": os.path.exists(f"{{dev}}/iommu_group")}}
entry = next(v for v in discover(sysfs, [ExtraVfId.parse("1b36:0010")]).vfs if v.pci_address == vf)
seen["inventory"] = {{"assignable": entry.assignable, "iommu_group": entry.iommu_group, "reason": entry.reason}}
try:
    VfBinder(sysfs, state_dir).bind_to_vfio(vf)
    seen["error"] = None
except BindingError as error:
    seen["error"] = {{"type": type(error).__name__, "message": str(error)}}
seen["after"] = {{"driver": os.path.basename(os.readlink(f"{{dev}}/driver")),
                 "driver_override": open(f"{{dev}}/driver_override").read().strip(),
                 "record": os.path.exists(state_dir / f"{{vf}}.json")}}
print(json.dumps(seen))
"""
    )
    assert seen["groups"] == [] and not seen["group_link"]
    assert seen["inventory"]["assignable"] is False
    assert seen["inventory"]["iommu_group"] is None
    assert "intel_iommu=on" in seen["inventory"]["reason"]
    assert seen["error"] is not None and seen["error"]["type"] == "IommuOffError"
    assert seen["error"]["message"].startswith(f"{vf}: ") and "intel_iommu=on" in seen["error"]["message"]
    # Refused before any write: the VF keeps its driver and nothing is left to undo.
    assert seen["after"] == {"driver": "nvme", "driver_override": "(null)", "record": False}
