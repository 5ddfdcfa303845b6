"""What a local cluster's node holds, read from the node itself and from its QatNode."""

from __future__ import annotations

from qatvm.node.binding import VfBinder
from qatvm.simulation import SimulatedSysfs
from qatvm.testing.cluster import LocalNodes
from qatvm.testing.kubectl import Kubectl


def drivers(nodes: LocalNodes, node: str) -> dict[str, str | None]:
    """Every PCI device of the node and its driver."""
    sysfs = SimulatedSysfs(nodes.root(node) / "sys")
    return {a: sysfs.readlink(f"bus/pci/devices/{a}/driver") for a in sysfs.listdir("bus/pci/devices")}


def records(nodes: LocalNodes, node: str) -> dict[str, str | None]:
    """The agent's binding records: each bound VF and the UID of the VM it was bound for."""
    root = nodes.root(node)
    binder = VfBinder(SimulatedSysfs(root / "sys"), root / "var/lib/qatvm/binding")
    return {r.address: r.owner.uid if r.owner else None for r in binder.records()}


def allocated_to(kubectl: Kubectl, node: str) -> dict[str, str]:
    """The node's word in its QatNode: each held VF and the UID of its holder."""
    vfs = kubectl.json("get", "qatnode", node)["status"]["vfs"]
    return {v["pciAddress"]: v["allocatedTo"]["uid"] for v in vfs if v.get("allocatedTo")}
