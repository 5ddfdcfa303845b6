"""What an agent does for one VM on its node: VFs to vfio-pci, disk and seed, domain state.

Every step is idempotent and starts from what is on the node, not from what the agent last did,
so the same call after a crash at any line finishes the job: a VF already on vfio-pci stays,
an existing overlay is kept, a defined domain is redefined in place, a running one is left running.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from qatvm import metrics
from qatvm.agent.config import AgentConfig
from qatvm.agent.vm_files import prepare_disks
from qatvm.api.base import ObjectRef
from qatvm.api.vm import AllocatedDevice, DomainStatus, Phase, QatVirtualMachine
from qatvm.domain.builder import build_domain
from qatvm.domain.naming import domain_name
from qatvm.domain.spec import DomainSpec
from qatvm.hypervisor import DomainState, Hypervisor
from qatvm.node.binding import VfBinder

log = logging.getLogger(__name__)


class AllocationMissing(RuntimeError):
    """The VM carries this node's label but no allocation: the controller has not finished."""


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    domain: DomainStatus
    message: str


class VmReconciler:
    def __init__(self, config: AgentConfig, binder: VfBinder, hypervisor: Hypervisor) -> None:
        self.config = config
        self.binder = binder
        self.hypervisor = hypervisor

    def vm_dir(self, namespace: str, name: str) -> Path:
        return self.config.state_dir / "vms" / domain_name(namespace, name)

    def domain_spec(self, vm: QatVirtualMachine) -> DomainSpec:
        ref = vm.ref
        files = self.vm_dir(ref.namespace, ref.name)
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
        )

    def apply(self, vm: QatVirtualMachine) -> Outcome:
        """Bring the node to what the VM asks for; raises on what it cannot fix by itself."""
        if vm.status.node_name != self.config.node or not vm.status.devices:
            raise AllocationMissing(f"{vm.ref.namespace}/{vm.ref.name} has no allocation on {self.config.node} yet")
        with metrics.step("bind"):
            for device in vm.status.devices:
                self.binder.bind_to_vfio(device.pci_address)
        spec = self.domain_spec(vm)
        with metrics.step("disk"):
            prepare_disks(self.config, vm, spec.disk, spec.cloud_init_iso)
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

    def remove(self, ref: ObjectRef, devices: list[AllocatedDevice]) -> None:
        """Destroy and undefine the domain, give the VFs back, delete the VM's files."""
        name = domain_name(ref.namespace, ref.name)
        with metrics.step("remove"):
            self.hypervisor.destroy(name)
            self.hypervisor.undefine(name)
            for device in devices:
                self.binder.release(device.pci_address)
            shutil.rmtree(self.vm_dir(ref.namespace, ref.name), ignore_errors=True)

    def sweep(self, vms: list[QatVirtualMachine]) -> list[str]:
        """Remove what a crash left behind: domains of VMs that no longer exist, and VFs on
        vfio-pci that no VM on this node holds. Domains of existing VMs are kept (adopted)."""
        by_uid = {vm.ref.uid: vm for vm in vms}
        held = {d.pci_address for vm in vms for d in vm.status.devices}
        removed = []
        for domain in self.hypervisor.owned_domains():
            if domain.owner.uid in by_uid:
                continue
            self.hypervisor.destroy(domain.name)
            self.hypervisor.undefine(domain.name)
            shutil.rmtree(self.vm_dir(domain.owner.namespace, domain.owner.name), ignore_errors=True)
            removed.append(f"domain {domain.name} of deleted VM {domain.owner.namespace}/{domain.owner.name}")
        # Disks and seeds of VMs whose domain was never defined (deleted mid-way, finalizer forced).
        wanted = {domain_name(vm.ref.namespace, vm.ref.name) for vm in vms}
        vm_dirs = self.config.state_dir / "vms"
        for leftover in sorted(vm_dirs.iterdir()) if vm_dirs.is_dir() else []:
            if leftover.name not in wanted:
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(f"files of deleted VM in {leftover}")
        for address in self.binder.held():
            if address not in held:
                self.binder.release(address)
                removed.append(f"VF {address} left on vfio-pci")
        for line in removed:
            log.warning("crash recovery: removed %s", line)
        return removed
