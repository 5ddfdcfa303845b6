"""Nodes whose agent is gone, and what happens to their VMs.

- A node whose Lease (renewed by its agent) is older than the grace period is *unreachable*:
  its VMs get `Ready=False` reason `NodeUnreachable`, nothing new is placed there, and their VFs,
  CPUs and memory stay allocated, because their domains may well still run: nothing is moved
  without fencing. When the agent is back it reconciles and reports its VMs Ready again.
- A node whose Node and QatNode were both deleted (an admin saying it is gone for good) is
  *gone*: its VMs become `Failed` reason `NodeGone` and their allocations are dropped. The
  agent's finalizer stays: only an agent or a cluster admin may take it off (the admission
  policy qatvm-agent-bookkeeping), and the admin who deleted the node does so once sure its
  domains are gone, as the message says.

The watcher runs beside the scheduler in the elected controller and writes only while it leads;
it writes only VM statuses, each conditional on the version it read.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from qatvm.api import conditions as cond
from qatvm.api.lease import NODE_LEASE_NAMESPACE, now, renewed
from qatvm.api.vm import FINALIZER, Phase, QatVirtualMachine
from qatvm.controller.scheduler import NotLeading, Scheduler
from qatvm.kube import QatNodeResource, QatVirtualMachineResource

log = logging.getLogger(__name__)


def unreachable(
    nodes: Iterable[str],
    renewals: Mapping[str, datetime.datetime | None],
    moment: datetime.datetime,
    grace: datetime.timedelta,
    watching_since: datetime.datetime,
) -> dict[str, str]:
    """Each node whose lease is older than `grace`, with why in words.

    A node with no lease at all counts once the watcher has itself run for `grace`: its agent
    had all that time to renew.
    """
    result = {}
    for node in nodes:
        last = renewals.get(node)
        if last is None:
            if moment - watching_since > grace:
                result[node] = f"the agent on {node} has never renewed its node lease"
        elif moment - last > grace:
            seconds = int((moment - last).total_seconds())
            result[node] = f"the agent on {node} has not renewed its node lease for {seconds}s (grace {int(grace.total_seconds())}s)"
    return result


def unreachable_status(vm: QatVirtualMachine, why: str) -> dict[str, Any] | None:
    """Ready=False NodeUnreachable; None when the VM already says so, or says its node is gone."""
    ready = vm.status.condition(cond.READY)
    if ready is not None and ready.reason in (cond.NODE_UNREACHABLE, cond.NODE_GONE):
        return None
    message = f"{why}; the VM may still run there, and keeps its VFs until the node is back or deleted"
    conditions = cond.set_condition(vm.status.conditions, cond.READY, "False", cond.NODE_UNREACHABLE, message, vm.metadata.get("generation"))
    return {"conditions": [c.wire() for c in conditions]}


def gone_status(vm: QatVirtualMachine, node: str) -> dict[str, Any] | None:
    """Failed NodeGone, holding nothing: the node and its VFs no longer exist; None when already so."""
    ready = vm.status.condition(cond.READY)
    if ready is not None and ready.reason == cond.NODE_GONE:
        return None
    message = (
        f"node {node} was deleted (its Node and QatNode); delete this VM and create it again to run it elsewhere "
        f"(the deletion completes once a cluster admin removes the finalizer {FINALIZER})"
    )
    generation = vm.metadata.get("generation")
    conditions = cond.set_condition(vm.status.conditions, cond.READY, "False", cond.NODE_GONE, message, generation)
    conditions = cond.set_condition(conditions, cond.STALLED, "True", cond.NODE_GONE, message, generation)
    conditions = cond.remove_condition(conditions, cond.RECONCILING)
    return {
        "phase": Phase.FAILED.value,
        "devices": [],
        "pciAddresses": "",
        "resources": None,
        "conditions": [c.wire() for c in conditions],
    }


class LostNodeWatcher:
    def __init__(self, client: AsyncClient, scheduler: Scheduler, grace_seconds: float, poll_seconds: float) -> None:
        self.client = client
        self.scheduler = scheduler
        self.grace = datetime.timedelta(seconds=grace_seconds)
        self.poll_seconds = poll_seconds
        self.since = now()

    async def run(self) -> None:
        while True:
            try:
                if self.scheduler.leading() and self.scheduler.bootstrapped.is_set():
                    await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged in full; the next round tries again
                log.exception("checking for lost nodes failed")
            await asyncio.sleep(self.poll_seconds)

    async def check(self) -> None:
        picture = self.scheduler.picture
        renewals = {
            lease.metadata.name: renewed(lease)
            async for lease in self.client.list(Lease, namespace=NODE_LEASE_NAMESPACE)
            if lease.metadata is not None and lease.metadata.name
        }
        # Nodes with a QatNode or VMs: a Node without either runs no agent, and that is fine.
        lost = unreachable(set(picture.inventories) | picture.allocated_nodes(), renewals, now(), self.grace, self.since)
        if set(lost) != picture.unreachable:
            for node in set(lost) - picture.unreachable:
                log.warning("node %s is unreachable: %s", node, lost[node])
            for node in picture.unreachable - set(lost):
                log.info("node %s is reachable again", node)
            picture.set_unreachable(set(lost))
            self.scheduler.wake.set()
        for node, why in lost.items():
            # Gone is final: a node deleted for good also stops renewing its lease, and its VMs must
            # not flip back to unreachable on every round.
            for uid in picture.placed_on(node, unless_ready_reason=frozenset({cond.NODE_UNREACHABLE, cond.NODE_GONE})):
                await self._update(uid, lambda vm, why=why: unreachable_status(vm, why))
        for node in picture.allocated_nodes() - set(picture.labels) - set(picture.inventories):
            uids = picture.placed_on(node, unless_ready_reason=frozenset({cond.NODE_GONE}))
            if uids and await self.gone(node):
                for uid in uids:
                    await self._update(uid, lambda vm, node=node: gone_status(vm, node))

    async def gone(self, node: str) -> bool:
        """Both the Node and its QatNode are deleted (asked of the API server, not the picture)."""
        for resource in (Node, QatNodeResource):
            try:
                await self.client.get(resource, node)
                return False
            except ApiError as error:
                if error.status.code != 404:
                    raise
        return True

    async def _update(self, uid: str, change: Any) -> None:
        placed = self.scheduler.picture.placed.get(uid)
        if placed is None:
            # Deleted (or let go) while this round awaited an earlier VM's write: nothing to mark,
            # and the other VMs of the round must still be marked.
            return
        namespace, name = placed.namespace, placed.name
        try:
            body = (await self.client.get(QatVirtualMachineResource, name, namespace=namespace)).to_dict()
        except ApiError as error:
            if error.status.code == 404:
                return
            raise
        vm = QatVirtualMachine.model_validate(body)
        status = change(vm)
        if vm.ref.uid != uid or status is None:
            return
        if not self.scheduler.leading():
            raise NotLeading("the lease may have run out; not writing")
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": status}
        updated = await self.scheduler.writer.patch_vm(namespace, name, patch, status=True)
        self.scheduler.picture.observe_vm(updated)
        ready = next(c for c in status["conditions"] if c["type"] == cond.READY)
        await self.scheduler.events.post(body, "Warning", ready["reason"], ready["message"])
