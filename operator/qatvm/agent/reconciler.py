"""What an agent does for one VM on its node: VFs to vfio-pci, disk and seed, domain state.

Every step is idempotent and starts from what is on the node, not from what the agent last did,
so the same call after a crash at any line finishes the job: a VF already on vfio-pci stays,
an existing overlay is kept, a defined domain is redefined in place, a running one is left running.

Everything the node holds for a VM is keyed by the VM's UID: the binding records name it, the
domain carries it in its metadata, and the VM's files live in `vms/<uid>`. So a VM is removed by
its UID alone, and a re-created VM of the same name never inherits or loses anything of the old one.

Calls for different VMs may run at once in threads. Only sysfs driver writes take the node-wide
lock (two binds on one kernel must not interleave); disks, seeds and libvirt calls run unlocked.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qatvm import metrics
from qatvm.agent.config import AgentConfig
from qatvm.agent.vm_files import prepare_disks
from qatvm.agent.pinning import host_placement
from qatvm.api.base import ObjectRef
from qatvm.api.vm import DomainStatus, Phase, QatVirtualMachine
from qatvm.domain.builder import build_domain
from qatvm.domain.disks import Overlays
from qatvm.domain.spec import DomainSpec
from qatvm.hypervisor import DomainState, Hypervisor
from qatvm.node.binding import VfBinder
from qatvm.node.discovery import discover

log = logging.getLogger(__name__)


class AllocationMissing(RuntimeError):
    """The VM is placed on this node but carries no devices yet."""


class ForeignDeviceError(ValueError):
    """The allocation names an address that is not an assignable QAT VF of this node."""


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    domain: DomainStatus
    message: str


@dataclass(frozen=True)
class Holdings:
    """What the node holds for VMs, by UID: a domain, binding records or files."""

    refs: dict[str, ObjectRef | None]
    # Binding records from before owners were recorded: addresses only.
    unowned: tuple[str, ...]


class VmReconciler:
    def __init__(self, config: AgentConfig, binder: VfBinder, hypervisor: Hypervisor) -> None:
        self.config = config
        self.binder = binder
        self.hypervisor = hypervisor
        self.sysfs_lock = threading.Lock()
        # One of each for the agent's life: they remember what qemu-img read and wrote.
        self.images = config.images
        self.overlays = Overlays()

    @property
    def vms_dir(self) -> Path:
        return self.config.state_dir / "vms"

    def vm_dir(self, uid: str) -> Path:
        return self.vms_dir / uid

    def domain_spec(self, vm: QatVirtualMachine, dedicated: frozenset[int] = frozenset()) -> DomainSpec:
        """The domain for `vm`; `dedicated` are the CPUs every VM on the node holds as dedicated."""
        ref = vm.ref
        files = self.vm_dir(ref.uid)
        user_data = vm.spec.cloud_init.user_data if vm.spec.cloud_init else None
        return DomainSpec(
            owner=ref,
            vcpus=vm.spec.vcpus,
            memory_bytes=vm.spec.memory_bytes,
            disk=files / "overlay.qcow2",
            cloud_init_iso=files / "cidata.iso" if user_data else None,
            hostdevs=tuple(d.pci_address for d in vm.status.devices),
            virt_type=self.config.virt_type,
            cpu_mode=self.config.cpu_mode,
            hugepage_size=vm.spec.hugepages.page_size if vm.spec.hugepages else None,
            placement=host_placement(vm.status.resources, self.binder.sysfs, self.config.reservation, dedicated),
        )

    def check_allocation(self, vm: QatVirtualMachine, vfs: set[str] | None = None) -> None:
        """Refuse, before touching anything, an allocation that is not this node's QAT VFs: the
        status may name a NIC or another node's address, and the agent binds nothing but its own VFs.
        `vfs` is the node's latest scan; without it, sysfs is scanned now."""
        if vm.status.node_name != self.config.node or not vm.status.devices:
            raise AllocationMissing(f"{vm.ref.namespace}/{vm.ref.name} has no allocation on {self.config.node} yet")
        if vfs is None:
            with self.sysfs_lock:
                vfs = {vf.pci_address for vf in discover(self.binder.sysfs, self.config.extra_vf_ids).vfs}
        for device in vm.status.devices:
            if device.pci_address in vfs:
                continue
            present = self.binder.sysfs.exists(f"bus/pci/devices/{device.pci_address}")
            raise ForeignDeviceError(
                f"status.devices names {device.pci_address}, which is not a QAT VF on node {self.config.node} "
                + ("(it is another kind of device)" if present else "(no such device here: gone from the host, or another node's)")
                + "; the agent binds only the VFs its node publishes in its QatNode. Delete the VM and create it "
                "again so the controller places it anew"
            )

    def apply(
        self, vm: QatVirtualMachine, vfs: set[str] | None = None, dedicated: frozenset[int] = frozenset()
    ) -> Outcome:
        """Bring the node to what the VM asks for; raises on what it cannot fix by itself.
        `dedicated` are the CPUs every VM on the node holds as dedicated."""
        self.check_allocation(vm, vfs)
        spec = self.domain_spec(vm, dedicated)
        self._clear_previous_owner(spec)
        with metrics.step("disk"):
            self.prepare_files(vm, spec)
        with metrics.step("bind"), self.sysfs_lock:
            for device in vm.status.devices:
                self.binder.bind_to_vfio(device.pci_address, vm.ref)
        with metrics.step("define"):
            self.hypervisor.define(build_domain(spec))
        if vm.spec.running:
            with metrics.step("start"):
                self.hypervisor.start(spec.name)
        else:
            with metrics.step("stop"):
                self.hypervisor.stop(spec.name)
        state = self.hypervisor.state(spec.name)
        running = state is DomainState.RUNNING
        phase = Phase.RUNNING if running else Phase.STOPPED
        devices = ", ".join(d.pci_address for d in vm.status.devices)
        message = f"domain {spec.name} {state.value if state else 'missing'} with VFs {devices}"
        return Outcome(
            phase=phase,
            domain=DomainStatus(name=spec.name, uuid=str(spec.uuid), state=state.value if state else None),
            message=message,
        )

    def prepare_files(self, vm: QatVirtualMachine, spec: DomainSpec) -> None:
        """The overlay over the VM's image and its cloud-init seed, outside any lock."""
        prepare_disks(self.images, self.overlays, vm, spec.disk, spec.cloud_init_iso)

    def _clear_previous_owner(self, spec: DomainSpec) -> None:
        # The domain name comes from namespace and name; a domain of that name owned by another
        # UID belongs to an earlier VM of the same name, which cannot exist beside this one.
        domain = self.hypervisor.owned_domain(spec.name)
        if domain is not None and domain.owner.uid != spec.owner.uid:
            log.warning("removing domain %s of an earlier VM %s (uid %s)", domain.name, domain.owner.name, domain.owner.uid)
            self.remove(domain.owner.uid)

    def remove(self, uid: str) -> list[str]:
        """Destroy and undefine the VM's domain, give back the VFs recorded for it, delete its
        files: everything held for that UID, and nothing else. Returns what was removed."""
        with metrics.step("remove"):
            return self._remove(uid)

    def _remove(self, uid: str) -> list[str]:
        removed = []
        for domain in self.hypervisor.owned_domains():
            if domain.owner.uid == uid:
                self.hypervisor.destroy(domain.name)
                self.hypervisor.undefine(domain.name)
                removed.append(f"domain {domain.name}")
        with self.sysfs_lock:
            for address in self.binder.held_by(uid):
                self.binder.release(address, uid)
                removed.append(f"VF {address}")
        files = self.vm_dir(uid)
        if files.exists():
            shutil.rmtree(files, ignore_errors=True)
            removed.append(f"files in {files}")
        return removed

    def holdings(self) -> Holdings:
        """Every UID the node holds something for, with its namespace and name where known."""
        refs: dict[str, ObjectRef | None] = {}
        unowned = []
        for path in sorted(self.vms_dir.iterdir()) if self.vms_dir.is_dir() else []:
            refs.setdefault(path.name, None)
        for record in self.binder.records():
            if record.owner is None:
                unowned.append(record.address)
            else:
                refs[record.owner.uid] = record.owner
        for domain in self.hypervisor.owned_domains():
            refs[domain.owner.uid] = domain.owner
        return Holdings(refs=refs, unowned=tuple(unowned))

    def release_unowned(self, addresses: Iterable[str], in_use: set[str]) -> list[str]:
        """Give back VFs bound before owners were recorded that no VM placed here holds."""
        released = []
        with self.sysfs_lock:
            for address in addresses:
                if address not in in_use:
                    self.binder.release(address)
                    released.append(f"VF {address}")
        return released
