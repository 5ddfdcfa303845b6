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
import secrets
import time

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from qatvm.api.lease import micro_time, now

log = logging.getLogger(__name__)

LEASE_NAME = "qatvm-controller"


def process_identity(candidate: str) -> str:
    """The lease holder's name for this process: the candidate (a pod name) plus a suffix of its own.

    A container that restarts keeps its pod name; were that the holder, the restart would resume
    the lease its killed predecessor held, and no standby would ever take over from a crashing
    leader. With a suffix, the restart is one more candidate that waits the lease out, as
    client-go's "hostname_uuid" identities make it. Pod names never hold "_", so the candidate
    is everything before the last one."""
    return f"{candidate}_{secrets.token_hex(4)}"


def candidate_of(holder: str) -> str:
    return holder.rsplit("_", 1)[0]


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
        # When the last successful take or renewal was sent (monotonic clock).
        self.renewed_at: float | None = None

    def _expired(self, lease: Lease) -> bool:
        spec = lease.spec
        if spec is None or spec.renewTime is None:
            return True
        duration = spec.leaseDurationSeconds or self.lease_seconds
        return spec.renewTime + datetime.timedelta(seconds=duration) < now()

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when this identity holds it now."""
        moment = now()
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            return await self._create(moment)
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.identity and not self._expired(lease):
            return False
        change: dict[str, object] = {
            "holderIdentity": self.identity,
            "renewTime": micro_time(moment),
            "leaseDurationSeconds": self.lease_seconds,
        }
        if spec.holderIdentity != self.identity:
            change["acquireTime"] = micro_time(moment)
            change["leaseTransitions"] = (spec.leaseTransitions or 0) + 1
        assert lease.metadata is not None
        # Only the changed fields, under the resourceVersion we read: a concurrent taker makes
        # this a 409, and times written by other clients are never re-encoded by ours.
        return await self._patch({"metadata": {"resourceVersion": lease.metadata.resourceVersion}, "spec": change})

    async def _create(self, moment: datetime.datetime) -> bool:
        # lightkube writes a zero fraction as no fraction, which MicroTime refuses: never send one.
        moment = moment.replace(microsecond=moment.microsecond or 1)
        fresh = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=self.lease_seconds,
                acquireTime=moment,
                renewTime=moment,
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

    async def _patch(self, patch: dict[str, object]) -> bool:
        try:
            await self.client.patch(Lease, self.name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)
        except ApiError as conflict:
            if conflict.status.code == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this identity holds the lease; API outages meanwhile are waited out too."""
        said = False
        while True:
            attempt = time.monotonic()
            try:
                if await self.try_acquire():
                    self.renewed_at = attempt
                    break
                if not said:
                    log.info("lease %s/%s is held by another controller; standing by", self.namespace, self.name)
                    said = True
            except ApiError as error:
                log.warning("taking the lease failed: %s; retrying", error.status.message)
            except OSError as error:
                log.warning("the API server is unreachable: %s; retrying", error)
            await asyncio.sleep(self.renew_seconds)
        log.info("leading as %s", self.identity)

    def leading(self) -> bool:
        """Whether this identity may act now: it renewed recently enough that no standby can
        have taken over. Checked before each allocation, so a holder that stalled (a long pause,
        a slow network) stops writing before its lease can run out, not only when hold() notices."""
        return self.renewed_at is not None and time.monotonic() - self.renewed_at < self.margin

    @property
    def margin(self) -> float:
        # A little less than the lease, so no other controller acts alongside.
        return self.lease_seconds - self.renew_seconds

    async def hold(self) -> None:
        """Renew until renewal fails for longer than the lease lasts; then return (leadership lost)."""
        if self.renewed_at is None:
            self.renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_seconds)
            # The lease runs from when the renewal was sent, not from when its answer came back.
            attempt = time.monotonic()
            try:
                if await self.try_acquire():
                    self.renewed_at = attempt
                    continue
                log.error("lease %s/%s was taken over", self.namespace, self.name)
                self.renewed_at = None
                return
            except Exception as error:  # noqa: BLE001 - any failure to renew counts the same
                log.warning("renewing the lease failed: %s", error)
            if not self.leading():
                log.error("could not renew the lease for %ss; stepping down", self.lease_seconds)
                return

    async def release(self) -> None:
        """Give the lease up on a clean shutdown, so a standby takes over at once."""
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity and lease.metadata:
                await self._patch(
                    {
                        "metadata": {"resourceVersion": lease.metadata.resourceVersion},
                        "spec": {"holderIdentity": None, "renewTime": None},
                    }
                )
        except ApiError as error:
            log.warning("releasing the lease failed: %s", error)
