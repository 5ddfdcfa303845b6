"""Turn a hardware profile into a simulated node: a sysfs tree, booted by the simulated kernel.

The generator lays out what firmware and boot would (bridges, functions, loaded drivers) and
then drives everything else through the simulated kernel's own sysfs writes: drivers probe
their devices, SR-IOV is enabled by writing `sriov_numvfs`, pre-bound VFs are moved with
`driver_override`. So a generated tree is a state the kernel itself can reach.

Addresses are deterministic: item k of the profile (PFs, then NICs, then devices) sits on
bus 0x10 + 8k of domain 0000. gen4+ QAT PFs are root-complex integrated endpoints directly
under their host bridge; everything else sits behind a PCIe root port at BB:00.0 on the next
bus, as discrete cards do.
"""

from __future__ import annotations

from pathlib import Path

from qatvm.node.devices import BY_NAME, INTEL, VFIO_DENYLIST_PARAM, VFIO_PCI
from qatvm.simulation.kernel import KernelState, SimulatedKernel
from qatvm.simulation.numa import write_numa_nodes
from qatvm.simulation.profile import HardwareProfile, PfSpec
from qatvm.simulation.tree import VFIO_CONTAINER_MODE, Tree, bdf

FIRST_BUS = 0x10
BUS_STEP = 0x08
ROOT_PORT_ID = (INTEL, "2030")
ROOT_PORT_DRIVER = "pcieport"
QAT_CLASS = "0b4000"


