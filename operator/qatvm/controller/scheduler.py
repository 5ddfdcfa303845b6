"""The scheduling loop: keeps the cluster picture from watch events and places pending VMs.

One loop places one VM at a time, so two VMs are never given the same VF by this process; the
allocation is written with the resourceVersion the decision was made on, so a decision made on
stale data fails instead of landing; and a VF becomes free only when its VM is really gone (the
agent's finalizer has given the VF back). The picture is rebuilt from a full LIST on start, before
the first decision, so a restarted controller knows every allocation it or its predecessor made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from qatvm import metrics
from qatvm.api import conditions as cond
from qatvm.api.qatnode import QatNodeStatus
from qatvm.api.vm import NODE_LABEL, AllocatedDevice, Phase, QatVirtualMachine
from qatvm.controller.placement import NodeInventory, NoFit, Placement, Strategy, place
from qatvm.events import EventRecorder
from qatvm.kube import QatNodeResource, QatVirtualMachineResource

log = logging.getLogger(__name__)


@dataclass
class ClusterPicture:
    """What the controller knows: node labels, inventories, allocations and unscheduled VMs."""

    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    inventories: dict[str, QatNodeStatus] = field(default_factory=dict)
    # uid -> (node, pci addresses): set once a VM is placed, dropped only when it is deleted.
    allocations: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)

    def taken(self) -> set[tuple[str, str]]:
        return {(node, bdf) for node, bdfs in self.allocations.values() for bdf in bdfs}

    def nodes(self) -> list[NodeInventory]:
        # Only nodes with both a Node object and an inventory can take VMs.
        return [
            NodeInventory(name=name, labels=self.labels[name], vfs=tuple(inv.vfs))
            for name, inv in self.inventories.items()
            if name in self.labels
        ]

    def observe_vm(self, body: dict[str, Any], deleted: bool = False) -> None:
        uid = body["metadata"]["uid"]
        if deleted:
            self.pending.pop(uid, None)
            self.allocations.pop(uid, None)
            return
        status = body.get("status") or {}
        if status.get("nodeName"):
            # Allocations never shrink while the VM exists (spec.qat is frozen once placed),
            # so an older event arriving late can never free a VF early.
            bdfs = tuple(d["pciAddress"] for d in status.get("devices") or ())
            self.allocations[uid] = (status["nodeName"], bdfs)
            self.pending.pop(uid, None)
        elif body["metadata"].get("deletionTimestamp"):
            self.pending.pop(uid, None)  # going away: never place it, even if it waited before
        elif uid not in self.allocations:
            self.pending[uid] = body

    def observe_node(self, body: dict[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        if deleted:
            self.labels.pop(name, None)
        else:
            self.labels[name] = dict(body["metadata"].get("labels") or {})

    def observe_inventory(self, body: dict[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        status = body.get("status")
        if deleted or not status:
            self.inventories.pop(name, None)
        else:
            self.inventories[name] = QatNodeStatus.model_validate({"vfs": status.get("vfs") or []})


class NotLeading(RuntimeError):
    pass


class Scheduler:
    def __init__(
        self, client: AsyncClient, strategy: Strategy = Strategy.PACK, leading: Callable[[], bool] = lambda: True
    ) -> None:
        self.client = client
        # Asked before every allocation: a controller that may have lost its lease writes nothing.
        self.leading = leading
        self.events = EventRecorder(client, "qatvm-controller")
        self.strategy = strategy
        self.picture = ClusterPicture()
        self.wake = asyncio.Event()

    # -- events in: each may free or add capacity, so each wakes the loop ----------------------

    def on_vm(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_vm(body, deleted)
        self.wake.set()

    def on_node(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_node(body, deleted)
        self.wake.set()

    def on_inventory(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_inventory(body, deleted)
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """LIST everything once, before any decision; finish labels a crash left undone."""
        async for node in self.client.list(Node):
            self.picture.observe_node(node.to_dict())
        async for inventory in self.client.list(QatNodeResource):
            self.picture.observe_inventory(inventory.to_dict())
        async for vm in self.client.list(QatVirtualMachineResource, namespace="*"):
            body = vm.to_dict()
            self.picture.observe_vm(body)
            placed_on = (body.get("status") or {}).get("nodeName")
            if placed_on and (body["metadata"].get("labels") or {}).get(NODE_LABEL) != placed_on:
                await self._label(body, placed_on)
        self.wake.set()

    async def run(self) -> None:
        await _retrying(self.bootstrap, "listing the cluster")
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not await _retrying(self.schedule_pending, "scheduling", attempts=1):
                self.wake.set()

    async def schedule_pending(self) -> None:
        oldest_first = sorted(self.picture.pending.values(), key=lambda b: b["metadata"].get("creationTimestamp") or "")
        for body in oldest_first:
            if body["metadata"]["uid"] in self.picture.pending:
                await self._schedule(body)

    async def _schedule(self, body: dict[str, Any]) -> None:
        if not self.leading():
            raise NotLeading("the lease may have run out; not placing anything")
        vm = QatVirtualMachine.model_validate(body)
        decision = place(vm.spec.qat, vm.spec.node_selector, self.picture.nodes(), self.picture.taken(), self.strategy)
        try:
            if isinstance(decision, Placement):
                await self._record(body, vm, decision)
            else:
                await self._report_no_fit(body, vm, decision)
        except ApiError as error:
            if error.status.code in (404, 409):
                # Changed or gone since this decision: its next event brings it back if needed.
                self.picture.pending.pop(vm.metadata["uid"], None)
                return
            raise

    async def _record(self, body: dict[str, Any], vm: QatVirtualMachine, placement: Placement) -> None:
        meta = vm.metadata
        generation = meta.get("generation")
        summary = f"{len(placement.vfs)} VFs on {placement.node}: {', '.join(v.pci_address for v in placement.vfs)}"
        conditions = cond.set_condition(vm.status.conditions, cond.SCHEDULED, "True", "Scheduled", summary, generation)
        conditions = cond.set_condition(conditions, cond.READY, "False", "Scheduled", f"waiting for the agent on {placement.node}", generation)
        conditions = cond.set_condition(conditions, cond.RECONCILING, "True", "Scheduled", "binding VFs and starting the domain", generation)
        conditions = cond.remove_condition(conditions, cond.STALLED)
        devices = [
            AllocatedDevice(
                pci_address=v.pci_address, pf_address=v.pf_address, device_id=v.device_id,
                numa_node=v.numa_node, iommu_group=v.iommu_group, driver=v.driver,
            )
            for v in placement.vfs
        ]
        status = {
            "phase": Phase.SCHEDULED.value,
            "nodeName": placement.node,
            "pciAddresses": ",".join(d.pci_address for d in devices),
            "devices": [d.wire() for d in devices],
            "conditions": [c.wire() for c in conditions],
        }
        self.picture.observe_vm(await self._patch_status(meta, status))
        metrics.placed(meta["creationTimestamp"])
        await self._label(body, placement.node)
        await self.events.post(body, "Normal", "Scheduled", summary)
        log.info("placed %s/%s: %s", meta["namespace"], meta["name"], summary)

    async def _report_no_fit(self, body: dict[str, Any], vm: QatVirtualMachine, no_fit: NoFit) -> None:
        generation = vm.metadata.get("generation")
        conditions = cond.set_condition(vm.status.conditions, cond.SCHEDULED, "False", no_fit.reason, no_fit.message, generation)
        conditions = cond.set_condition(conditions, cond.READY, "False", no_fit.reason, "not scheduled", generation)
        if no_fit.never:
            conditions = cond.set_condition(conditions, cond.STALLED, "True", no_fit.reason, no_fit.message, generation)
            conditions = cond.remove_condition(conditions, cond.RECONCILING)
        else:
            conditions = cond.set_condition(conditions, cond.RECONCILING, "True", "Pending", "waiting for free VFs", generation)
            conditions = cond.remove_condition(conditions, cond.STALLED)
        if vm.status.phase is Phase.PENDING and cond.same(vm.status.conditions, conditions):
            return
        updated = await self._patch_status(vm.metadata, {"phase": Phase.PENDING.value, "conditions": [c.wire() for c in conditions]})
        # Keep the written version, so the next pass compares against what is stored.
        self.picture.observe_vm(updated)
        await self.events.post(body, "Warning", "FailedScheduling", no_fit.message)

    async def _patch_status(self, meta: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        updated = await self.client.patch(
            QatVirtualMachineResource.Status, meta["name"], patch, namespace=meta["namespace"], patch_type=PatchType.MERGE
        )
        return updated.to_dict()  # type: ignore[no-any-return]

    async def _label(self, body: dict[str, Any], node: str) -> None:
        meta = body["metadata"]
        await self.client.patch(
            QatVirtualMachineResource, meta["name"], {"metadata": {"labels": {NODE_LABEL: node}}},
            namespace=meta["namespace"], patch_type=PatchType.MERGE,
        )


async def _retrying(step: Callable[[], Any], what: str, attempts: int | None = None) -> bool:
    """Run `step` until it succeeds (or `attempts` run out); an API outage must not end the loop."""
    tried = 0
    while True:
        try:
            await step()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - logged in full, then retried
            log.exception("%s failed; retrying", what)
            metrics.reconcile_error("controller", error)
            tried += 1
            await asyncio.sleep(1.0)
            if attempts is not None and tried >= attempts:
                return False
