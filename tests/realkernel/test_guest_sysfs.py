"""What the real kernel lays out for an SR-IOV PF and its VFs: the facts discovery relies on."""

from __future__ import annotations

import pytest
from guest_node import Node

pytestmark = pytest.mark.realkernel


def test_vfs_sit_under_their_pf_each_in_its_own_iommu_group(node: Node) -> None:
    layout = node.json(
        f"""
import json, os
PCI = "/sys/bus/pci/devices"
pf, vfs = {node.pf!r}, {node.vfs!r}
def link(path):
    return os.path.basename(os.readlink(path)) if os.path.islink(path) else None
def read(path):
    return open(path).read().strip()
out = {{"pf": {{"ids": [read(f"{{PCI}}/{{pf}}/vendor"), read(f"{{PCI}}/{{pf}}/device")],
               "totalvfs": read(f"{{PCI}}/{{pf}}/sriov_totalvfs"), "numvfs": read(f"{{PCI}}/{{pf}}/sriov_numvfs"),
               "virtfns": sorted(link(f"{{PCI}}/{{pf}}/{{n}}") for n in os.listdir(f"{{PCI}}/{{pf}}") if n.startswith("virtfn")),
               "driver": link(f"{{PCI}}/{{pf}}/driver")}}}}
for vf in vfs:
    group = link(f"{{PCI}}/{{vf}}/iommu_group")
    out[vf] = {{"ids": [read(f"{{PCI}}/{{vf}}/vendor"), read(f"{{PCI}}/{{vf}}/device")],
               "physfn": link(f"{{PCI}}/{{vf}}/physfn"), "driver": link(f"{{PCI}}/{{vf}}/driver"),
               "driver_override": read(f"{{PCI}}/{{vf}}/driver_override"),
               "numa_node": read(f"{{PCI}}/{{vf}}/numa_node"),
               "group": group, "group_members": os.listdir(f"/sys/kernel/iommu_groups/{{group}}/devices"),
               "sriov_totalvfs": os.path.exists(f"{{PCI}}/{{vf}}/sriov_totalvfs"),
               "vfio_group_device": os.path.exists(f"/dev/vfio/{{group}}")}}
out["vfio_container"] = os.path.exists("/dev/vfio/vfio")
print(json.dumps(out))
"""
    )
    # QEMU's NVMe PF and VFs share one vendor:device, so only sriov_totalvfs and physfn tell them apart.
    assert layout["pf"] == {
        "ids": ["0x1b36", "0x0010"],
        "totalvfs": str(len(node.vfs)),
        "numvfs": str(len(node.vfs)),
        "virtfns": node.vfs,
        "driver": "nvme",
    }
    groups = set()
    for vf in node.vfs:
        facts = layout[vf]
        assert facts["ids"] == ["0x1b36", "0x0010"]
        assert facts["physfn"] == node.pf
        assert facts["driver"] == "nvme"
        assert facts["driver_override"] == "(null)"
        assert facts["numa_node"] == "-1"  # one-node guest: the kernel reports no node
        assert facts["group_members"] == [vf]
        assert not facts["sriov_totalvfs"]
        assert not facts["vfio_group_device"]
        groups.add(facts["group"])
    assert len(groups) == len(node.vfs)
    assert layout["vfio_container"]