class _Builder:
    def __init__(self, profile: HardwareProfile, root: Path) -> None:
        self.profile = profile
        self.tree = Tree(root)
        self.kernel = SimulatedKernel(root)
        self.refs: dict[str, str] = {}
        self.next_bus = FIRST_BUS

    def build(self) -> None:
        p = self.profile
        self.tree.skeleton(iommu=p.iommu, debugfs=p.debugfs)
        write_numa_nodes(self.tree.root, p.numa_nodes)
        for driver in sorted(self._drivers()):
            self.tree.add_driver(driver)
        if p.vfio_pci:
            param = self.tree.root / VFIO_DENYLIST_PARAM
            param.parent.mkdir(parents=True)
            Tree.put(param, "Y" if p.disable_denylist else "N")
            self.tree.vfio_node("vfio", VFIO_CONTAINER_MODE)
        self.kernel.save(KernelState(profile=p))
        for i, pf in enumerate(p.pfs):
            self._pf(f"pf{i}", pf)
        for i, nic in enumerate(p.nics):
            address = self._slot(
                f"nic{i}",
                rciep=False,
                pci_id=(nic.vendor, nic.device),
                class_code="020000",
                numa=nic.numa_node,
                group_with=nic.share_iommu_group_with,
            )
            self.tree.add_sriov(address, nic.total_vfs, 16, 1, nic.vf_device)
            self.kernel.write("bus/pci/drivers_probe", address)
            self._enable(f"nic{i}", address, nic.vfs)
        for i, dev in enumerate(p.devices):
            address = self._slot(
                f"dev{i}",
                rciep=False,
                pci_id=(dev.vendor, dev.device),
                class_code=dev.class_code,
                numa=dev.numa_node,
                group_with=dev.share_iommu_group_with,
            )
            if dev.driver is not None:
                self.kernel.write("bus/pci/drivers_probe", address)

    def _drivers(self) -> set[str]:
        p = self.profile
        drivers = {BY_NAME[pf.generation].pf_driver for pf in p.pfs}
        if p.vf_drivers_loaded:
            drivers |= {d for pf in p.pfs if (d := BY_NAME[pf.generation].vf_driver) is not None}
        drivers |= {d for pf in p.pfs for d in pf.vf_drivers.values()}
        drivers |= {nic.driver for nic in p.nics} | {nic.vf_driver for nic in p.nics if nic.vfs}
        drivers |= {d.driver for d in p.devices if d.driver is not None}
        if p.vfio_pci:
            drivers.add(VFIO_PCI)
        if any(not BY_NAME[pf.generation].configurable_services for pf in p.pfs) or p.nics or p.devices:
            drivers.add(ROOT_PORT_DRIVER)
        return drivers

    def _slot(
        self,
        ref: str,
        rciep: bool,
        pci_id: tuple[str, str],
        class_code: str,
        numa: int,
        group_with: str | None = None,
    ) -> str:
        """Place one function (behind a root port unless it is integrated); return its address."""
        bus = self.next_bus
        self.next_bus += BUS_STEP
        if self.next_bus > 0xFF:
            raise ValueError("too many devices in the profile for one PCI domain")
        parent = self.tree.host_bridge(0, bus)
        if not rciep:
            port = bdf(0, bus, 0)
            parent = self.tree.add_device(parent, port, ROOT_PORT_ID, "060400", numa)
            self.tree.attach(port, ROOT_PORT_DRIVER)
            self._group(port, None)
            bus += 1
        address = bdf(0, bus, 0)
        self.tree.add_device(parent, address, pci_id, class_code, numa)
        self._group(address, group_with)
        self.refs[ref] = address
        return address

    def _group(self, address: str, share_with: str | None) -> None:
        if not self.profile.iommu:
            return
        if share_with is None:
            return self.tree.join_group(address, self.tree.new_group())
        if share_with not in self.refs:
            raise ValueError(f"share_iommu_group_with: {share_with!r} names no device placed before this one")
        group = self.tree.group_of(self.refs[share_with])
        assert group is not None
        self.tree.join_group(address, group)

    def _pf(self, ref: str, spec: PfSpec) -> None:
        gen = BY_NAME[spec.generation]
        address = self._slot(
            ref,
            rciep=gen.configurable_services,
            pci_id=(INTEL, gen.pf_device),
            class_code=QAT_CLASS,
            numa=spec.numa_node,
        )
        # gen4+ VFs follow their PF at function 1; older parts start VFs at device 1.
        self.tree.add_sriov(address, spec.total_vfs, 1 if gen.configurable_services else 8, 1, gen.vf_devices[0])
        self.kernel.write("bus/pci/drivers_probe", address)
        dev = f"bus/pci/devices/{address}"
        if spec.services is not None:
            self.kernel.write(f"{dev}/qat/state", "down")
            self.kernel.write(f"{dev}/qat/cfg_services", spec.services)
            self.kernel.write(f"{dev}/qat/state", "up")
        if spec.shared_iommu_group:
            state = self.kernel.load()
            state.shared_group_pfs.append(address)
            self.kernel.save(state)
        self._enable(ref, address, spec.vfs)
        for index, driver in sorted(spec.vf_drivers.items()):
            self._rebind(self.refs[f"{ref}.vf{index}"], driver)
        if spec.state == "down":
            self.kernel.write(f"{dev}/qat/state", "down")
        if spec.heartbeat == "failed" and self.profile.debugfs:
            self.kernel.write(f"kernel/debug/qat_{gen.pf_driver}_{address}/heartbeat/inject_error", "1")

    def _enable(self, ref: str, pf: str, count: int) -> None:
        if count:
            self.kernel.write(f"bus/pci/devices/{pf}/sriov_numvfs", str(count))
        for index, vf in enumerate(self.tree.virtfns(pf)):
            self.refs[f"{ref}.vf{index}"] = vf

    def _rebind(self, address: str, driver: str) -> None:
        """What an admin does by hand: override, bind, clear the override."""
        dev = f"bus/pci/devices/{address}"
        current = self.tree.driver_of(address)
        if current is not None:
            self.kernel.write(f"bus/pci/drivers/{current}/unbind", address)
        self.kernel.write(f"{dev}/driver_override", driver)
        self.kernel.write(f"bus/pci/drivers/{driver}/bind", address)
        self.kernel.write(f"{dev}/driver_override", "\n")


def generate(profile: HardwareProfile, root: Path) -> None:
    """Write a simulated node's sysfs at `root` (its `/sys`); `/dev/vfio` goes beside it.

    Raises FileExistsError if `root` holds anything, ValueError for a profile that cannot
    be laid out, OSError if the profile asks the kernel for something it refuses (such as
    pre-binding a VF that vfio-pci denylists or that has no IOMMU group).
    """
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    _Builder(profile, root).build()
