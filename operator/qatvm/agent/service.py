"""One node's agent as a plain object: kopf's watch events and two loops call into it.

The agent acts for the VMs whose `status.nodeName` (written by the controller only) is its node;
the watch carries that as a field selector, so nothing a tenant writes (labels, annotations,
finalizers) decides which agent acts, or whether a VM exists. Whether a VM exists is decided
by its UID: a watch event only marks a UID for a look; the API says whether it still exists.

Events put UIDs on a reconcile queue (`KeyedQueue`): one pass per VM at a time, different VMs at
once, blocking node work in threads. A pass compares the VM with what the node holds and writes
only what differs: the status (when it says something new), and the finalizer where it is
missing (the API server adds it at creation; a VM older than that policy, or one an admin
replaced without it, gets it from the agent).

Two loops run beside it: the inventory loop publishes the QatNode, coalesced (at most once per
`PUBLISH_INTERVAL`, and only on change); the audit loop compares everything the node holds
(binding records, domains, files) with a fresh LIST, by UID, so nothing outlives its VM even
when a deletion was missed (a restart, a re-list, a finalizer removed by force).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from qatvm import metrics
from qatvm.agent import status as report
from qatvm.agent.access import HOST, NodeAccess
from qatvm.agent.config import AgentConfig
from qatvm.agent.inventory import InventoryPublisher, scan
from qatvm.agent.node_lease import NodeLease
from qatvm.agent.reconciler import AllocationMissing, Outcome, VmReconciler
from qatvm.agent.workqueue import KeyedQueue
from qatvm.api.base import ObjectRef
from qatvm.api.conditions import NODE_UNREACHABLE, READY
from qatvm.api.cpulist import parse_cpulist
from qatvm.api.qatnode import QatNodeStatus
from qatvm.api.vm import FINALIZER, QatVirtualMachine
from qatvm.events import EventRecorder
from qatvm.kube import QatVirtualMachineResource
from qatvm.kube_writes import Writer
from qatvm.node.binding import HeldByAnotherError, VfBinder

log = logging.getLogger(__name__)

# The QatNode is written at most this often, so a burst of VMs costs a few writes, not one each
# (150 VMs on 10 nodes: 0.16 writes per VM at 1 s, 0.18-0.21 at 0.5 s, with no slower Ready).
PUBLISH_INTERVAL = 1.0
# How long a VM waits for its VFs to be published as its own before they are bound.
PUBLISH_TIMEOUT = 15.0
MAX_RETRY_SECONDS = 30.0
T = TypeVar("T")


class NodeAgent:
    def __init__(
        self, config: AgentConfig, client: AsyncClient, writer: Writer, access: NodeAccess = HOST, workers: int = 16
    ) -> None:
        self.config = config
        self.client = client  # reads: the audit's LIST, a suspect's GET
        self.writer = writer  # the writes of every pass
        self.events = EventRecorder(writer, f"qatvm-agent/{config.node}")
        self.sysfs = access.sysfs(config.sysfs)
        self.reconciler = VmReconciler(
            config,
            VfBinder(self.sysfs, config.state_dir / "binding"),
            access.hypervisor(config.libvirt_uri),
        )
        self.publisher = InventoryPublisher(config, client, writer)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node-work")
        # Scans have a thread of their own: VMs wait for the publish a scan makes, so it must never
        # queue behind their work.
        self.scanner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan")
        # Passes outnumber threads: a pass may wait on the API or for a publish, holding no thread,
        # and one VM's pass may wait for another's cleanup.
        self.queue = KeyedQueue(self.reconcile, concurrency=4 * workers)
        # The VMs placed on this node, as last seen alive, by UID.
        self.vms: dict[str, dict[str, Any]] = {}
        # Each of those bodies parsed, while it is the one held: passes, scans and health checks
        # all read them, and parsing every VM of the node for each of those was a tenth of the
        # agent's CPU in a burst.
        self._models: dict[str, tuple[dict[str, Any], QatVirtualMachine]] = {}
        # The resourceVersion of our own last write to a VM while the watch has not yet brought
        # its echo: the watch delivers in order, so every event before the echo is older than
        # what we hold, and taking it would make the next pass write from a stale copy (a 409).
        self.ahead: dict[str, str] = {}
        # UIDs a watch or an audit says may be gone: the next pass asks the API.
        self.suspects: dict[str, ObjectRef | None] = {}
        # What this process applied, per UID: the generation and what came of it.
        self.applied: dict[str, tuple[int | None, Outcome]] = {}
        self.failures: dict[str, int] = {}
        self.health: dict[str, report.DeviceHealth] = {}
        self.inventory = QatNodeStatus(vfs=[])
        self._dirty = asyncio.Event()
        self._published = asyncio.Event()
        self.lease = NodeLease(client, config.node, lease_seconds=config.lease_seconds,
                               renew_seconds=config.lease_renew_seconds, on_renewed=self.reassert)

    # -- events in ---------------------------------------------------------------------------

    def observe(self, body: dict[str, Any], deleted: bool) -> None:
        """A watch event: remember the newest body and queue its UID. DELETED, under a field
        selector, also means "no longer placed here"; the pass asks the API which."""
        meta = body["metadata"]
        uid = meta["uid"]
        known = self.vms.get(uid)
        if deleted:
            self._drop(uid)
            self.ahead.pop(uid, None)
            self.suspects[uid] = _ref(body)
        else:
            ahead = self.ahead.get(uid)
            if ahead is not None:
                if ahead == meta.get("resourceVersion"):
                    del self.ahead[uid]
                return  # older than our own write, or its echo: what we hold is newer or the same
            if known is not None and known["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
                return
            # Kept, not copied: kopf parses every event afresh, and no pass changes a body in place.
            self.vms[uid] = body
        if deleted or known is None or _placement(known) != _placement(body):
            self._dirty.set()  # who holds which VF may have changed: publish soon
        self.queue.add(uid)

    # -- one VM ------------------------------------------------------------------------------

    async def reconcile(self, uid: str) -> float | None:
        """One pass for one VM; returns the seconds after which to try again, if it must."""
        if uid in self.suspects:
            ref = self.suspects.pop(uid)
            body = await self._confirm(uid, ref)
            if body is None:
                self._drop(uid)
                await self._clean_up_vanished(uid, ref)
                return None
            self.vms[uid] = body
            self.ahead.pop(uid, None)
        body = self.vms.get(uid)
        if body is None:
            return None
        vm = self._model(uid, body)
        if vm.status.node_name != self.config.node:
            return None
        try:
            if vm.metadata.get("deletionTimestamp"):
                return await self._finish_deletion(vm)
            if FINALIZER not in (vm.metadata.get("finalizers") or []):
                vm = await self._add_finalizer(vm)
            if not vm.status.devices:
                return None
            return await self._converge(vm)
        except ApiError as error:
            if error.status.code == 409:
                return 0.2  # changed under us: the newer version's event is on its way
            if error.status.code == 404:
                self.suspects[uid] = vm.ref
                return 0.0
            raise

    def dedicated_cpus(self) -> frozenset[int]:
        """Every CPU a VM on this node holds as dedicated: the shared ones are the rest."""
        held = (vm.status.resources for vm in self._placed())
        return frozenset().union(*(parse_cpulist(r.cpus) for r in held if r is not None and r.dedicated and r.cpus))

    async def _converge(self, vm: QatVirtualMachine) -> float | None:
        uid = vm.ref.uid
        generation = vm.metadata.get("generation")
        done = self.applied.get(uid)
        if done is None or done[0] != generation:
            try:
                self.reconciler.check_allocation(vm, self._scanned())
                await self._wait_published_as_held(vm)
                # The VFs were in the scan that published them as this VM's: no second scan.
                outcome = await self._in_thread(self.reconciler.apply, vm, self._scanned(), self.dedicated_cpus())
            except AllocationMissing:
                return None
            except Exception as error:  # noqa: BLE001 - reported on the VM, then retried
                if isinstance(error, HeldByAnotherError):
                    # A holder this node still records: make sure it is looked at now.
                    self.suspects.setdefault(error.holder.uid, error.holder)
                    self.queue.add(error.holder.uid)
                return await self._report_failure(vm, error)
            # The VFs' new driver is published with the next scan: it changes no one's holdings.
            self.applied[uid] = (generation, outcome)
            self.failures.pop(uid, None)
        else:
            outcome = done[1]
        status = report.after_apply(vm, outcome, self.health.get(uid, report.DeviceHealth()))
        if report.changes(vm, status):
            health = report.health_changed(vm, status)
            before = vm.status.phase
            await self._write_status(vm, status)
            if health is not None:
                await self.events.post(
                    _event_body(vm), "Normal" if health.status == "True" else "Warning",
                    "DevicesHealthy" if health.status == "True" else "DeviceFailure", health.message or "",
                )
            elif before is not outcome.phase:
                await self.events.post(_event_body(vm), "Normal", outcome.phase.value, outcome.message)
        return None

    async def _report_failure(self, vm: QatVirtualMachine, error: Exception) -> float:
        uid = vm.ref.uid
        tries = self.failures[uid] = self.failures.get(uid, 0) + 1
        metrics.reconcile_error("agent", error)
        log.warning("%s/%s: %s", vm.ref.namespace, vm.ref.name, error)
        status = report.after_failure(vm, error)
        if report.changes(vm, status):
            await self._write_status(vm, status)
            await self.events.post(_event_body(vm), "Warning", "Failed", str(error))
        return float(min(MAX_RETRY_SECONDS, 2 ** (tries - 1)))

    async def reassert(self, everything: bool) -> None:
        """After a renewal of the node lease: a pass for every VM once the lease had lapsed (the
        controller has marked them unreachable), else for those still marked so (the controller
        may have marked one on a lease it read just before this renewal). A pass writes the VM's
        status where it differs from what the node has; nothing else would say they are fine."""
        for vm in self._placed():
            ready = vm.status.condition(READY)
            if everything or (ready is not None and ready.reason == NODE_UNREACHABLE):
                self.queue.add(vm.ref.uid)

    async def _finish_deletion(self, vm: QatVirtualMachine) -> float | None:
        uid = vm.ref.uid
        removed = await self._in_thread(self.reconciler.remove, uid)
        self._forget(uid)
        if removed:
            log.info("removed %s/%s: %s", vm.ref.namespace, vm.ref.name, ", ".join(removed))
        finalizers = vm.metadata.get("finalizers") or []
        if FINALIZER in finalizers:
            await self._patch_metadata(vm, {"finalizers": [f for f in finalizers if f != FINALIZER]})
        return None

    async def _clean_up_vanished(self, uid: str, ref: ObjectRef | None) -> None:
        removed = await self._in_thread(self.reconciler.remove, uid)
        self._forget(uid)
        if removed:
            who = f"{ref.namespace}/{ref.name}" if ref else "a VM"
            line = f"removed {', '.join(removed)} of {who} (uid {uid}), which no longer exists"
            log.warning("%s", line)
            await self.events.post(self._node_body(), "Normal", "Recovered", line)

    def _forget(self, uid: str) -> None:
        self.applied.pop(uid, None)
        self.ahead.pop(uid, None)
        self.failures.pop(uid, None)
        self.health.pop(uid, None)
        self._dirty.set()

    async def _confirm(self, uid: str, ref: ObjectRef | None) -> dict[str, Any] | None:
        """The VM with this UID as the API has it now, if it exists and is placed here."""
        if ref is None:
            return None  # only files named by the UID are left; the audit's LIST did not list it
        try:
            found = await self.client.get(QatVirtualMachineResource, ref.name, namespace=ref.namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        body: dict[str, Any] = found.to_dict()
        if body["metadata"].get("uid") != uid or (body.get("status") or {}).get("nodeName") != self.config.node:
            return None
        return body

    # -- writes ------------------------------------------------------------------------------

    async def _add_finalizer(self, vm: QatVirtualMachine) -> QatVirtualMachine:
        return await self._patch_metadata(vm, {"finalizers": [*(vm.metadata.get("finalizers") or []), FINALIZER]})

    async def _patch_metadata(self, vm: QatVirtualMachine, change: dict[str, Any]) -> QatVirtualMachine:
        # resourceVersion makes the list replacement safe: a concurrent change fails with 409.
        patch = {"metadata": {**change, "resourceVersion": vm.metadata["resourceVersion"]}}
        return self._remember(await self.writer.patch_vm(vm.ref.namespace, vm.ref.name, patch))

    async def _write_status(self, vm: QatVirtualMachine, status: dict[str, Any]) -> QatVirtualMachine:
        patch = {"metadata": {"resourceVersion": vm.metadata["resourceVersion"]}, "status": status}
        return self._remember(await self.writer.patch_vm(vm.ref.namespace, vm.ref.name, patch, status=True))

    def _remember(self, body: dict[str, Any]) -> QatVirtualMachine:
        uid = body["metadata"]["uid"]
        if uid not in self.vms:
            return QatVirtualMachine.model_validate(body)
        self.vms[uid] = body
        self.ahead[uid] = body["metadata"]["resourceVersion"]
        return self._model(uid, body)

    def _model(self, uid: str, body: dict[str, Any]) -> QatVirtualMachine:
        """`body`, held in `vms` under `uid`, parsed once. Bodies are replaced, never changed in
        place, so the same object means the same VM."""
        known = self._models.get(uid)
        if known is None or known[0] is not body:
            known = self._models[uid] = (body, QatVirtualMachine.model_validate(body))
        return known[1]

    def _placed(self) -> list[QatVirtualMachine]:
        return [self._model(uid, body) for uid, body in list(self.vms.items())]

    def _drop(self, uid: str) -> None:
        self.vms.pop(uid, None)
        self._models.pop(uid, None)

    # -- the node's holdings against the API ---------------------------------------------------

    async def audit(self) -> None:
        """Compare what the node holds with the VMs placed here, by UID. Holdings are read before
        the LIST, so a UID missing from the LIST had its holdings made before it was gone."""
        holdings = await self._in_thread(self.reconciler.holdings)
        listed: dict[str, dict[str, Any]] = {}
        async for item in self.client.list(
            QatVirtualMachineResource, namespace="*", fields={"status.nodeName": self.config.node}
        ):
            body = item.to_dict()
            listed[body["metadata"]["uid"]] = body
        for uid, body in listed.items():
            known = self.vms.get(uid)
            if known is None or known["metadata"].get("resourceVersion") != body["metadata"].get("resourceVersion"):
                # The LIST is the API's word now: it also ends a wait for an echo a restarted watch
                # may never bring.
                self.vms[uid] = body
                self.ahead.pop(uid, None)
                self.queue.add(uid)
        for uid, ref in holdings.refs.items():
            if uid not in listed:
                self.suspects.setdefault(uid, ref)
                self.queue.add(uid)
        for uid, body in list(self.vms.items()):
            if uid not in listed:
                self.suspects.setdefault(uid, _ref(body))
                self.queue.add(uid)
        in_use = {d["pciAddress"] for body in listed.values() for d in (body.get("status") or {}).get("devices") or []}
        released = await self._in_thread(self.reconciler.release_unowned, holdings.unowned, in_use)
        if released:
            self._dirty.set()
            await self.events.post(self._node_body(), "Normal", "Recovered", f"gave back {', '.join(released)}: no VM holds it")

    async def watch_holdings(self) -> None:
        while True:
            await asyncio.sleep(self.config.audit_seconds)
            await _logged(self.audit(), "checking the node's holdings against the API")

    # -- the inventory -----------------------------------------------------------------------

    async def refresh_inventory(self) -> QatNodeStatus:
        """Scan and publish. `allocatedTo` is the node's word: a VF is held by the VM placed here
        that names it and, over that, by the VM its binding record names, until it is back with
        its host driver."""
        vms = self._placed()
        placed = {d.pci_address: vm.ref for vm in vms for d in vm.status.devices}
        allocations = [held for vm in vms if (held := vm.status.resources)]

        def read() -> QatNodeStatus:
            with self.reconciler.sysfs_lock:
                recorded = {r.address: r.owner for r in self.reconciler.binder.records() if r.owner is not None}
                return scan(self.config, self.sysfs, {**placed, **recorded}, allocations)

        status = await asyncio.get_running_loop().run_in_executor(self.scanner, read)
        self.inventory = status
        await self.publisher.publish(status)
        published, self._published = self._published, asyncio.Event()
        published.set()
        self._check_health(status)
        return status

    async def watch_inventory(self) -> None:
        """Publish what changed: at once when asked after a quiet spell, at most every
        PUBLISH_INTERVAL in a burst, and every scan interval for VFs that appear, vanish or fail."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.config.scan_seconds)
            except TimeoutError:
                pass
            self._dirty.clear()
            await _logged(self.refresh_inventory(), "publishing the inventory")
            await asyncio.sleep(PUBLISH_INTERVAL)

    async def _wait_published_as_held(self, vm: QatVirtualMachine) -> None:
        """Bind nothing before the QatNode says the VM holds its VFs: if the VM then vanished
        without cleanup, the controller still sees the VFs as held until the node gives them back."""
        wanted = {d.pci_address for d in vm.status.devices}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_TIMEOUT
        while True:
            holders = self.publisher.holders_of(wanted)
            if all(ref is not None and ref.uid == vm.ref.uid for ref in holders.values()):
                return
            for ref in holders.values():
                if ref is not None and ref.uid != vm.ref.uid and ref.uid not in self.suspects:
                    # Another VM's record still holds a VF: if that VM is gone, clean it up now.
                    self.suspects[ref.uid] = ref
                    self.queue.add(ref.uid)
            remaining = deadline - loop.time()
            if remaining <= 0:
                taken = {a: r for a, r in holders.items() if r is not None and r.uid != vm.ref.uid}
                raise TimeoutError(
                    f"the QatNode {self.config.node} does not list {', '.join(sorted(wanted))} as allocated to "
                    f"this VM after {PUBLISH_TIMEOUT:.0f}s"
                    + (f"; still held by {', '.join(f'{a}: {r.namespace}/{r.name}' for a, r in sorted(taken.items()))}" if taken else "")
                )
            self._dirty.set()
            published = self._published
            try:
                await asyncio.wait_for(published.wait(), timeout=remaining)
            except TimeoutError:
                continue

    def _scanned(self) -> set[str]:
        return {vf.pci_address for vf in self.inventory.vfs}

    def _check_health(self, status: QatNodeStatus) -> None:
        present = {vf.pci_address: vf for vf in status.vfs}
        for vm in self._placed():
            uid = vm.ref.uid
            addresses = [d.pci_address for d in vm.status.devices]
            health = report.DeviceHealth(
                missing=tuple(a for a in addresses if a not in present),
                unhealthy=tuple(a for a in addresses if a in present and not present[a].healthy),
            )
            if health != self.health.get(uid, report.DeviceHealth()):
                self.health[uid] = health
                if uid in self.applied:
                    self.queue.add(uid)

    # -- plumbing ----------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _node_body(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.config.node}}

    async def close(self) -> None:
        await self.queue.stop()
        await self.events.close()
        await self.writer.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.scanner.shutdown(wait=False, cancel_futures=True)


async def _logged(step: Awaitable[Any], what: str) -> None:
    """Run one round of a loop; a failure is logged in full and the next round tries again."""
    try:
        await step
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("%s failed", what)


def _ref(body: dict[str, Any]) -> ObjectRef | None:
    meta = body.get("metadata") or {}
    try:
        return ObjectRef(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""))
    except ValueError:
        return None


def _placement(body: dict[str, Any]) -> tuple[Any, Any]:
    status = body.get("status") or {}
    return status.get("nodeName"), status.get("devices")


def _event_body(vm: QatVirtualMachine) -> dict[str, Any]:
    """What an Event names of its VM (kind, name, UID, version), without dumping the whole model."""
    return {"apiVersion": vm.api_version, "kind": vm.kind, "metadata": vm.metadata}
