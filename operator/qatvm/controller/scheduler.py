"""The scheduling loop: decides in memory, oldest VM first, and writes many decisions at once.

Each decision is made on the picture and reserves its VFs there at once, so the next decision,
made before the first write has returned, cannot take them; up to `concurrency` writes are
under way together. Each allocation is written with the resourceVersion the decision was made
on, so a decision made on a stale VM fails instead of landing; a write that fails gives its VFs
back and the VM is judged again. A write whose outcome is unknown (a timeout, a 5xx, a dropped
connection) keeps its VFs reserved, for it may still land; it is sent again, on the same version,
until the API server answers for sure (`_settle`). A VF becomes free only once the VM holding it
is gone and its node lists it as given back.

A waiting VM is judged again only when something that could change its verdict changed (its own
object, freed capacity, inventories, nodes, quotas), and its status and events are written only
when its verdict changes: a hundred VMs that cannot fit cost nothing while others come and go.
The picture is filled from a full LIST before the first decision, so a restarted controller
knows every allocation it or its predecessor made.

A VM deleted before it was placed has no agent to take the agent's finalizer (which the API
server puts on every VM) off it: the scheduler does, on the version it saw, so a placement that
landed meanwhile makes the write fail rather than leak VFs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Node

from qatvm import metrics
from qatvm.api import conditions as cond
from qatvm.api.vm import FINALIZER, AllocatedDevice, Phase, QatVirtualMachine
from qatvm.controller.picture import ClusterPicture
from qatvm.controller.placement import NoFit, Placement, Strategy
from qatvm.controller.resources import describe
from qatvm.events import EventRecorder
from qatvm.kube import QatNodeResource, QatVirtualMachineResource
from qatvm.kube_writes import Writer

log = logging.getLogger(__name__)

CONCURRENCY = 32
MAX_RETRY_SECONDS = 30.0
# The API server answered: the write did not happen.
SURE_FAILURES = frozenset({400, 403, 404, 409, 422})


class NotLeading(RuntimeError):
    pass


def _age(body: dict[str, Any]) -> tuple[str, str, str]:
    # creationTimestamp has whole seconds: VMs applied together tie, and the tie goes to the name,
    # which people can predict (vm-8 before vm-9), where a UID would be a coin toss.
    meta = body["metadata"]
    return meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta["name"]


class Scheduler:
    def __init__(
        self,
        client: AsyncClient,
        writer: Writer,
        strategy: Strategy = Strategy.PACK,
        leading: Callable[[], bool] = lambda: True,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.client = client  # reads (the first LIST)
        self.writer = writer  # the writes of every decision
        # Asked before every write: a controller that may have lost its lease writes nothing.
        self.leading = leading
        self.events = EventRecorder(writer, "qatvm-controller")
        self.strategy = strategy
        self.picture = ClusterPicture()
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(concurrency)
        # uid -> (resourceVersion, never, epoch) of its last verdict: judged again only when one moves.
        self.judged: dict[str, tuple[str, bool, int]] = {}
        self.writing: set[str] = set()
        # Deleted, never placed, still held by the agent's finalizer: uid -> newest body.
        self.leaving: dict[str, dict[str, Any]] = {}
        # Set once the first full LIST is in: before it, an absent node may just be unread.
        self.bootstrapped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- events in -------------------------------------------------------------------------------

    def on_vm(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_vm(body, deleted)
        if deleted:
            self.judged.pop(body["metadata"]["uid"], None)
        self._see_leaving(body, deleted)
        self.wake.set()

    def on_node(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_node(body, deleted)
        self.wake.set()

    def on_inventory(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_inventory(body, deleted)
        self.wake.set()

    def on_namespace(self, body: dict[str, Any], deleted: bool) -> None:
        self.picture.observe_namespace(body, deleted)
        self.wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """LIST everything once, before any decision."""
        async for node in self.client.list(Node):
            self.picture.observe_node(node.to_dict())
        async for inventory in self.client.list(QatNodeResource):
            self.picture.observe_inventory(inventory.to_dict())
        async for namespace in self.client.list(Namespace):
            self.picture.observe_namespace(namespace.to_dict())
        async for vm in self.client.list(QatVirtualMachineResource, namespace="*"):
            body = vm.to_dict()
            self.picture.observe_vm(body)
            self._see_leaving(body, deleted=False)
        self.bootstrapped.set()
        self.wake.set()

    async def run(self) -> None:
        await _retrying(self.bootstrap, "listing the cluster")
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if not await _retrying(self.schedule_pending, "scheduling", attempts=1):
                    self.wake.set()
        finally:
            for task in self._tasks:
                task.cancel()

    def _stamp(self, body: dict[str, Any], never: bool) -> tuple[str, bool, int]:
        return body["metadata"]["resourceVersion"], never, self._epoch(never)

    def _epoch(self, never: bool) -> int:
        # A verdict of "never" depends only on the layout, not on what others hold.
        return self.picture.layout_epoch if never else self.picture.epoch

    def _due(self, uid: str) -> bool:
        body = self.picture.pending.get(uid)
        if body is None or uid in self.writing or uid in self.picture.reservations:
            return False
        judged = self.judged.get(uid)
        if judged is None:
            return True
        version, never, epoch = judged
        return version != body["metadata"]["resourceVersion"] or epoch != self._epoch(never)

    async def schedule_pending(self) -> None:
        pending = self.picture.pending
        # Only the due are sorted: most waiting VMs have a write under way or a verdict that still
        # holds, and every watch event wakes this loop (5000 such VMs: 1.2 ms a wake, 2.8 ms sorting all).
        for uid in sorted([uid for uid in pending if self._due(uid)], key=lambda uid: _age(pending[uid])):
            if not self._due(uid):
                continue
            await self.slots.acquire()
            if not self._due(uid):  # the picture moved while waiting for a slot
                self.slots.release()
                continue
            if not self.leading():
                self.slots.release()
                raise NotLeading("the lease may have run out; not placing anything")
            body = self.picture.pending[uid]
            try:
                self._judge(uid, body)
            except Exception:  # noqa: BLE001 - one VM the controller cannot read must not stop the others
                log.exception("cannot judge VM %s/%s", body["metadata"].get("namespace"), body["metadata"].get("name"))
                self.judged[uid] = self._stamp(body, never=True)
                self.slots.release()

    def _judge(self, uid: str, body: dict[str, Any]) -> None:
        """Decide for one VM now; start its write, or give the slot back when nothing is to be written."""
        vm = QatVirtualMachine.model_validate(body)
        decision = self.picture.decide(vm, self.strategy)
        never = isinstance(decision, NoFit) and decision.never
        self.judged[uid] = self._stamp(body, never)
        if isinstance(decision, Placement):
            self._start(uid, self._record(body, vm, decision))
            return
        update = self._no_fit_status(vm, decision)
        if update is None:
            self.slots.release()
            return
        self._start(uid, self._report_no_fit(body, vm, decision, update))

    def _start(self, uid: str, write: Coroutine[Any, Any, None]) -> None:
        self.writing.add(uid)
        self._spawn(self._write(uid, write), f"write {uid}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, uid: str, write: Coroutine[Any, Any, None]) -> None:
        try:
            await write
        except ApiError as error:
            if error.status.code in SURE_FAILURES:
                self.picture.release(uid)
            else:
                self.picture.doubt(uid)
            if error.status.code == 404:
                self.picture.pending.pop(uid, None)
            else:
                log.info("writing to VM %s failed (%s); judging it again", uid, error.status.message)
            self.judged.pop(uid, None)
        except NotLeading:
            self.picture.release(uid)
            self.judged.pop(uid, None)
        except Exception:  # noqa: BLE001 - the VM is judged again; the outcome may be unknown
            log.exception("writing to VM %s failed; judging it again", uid)
            self.picture.doubt(uid)
            self.judged.pop(uid, None)
        finally:
            self.writing.discard(uid)
            self.wake.set()

    async def _record(self, body: dict[str, Any], vm: QatVirtualMachine, placement: Placement) -> None:
        meta = vm.metadata
        generation = meta.get("generation")
        summary = f"{len(placement.vfs)} VFs on {placement.node}: {', '.join(v.pci_address for v in placement.vfs)}"
        if placement.resources is not None:
            summary += f"; {describe(placement.resources)}"
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
        if placement.resources is not None:
            status["resources"] = placement.resources.wire()
        try:
            updated = await self._patch_status(meta, status)
        except Exception as error:
            if not _surely_failed(error):
                self._spawn(self._settle(vm.ref.uid, meta, status), f"settle {vm.ref.uid}")
            raise
        finally:
            self.slots.release()
        self.picture.observe_vm(updated)
        metrics.placed(meta["creationTimestamp"])
        await self.events.post(body, "Normal", "Scheduled", summary)
        log.info("placed %s/%s: %s", meta["namespace"], meta["name"], summary)

    def _no_fit_status(self, vm: QatVirtualMachine, no_fit: NoFit) -> dict[str, Any] | None:
        """The status a VM that cannot be placed should have; None when it has it already."""
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
            return None
        return {"phase": Phase.PENDING.value, "conditions": [c.wire() for c in conditions]}

    async def _report_no_fit(self, body: dict[str, Any], vm: QatVirtualMachine, no_fit: NoFit, status: dict[str, Any]) -> None:
        try:
            updated = await self._patch_status(vm.metadata, status)
        finally:
            self.slots.release()
        # Keep the written version, so the next verdict is compared with what is stored.
        self.picture.observe_vm(updated)
        self.judged[vm.metadata["uid"]] = self._stamp(updated, no_fit.never)
        await self.events.post(body, "Warning", "FailedScheduling", no_fit.message)

    # -- deleted before placed --------------------------------------------------------------------

    def _see_leaving(self, body: dict[str, Any], deleted: bool) -> None:
        meta = body["metadata"]
        uid = meta["uid"]
        leaving = (
            not deleted and meta.get("deletionTimestamp") and FINALIZER in (meta.get("finalizers") or [])
            and not (body.get("status") or {}).get("nodeName")
        )
        if not leaving:
            self.leaving.pop(uid, None)
            return
        known = uid in self.leaving
        self.leaving[uid] = body
        if not known:
            self._spawn(self._let_go(uid), f"finalizer {uid}")

    async def _let_go(self, uid: str) -> None:
        """Take the agent's finalizer off a deleted, never placed VM; a conflict waits for the
        newer version (which may turn out placed: then its agent lets go)."""
        delay = 0.5
        try:
            while (body := self.leaving.get(uid)) is not None and self.leading():
                meta = body["metadata"]
                patch = {"metadata": {"finalizers": [f for f in meta.get("finalizers") or [] if f != FINALIZER],
                                      "resourceVersion": meta["resourceVersion"]}}
                try:
                    await self.writer.patch_vm(meta["namespace"], meta["name"], patch)
                    return
                except ApiError as error:
                    if error.status.code == 404:
                        return
                    if error.status.code != 409:
                        log.warning("cannot release the deleted VM %s/%s: %s", meta["namespace"], meta["name"], error.status.message)
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_SECONDS)
        finally:
            self.leaving.pop(uid, None)

    async def _settle(self, uid: str, meta: dict[str, Any], status: dict[str, Any]) -> None:
        """After a placement write of unknown outcome, whose VFs stay reserved (`doubt`): until the
        VM's version moves, the write may still land, and if nothing else changes the VM no watch
        event ever says whether it did. So the same write is sent again on the same version: only
        one of the two can land, and a refusal means the VM moved, which a GET shows."""
        delay = 0.5
        while self.leading():
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_SECONDS)
            reservation = self.picture.reservations.get(uid)
            if reservation is None or not reservation.doubtful:
                return  # the watch has told
            try:
                try:
                    found: dict[str, Any] | None = await self._patch_status(meta, status)
                except ApiError as error:
                    if error.status.code not in (404, 409):
                        raise
                    found = await self._current(meta)
            except NotLeading:
                return  # the next leader lists everything
            except Exception as error:  # noqa: BLE001 - still unknown: try again later
                log.info("VM %s/%s: whether its placement landed is still unknown (%s)", meta["namespace"], meta["name"], error)
                continue
            if found is None:
                self.picture.observe_vm({"metadata": meta}, deleted=True)
            else:
                # Placed (by either write), or moved on without a placement: then neither can land.
                self.picture.observe_vm(found)
            self.judged.pop(uid, None)
            self.wake.set()
            return

    async def _current(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The VM as the API server has it now; None if it is gone (or replaced by a namesake)."""
        try:
            found = (await self.client.get(QatVirtualMachineResource, meta["name"], namespace=meta["namespace"])).to_dict()
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return found if found["metadata"]["uid"] == meta["uid"] else None

    async def _patch_status(self, meta: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        if not self.leading():
            raise NotLeading("the lease may have run out; not writing")
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        return await self.writer.patch_vm(meta["namespace"], meta["name"], patch, status=True)


def _surely_failed(error: Exception) -> bool:
    return isinstance(error, NotLeading) or (isinstance(error, ApiError) and error.status.code in SURE_FAILURES)


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
