"""The agent's heartbeat: it renews its node's Lease, as the kubelet renews the node lease.

The controller reads the Lease's age. When renewals had stopped for longer than the lease lasts
(the agent was frozen, or cut off from the API server), the controller has meanwhile marked the
node's VMs unreachable. After each renewal `on_renewed(lapsed)` runs, so the agent reconciles
them all after such a gap, and, after any renewal, the VMs still marked unreachable: the
controller may have marked one on a lease it read just before the renewal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from qatvm.api.lease import NODE_LEASE_NAMESPACE, micro_time, now

log = logging.getLogger(__name__)


class NodeLease:
    def __init__(
        self,
        client: AsyncClient,
        node: str,
        *,
        lease_seconds: int = 40,
        renew_seconds: float = 10.0,
        on_renewed: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_renewed = on_renewed
        # When the last renewal that succeeded was sent (monotonic clock).
        self.renewed_at: float | None = None

    async def renew(self) -> None:
        """One renewal; creates the Lease the first time."""
        moment = now()
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": self.lease_seconds, "renewTime": micro_time(moment)}
        try:
            await self.client.patch(Lease, self.node, {"spec": spec}, namespace=NODE_LEASE_NAMESPACE, patch_type=PatchType.MERGE)
        except ApiError as error:
            if error.status.code != 404:
                raise
            # lightkube writes a zero fraction as no fraction, which MicroTime refuses: never send one.
            moment = moment.replace(microsecond=moment.microsecond or 1)
            await self.client.create(Lease(
                metadata=ObjectMeta(name=self.node, namespace=NODE_LEASE_NAMESPACE),
                spec=LeaseSpec(holderIdentity=self.node, leaseDurationSeconds=self.lease_seconds,
                               acquireTime=moment, renewTime=moment),
            ))

    async def run(self) -> None:
        while True:
            attempt = time.monotonic()
            try:
                await self.renew()
                lapsed = self.renewed_at is not None and attempt - self.renewed_at > self.lease_seconds
                self.renewed_at = attempt
                if lapsed:
                    log.warning("the node lease had lapsed; reconciling every VM on the node again")
                if self.on_renewed is not None:
                    await self.on_renewed(lapsed)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged in full; the next renewal tries again
                log.exception("renewing the node lease failed")
            await asyncio.sleep(self.renew_seconds)
