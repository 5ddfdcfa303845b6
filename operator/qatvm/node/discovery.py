"""Find every QAT VF under a sysfs root and say whether a VM may have it.

PFs are recognised by device ID and their VFs found through `virtfn*` links, never by
driver name (gen4+ VFs have no driver). Devices with a VF ID that no PF accounts for are
VFs seen from inside a VM, or VFs of a PF we do not know (configured extra IDs).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from qatvm.api.qatnode import QatVf
from qatvm.node.binding import vfio_blocker
from qatvm.node.devices import BY_PF_DEVICE, BY_VF_DEVICE, INTEL, ExtraVfId, Generation
from qatvm.node.sysfs import Sysfs

DEVICES = "bus/pci/devices"


class PfInfo(BaseModel):
    address: str
    device_id: str
    generation: str
    driver: str | None
    numa_node: int | None
    vfs_enabled: int
    vfs_total: int
    # qat/state and qat/cfg_services, gen4+ only.
    state: str | None
    services: list[str] | None
    # The driver's debugfs heartbeat; None where it is not exposed.
    heartbeat_ok: bool | None


class NodeInventory(BaseModel):
    pfs: list[PfInfo]
    vfs: list[QatVf]


def discover(sysfs: Sysfs, extra_vf_ids: Iterable[ExtraVfId] = ()) -> NodeInventory:
    return _Scan(sysfs, {(e.vendor, e.device): e.generation for e in extra_vf_ids}).run()


class _Scan:
    def __init__(self, sysfs: Sysfs, extra: dict[tuple[str, str], str]) -> None:
        self.sysfs = sysfs
        self.extra = extra

    def run(self) -> NodeInventory:
        ids = {a: pci_id for a in self.sysfs.listdir(DEVICES) if (pci_id := self._pci_id(a)) is not None}
        pfs: dict[str, PfInfo] = {}
        vfs: dict[str, QatVf] = {}
        for address, (vendor, device) in ids.items():
            if vendor == INTEL and device in BY_PF_DEVICE:
                pf = pfs[address] = self._pf(address, BY_PF_DEVICE[device])
                for vf in self._virtfns(address):
                    if vf in ids:
                        vfs[vf] = self._vf(vf, ids[vf][1], BY_PF_DEVICE[device].name, pf)
        for address, pci_id in ids.items():
            generation = self._vf_generation(pci_id)
            # An SR-IOV PF can share its VFs' ID (QEMU's emulated NVMe does): not a VF itself.
            if address in vfs or generation is None or self.sysfs.exists(f"{DEVICES}/{address}/sriov_totalvfs"):
                continue
            pf_address = self.sysfs.readlink(f"{DEVICES}/{address}/physfn")
            vfs[address] = self._vf(address, pci_id[1], generation, pfs.get(pf_address or ""), pf_address)
        return NodeInventory(pfs=list(pfs.values()), vfs=[vfs[a] for a in sorted(vfs)])

    def _pci_id(self, address: str) -> tuple[str, str] | None:
        try:
            return self._hex(f"{DEVICES}/{address}/vendor"), self._hex(f"{DEVICES}/{address}/device")
        except FileNotFoundError:  # removed while we listed the bus
            return None

    def _hex(self, rel: str) -> str:
        return self.sysfs.read(rel).lower().removeprefix("0x")

    def _vf_generation(self, pci_id: tuple[str, str]) -> str | None:
        vendor, device = pci_id
        if vendor == INTEL and device in BY_VF_DEVICE:
            return BY_VF_DEVICE[device].name
        return self.extra.get(pci_id)

    def _virtfns(self, pf: str) -> list[str]:
        links = [n for n in self.sysfs.listdir(f"{DEVICES}/{pf}") if n.startswith("virtfn")]
        found = (self.sysfs.readlink(f"{DEVICES}/{pf}/{n}") for n in sorted(links, key=lambda n: int(n[6:])))
        return [vf for vf in found if vf is not None]

    def _numa(self, address: str) -> int | None:
        rel = f"{DEVICES}/{address}/numa_node"
        if not self.sysfs.exists(rel):  # CONFIG_NUMA off
            return None
        node = int(self.sysfs.read(rel))
        return node if node >= 0 else None

    def _optional(self, rel: str) -> str | None:
        try:
            return self.sysfs.read(rel)
        except (FileNotFoundError, PermissionError):
            return None

    def _pf(self, address: str, gen: Generation) -> PfInfo:
        dev = f"{DEVICES}/{address}"
        driver = self.sysfs.readlink(f"{dev}/driver")
        services = self._optional(f"{dev}/qat/cfg_services") if gen.configurable_services else None
        heartbeat = self._optional(f"kernel/debug/qat_{driver}_{address}/heartbeat/status") if driver else None
        return PfInfo(
            address=address,
            device_id=gen.pf_device,
            generation=gen.name,
            driver=driver,
            numa_node=self._numa(address),
            vfs_enabled=int(self._optional(f"{dev}/sriov_numvfs") or 0),
            vfs_total=int(self._optional(f"{dev}/sriov_totalvfs") or 0),
            state=self._optional(f"{dev}/qat/state"),
            services=services.split(";") if services else None,
            heartbeat_ok=int(heartbeat) != -1 if heartbeat is not None else None,
        )

    def _vf(
        self, address: str, device_id: str, generation: str, pf: PfInfo | None, pf_address: str | None = None
    ) -> QatVf:
        dev = f"{DEVICES}/{address}"
        group_name = self.sysfs.readlink(f"{dev}/iommu_group")
        group = int(group_name) if group_name is not None else None
        unhealthy = _pf_troubles(pf)
        blocker = vfio_blocker(self.sysfs, address)
        unassignable = [str(blocker).removeprefix(f"{address}: ")] if blocker is not None else []
        if group is not None:
            others = [d for d in self.sysfs.listdir(f"kernel/iommu_groups/{group}/devices") if d != address]
            if others:
                unassignable.append(f"its IOMMU group {group} also holds {', '.join(others)}")
        return QatVf(
            pci_address=address,
            pf_address=pf.address if pf is not None else pf_address,
            device_id=device_id,
            generation=generation,
            services=pf.services if pf is not None else None,
            numa_node=self._numa(address),
            iommu_group=group,
            driver=self.sysfs.readlink(f"{dev}/driver"),
            healthy=not unhealthy,
            assignable=not unassignable,
            reason="; ".join(unhealthy + unassignable) or None,
        )


def _pf_troubles(pf: PfInfo | None) -> list[str]:
    if pf is None:
        return []
    troubles = []
    if pf.heartbeat_ok is False:
        troubles.append(f"PF {pf.address} heartbeat failed")
    if pf.state == "down":
        troubles.append(f"PF {pf.address} is down (qat/state)")
    return troubles
