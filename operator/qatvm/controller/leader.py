"""One active controller, elected with a coordination.k8s.io Lease, as Kubernetes' own controllers do.

kopf's peering was the other choice; it needs its own CRDs and freezes every peer when two share
a priority. A Lease needs nothing beyond core Kubernetes and gives the usual guarantees: the
holder renews it every few seconds, a standby takes it over only once it has not been renewed
for its whole duration, and each takeover is a write guarded by resourceVersion, so two
candidates can never both win. The holder stops scheduling as soon as it cannot renew.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class LeaderElection:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds

    def _expired(self, lease: Lease) -> bool:
        spec = lease.spec
        if spec is None or spec.renewTime is None:
            return True
        duration = spec.leaseDurationSeconds or self.lease_seconds
        return spec.renewTime + datetime.timedelta(seconds=duration) < _now()

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when this identity holds it now."""
        now = _now()
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            fresh = Lease(
                metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                spec=LeaseSpec(
                    holderIdentity=self.identity,
                    leaseDurationSeconds=self.lease_seconds,
                    acquireTime=now,
                    renewTime=now,
                    leaseTransitions=0,
                ),
            )
            try:
                await self.client.create(fresh)
            except ApiError as conflict:
                if conflict.status.code == 409:
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.identity and not self._expired(lease):
            return False
        if spec.holderIdentity != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
            spec.holderIdentity = self.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = self.lease_seconds
        lease.spec = spec
        try:
            # `replace` sends the resourceVersion we read: a concurrent taker makes this a 409.
            await self.client.replace(lease)
        except ApiError as conflict:
            if conflict.status.code == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        while not await self.try_acquire():
            log.info("lease %s/%s is held by another controller; standing by", self.namespace, self.name)
            await asyncio.sleep(self.renew_seconds)
        log.info("leading as %s", self.identity)

    async def hold(self) -> None:
        """Renew until renewal fails for longer than the lease lasts; then return (leadership lost)."""
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self.try_acquire():
                    last_renewed = loop.time()
                    continue
                log.error("lease %s/%s was taken over", self.namespace, self.name)
                return
            except Exception as error:  # noqa: BLE001 - any failure to renew counts the same
                log.warning("renewing the lease failed: %s", error)
            # Stop a little before the lease runs out, so no other controller acts alongside.
            if loop.time() - last_renewed > self.lease_seconds - self.renew_seconds:
                log.error("could not renew the lease for %ss; stepping down", self.lease_seconds)
                return

    async def release(self) -> None:
        """Give the lease up on a clean shutdown, so a standby takes over at once."""
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.renewTime = None
                lease.spec.holderIdentity = None
                await self.client.replace(lease)
        except ApiError as error:
            log.warning("releasing the lease failed: %s", error)
