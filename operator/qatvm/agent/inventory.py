"""Publish a node's VFs: the QatNode status and the `qatvm.io/vf` resource on the Node.

Both are written only when they change, so an idle node costs the API server nothing but reads
of its own sysfs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from qatvm import metrics
from qatvm.agent.config import AgentConfig
from qatvm.api.base import ObjectRef
from qatvm.api.holdings import hold
from qatvm.api.qatnode import QatNodeStatus
from qatvm.api.vm import ResourceAllocation
from qatvm.kube import QatNodeResource
from qatvm.kube_writes import Writer
from qatvm.node.capacity import numa_capacity
from qatvm.node.discovery import discover
from qatvm.node.numa import read_numa_nodes
from qatvm.node.sysfs import Sysfs

log = logging.getLogger(__name__)

EXTENDED_RESOURCE = "qatvm.io/vf"


def scan(
    config: AgentConfig, sysfs: Sysfs, holders: dict[str, ObjectRef], allocations: Iterable[ResourceAllocation] = ()
) -> QatNodeStatus:
    """The node's VFs and NUMA nodes as sysfs shows them now, with what the node's VMs hold."""
    vfs = [
        vf.model_copy(update={"allocated_to": holders.get(vf.pci_address)})
        for vf in discover(sysfs, config.extra_vf_ids).vfs
    ]
    bound, unbound = hold(allocations)
    numa = numa_capacity(read_numa_nodes(sysfs), config.reservation, bound)
    return QatNodeStatus(vfs=vfs, numa=numa, unbound=unbound)


def managed_count(status: QatNodeStatus) -> int:
    """What the Node advertises: healthy VFs a VM may have (allocated ones included)."""
    return sum(vf.healthy and vf.assignable for vf in status.vfs)


class InventoryPublisher:
    def __init__(self, config: AgentConfig, client: AsyncClient, writer: Writer) -> None:
        self.config = config
        self.client = client
        self.writer = writer
        self.published: dict[str, Any] | None = None
        self.advertised: int | None = None

    async def publish(self, status: QatNodeStatus) -> bool:
        """Write what changed; True when anything was written."""
        metrics.inventory_published(self.config.node, status.vfs)
        wire = status.model_dump(by_alias=True, mode="json")
        wrote = False
        if wire != self.published:
            await self._ensure_object()
            await self.writer.patch_qatnode_status(self.config.node, {"status": wire})
            self.published = wire
            wrote = True
        count = managed_count(status)
        if count != self.advertised:
            quantity = str(count)
            await self.client.patch(
                Node.Status,
                self.config.node,
                {"status": {"capacity": {EXTENDED_RESOURCE: quantity}, "allocatable": {EXTENDED_RESOURCE: quantity}}},
                patch_type=PatchType.MERGE,
            )
            self.advertised = count
            wrote = True
        return wrote

    def holders_of(self, addresses: set[str]) -> dict[str, ObjectRef | None]:
        """Who the last published status says holds each of `addresses` (None: nobody)."""
        vfs = {vf["pciAddress"]: vf for vf in (self.published or {}).get("vfs", [])}
        return {
            a: ObjectRef.model_validate(vfs[a]["allocatedTo"]) if (vfs.get(a) or {}).get("allocatedTo") else None
            for a in addresses
        }

    async def _ensure_object(self) -> None:
        if self.published is not None:
            return
        try:
            await self.client.create(QatNodeResource(metadata=ObjectMeta(name=self.config.node), spec={}))
            log.info("created QatNode %s", self.config.node)
        except ApiError as error:
            if error.status.code != 409:
                raise
