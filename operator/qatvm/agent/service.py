"""One node's agent as a plain object: kopf handlers and the inventory loop call into it.

Node-changing work (sysfs writes, libvirt calls) runs in a worker thread, one VM at a time under
a lock, because two VMs' steps on the same hypervisor and sysfs must not interleave.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lightkube import AsyncClient
from lightkube.types import PatchType

from qatvm.agent.config import AgentConfig
from qatvm.agent.inventory import InventoryPublisher, scan
from qatvm.agent.reconciler import Outcome, VmReconciler
from qatvm.agent.status import device_health
from qatvm.api.base import ObjectRef
from qatvm.api.qatnode import QatNodeStatus
from qatvm.api.vm import QatVirtualMachine
from qatvm.events import EventRecorder
from qatvm.hypervisor import open_hypervisor
from qatvm.kube import QatVirtualMachineResource
from qatvm.node.binding import VfBinder
from qatvm.node.sysfs import open_sysfs

log = logging.getLogger(__name__)


class NodeAgent:
    def __init__(self, config: AgentConfig, client: AsyncClient) -> None:
        self.config = config
        self.client = client
        self.events = EventRecorder(client, f"qatvm-agent/{config.node}")
        self.sysfs = open_sysfs(config.sysfs)
        self.reconciler = VmReconciler(
            config,
            VfBinder(self.sysfs, config.state_dir / "binding"),
            open_hypervisor(config.libvirt_uri),
        )
        self.publisher = InventoryPublisher(config, client)
        self.lock = asyncio.Lock()
        # The VMs placed on this node, as last seen; the source of `allocatedTo`.
        self.vms: dict[str, QatVirtualMachine] = {}

    def observe(self, body: dict[str, Any], deleted: bool) -> None:
        uid = body["metadata"]["uid"]
        if deleted:
            self.vms.pop(uid, None)
        else:
            self.vms[uid] = QatVirtualMachine.model_validate(body)

    def holders(self) -> dict[str, ObjectRef]:
        return {d.pci_address: vm.ref for vm in self.vms.values() for d in vm.status.devices}

    async def apply(self, vm: QatVirtualMachine) -> Outcome:
        async with self.lock:
            return await asyncio.to_thread(self.reconciler.apply, vm)

    async def remove(self, vm: QatVirtualMachine) -> None:
        async with self.lock:
            await asyncio.to_thread(self.reconciler.remove, vm.ref, vm.status.devices)
        self.vms.pop(vm.ref.uid, None)

    async def recover(self) -> list[str]:
        """On start, before any handler runs: clean up after whatever crashed before."""
        vms = [
            QatVirtualMachine.model_validate(item.to_dict())
            async for item in self.client.list(
                QatVirtualMachineResource, namespace="*", fields={"status.nodeName": self.config.node}
            )
        ]
        for vm in vms:
            self.vms[vm.ref.uid] = vm
        async with self.lock:
            return await asyncio.to_thread(self.reconciler.sweep, vms)

    async def refresh_inventory(self) -> QatNodeStatus:
        status = await asyncio.to_thread(scan, self.config, self.sysfs, self.holders())
        await self.publisher.publish(status)
        await self._report_device_health(status)
        return status

    async def watch_inventory(self) -> None:
        """Rescan sysfs for VFs that appear, vanish or turn unhealthy; publish what changed."""
        while True:
            try:
                await self.refresh_inventory()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged in full; the next scan tries again
                log.exception("publishing the inventory failed")
            await asyncio.sleep(self.config.scan_seconds)

    async def _report_device_health(self, status: QatNodeStatus) -> None:
        present = {vf.pci_address: vf for vf in status.vfs}
        for vm in list(self.vms.values()):
            if vm.metadata.get("deletionTimestamp"):
                continue
            addresses = [d.pci_address for d in vm.status.devices]
            missing = [a for a in addresses if a not in present]
            unhealthy = [a for a in addresses if a in present and not present[a].healthy]
            change = device_health(vm, missing, unhealthy)
            if change is None:
                continue
            meta = vm.metadata
            updated = await self.client.patch(
                QatVirtualMachineResource.Status, meta["name"], {"status": change},
                namespace=meta["namespace"], patch_type=PatchType.MERGE,
            )
            self.observe(updated.to_dict(), deleted=False)
            healthy = not missing and not unhealthy
            message = change["conditions"][-1]["message"] if not healthy else "every VF is present and healthy again"
            await self.events.post(vm.model_dump(by_alias=True, mode="json"), "Normal" if healthy else "Warning",
                        "DevicesHealthy" if healthy else "DeviceFailure", message)
