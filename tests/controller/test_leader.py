"""LeaderElection against a real kube-apiserver: one holder at a time, takeover only after expiry."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Callable

import lightkube
import pytest
from lightkube import KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease

from qatvm.controller.leader import LeaderElection, candidate_of, process_identity
from qatvm.controlplane.server import ControlPlane
from qatvm.testing.kubectl import Kubectl

pytestmark = pytest.mark.controlplane

MakeCandidate = Callable[..., LeaderElection]


@pytest.fixture
async def clients(control_plane: ControlPlane) -> AsyncIterator[list[lightkube.AsyncClient]]:
    """Each candidate gets its own client, as two controller pods would."""
    made: list[lightkube.AsyncClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
def candidate(control_plane: ControlPlane, clients: list[lightkube.AsyncClient], namespace: str) -> MakeCandidate:
    def make(identity: str, *, name: str = "qatvm-controller", lease_seconds: int = 15, renew_seconds: float = 5.0) -> LeaderElection:
        client = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
        clients.append(client)
        return LeaderElection(
            client, namespace=namespace, name=name, identity=identity,
            lease_seconds=lease_seconds, renew_seconds=renew_seconds,
        )

    return make


async def read_lease(election: LeaderElection) -> Lease:
    return await election.client.get(Lease, election.name, namespace=election.namespace)


async def test_first_candidate_acquires_and_a_second_cannot_while_fresh(candidate: MakeCandidate) -> None:
    a, b = candidate("ctl-a"), candidate("ctl-b")
    assert await a.try_acquire() is True
    assert await b.try_acquire() is False
    lease = await read_lease(a)
    assert lease.spec.holderIdentity == "ctl-a"
    assert lease.spec.leaseDurationSeconds == 15
    assert lease.spec.leaseTransitions == 0

    # Renewing moves renewTime forward and keeps the holder; the standby still loses.
    first_renew = lease.spec.renewTime
    await asyncio.sleep(0.05)
    assert await a.try_acquire() is True
    renewed = await read_lease(a)
    assert renewed.spec.holderIdentity == "ctl-a"
    assert renewed.spec.renewTime > first_renew
    assert renewed.spec.leaseTransitions == 0
    assert await b.try_acquire() is False
    assert (await read_lease(a)).spec.holderIdentity == "ctl-a"


async def test_release_lets_the_standby_take_over_at_once(candidate: MakeCandidate) -> None:
    a, b = candidate("ctl-a"), candidate("ctl-b")
    assert await a.try_acquire()
    await b.release()  # not the holder: changes nothing
    assert (await read_lease(a)).spec.holderIdentity == "ctl-a"
    assert await b.try_acquire() is False

    await a.release()
    released = await read_lease(a)
    assert released.spec.holderIdentity is None

    assert await b.try_acquire() is True  # no waiting for the 15 s lease
    lease = await read_lease(b)
    assert lease.spec.holderIdentity == "ctl-b"
    assert lease.spec.leaseTransitions == 1
    assert await a.try_acquire() is False


async def test_a_holder_that_stops_renewing_is_taken_over_after_the_lease_runs_out(candidate: MakeCandidate) -> None:
    a, b = candidate("ctl-a", lease_seconds=2), candidate("ctl-b", lease_seconds=2)
    start = time.monotonic()
    assert await a.try_acquire()
    acquired = (await read_lease(a)).spec.acquireTime

    while not await b.try_acquire():
        assert time.monotonic() - start < 10, "the standby never took over an expired lease"
        await asyncio.sleep(0.1)
    waited = time.monotonic() - start

    assert waited >= 2.0, f"taken over after {waited:.2f}s, before the 2 s lease ran out"
    lease = await read_lease(b)
    assert lease.spec.holderIdentity == "ctl-b"
    assert lease.spec.leaseTransitions == 1
    assert lease.spec.acquireTime > acquired
    # The old holder learns it lost: its next renewal fails rather than stealing it back.
    assert await a.try_acquire() is False
    assert (await read_lease(b)).spec.holderIdentity == "ctl-b"


async def test_two_candidates_racing_for_a_fresh_lease_exactly_one_wins(candidate: MakeCandidate) -> None:
    # One test, several distinct leases (the per-test namespace name is cut at 50 characters,
    # so parametrized copies would share one).
    for round_ in range(6):
        name = f"race-fresh-{round_}"
        a, b = candidate("ctl-a", name=name), candidate("ctl-b", name=name)
        results = await asyncio.gather(a.try_acquire(), b.try_acquire())
        assert sorted(results) == [False, True], (round_, results)
        winner = "ctl-a" if results[0] else "ctl-b"
        lease = await read_lease(a)
        assert lease.spec.holderIdentity == winner
        assert lease.spec.leaseTransitions == 0


async def test_standbys_racing_for_an_expired_lease_exactly_one_wins(candidate: MakeCandidate) -> None:
    old = candidate("ctl-old", name="race-expired", lease_seconds=1)
    assert await old.try_acquire()
    await asyncio.sleep(1.2)
    standbys = [candidate(f"ctl-{i}", name="race-expired", lease_seconds=1) for i in range(3)]
    results = await asyncio.gather(*(s.try_acquire() for s in standbys))
    assert sum(results) == 1, results
    lease = await read_lease(old)
    assert lease.spec.holderIdentity == standbys[results.index(True)].identity
    assert lease.spec.leaseTransitions == 1


async def test_hold_keeps_the_lease_and_returns_when_another_holds_it(candidate: MakeCandidate) -> None:
    a = candidate("ctl-a", lease_seconds=2, renew_seconds=0.2)
    b = candidate("ctl-b", lease_seconds=2, renew_seconds=0.2)
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    # Longer than the lease: only renewals keep the standby out.
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        assert await b.try_acquire() is False
        await asyncio.sleep(0.2)
    assert not holding.done()

    # Another controller takes the lease (as after a long pause of this one): hold must return.
    # Its renewals every 0.2 s may land between our read and our write: then read again.
    while True:
        lease = await read_lease(a)
        lease.spec.holderIdentity = "ctl-b"
        lease.spec.renewTime = datetime.datetime.now(datetime.UTC)
        try:
            await b.client.replace(lease)
            break
        except ApiError as conflict:
            if conflict.status.code != 409:
                raise
    await asyncio.wait_for(holding, timeout=3)
    assert (await read_lease(a)).spec.holderIdentity == "ctl-b"


async def test_acquire_waits_for_the_holder_to_release(candidate: MakeCandidate) -> None:
    a = candidate("ctl-a")
    b = candidate("ctl-b", renew_seconds=0.1)
    await a.acquire()
    waiting = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await a.release()
    await asyncio.wait_for(waiting, timeout=3)
    assert (await read_lease(b)).spec.holderIdentity == "ctl-b"


async def test_a_lease_whose_times_fall_on_a_whole_second_can_be_renewed(
    candidate: MakeCandidate, kubectl: Kubectl, namespace: str
) -> None:
    # What a Go client (client-go writes MicroTime with 6 digits) or an admin may have stored.
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    kubectl.run("apply", "-f", "-", input={
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "qatvm-controller", "namespace": namespace},
        "spec": {"holderIdentity": "ctl-a", "leaseDurationSeconds": 15, "acquireTime": stamp,
                 "renewTime": stamp, "leaseTransitions": 3},
    })
    a = candidate("ctl-a")
    assert await a.try_acquire() is True
    lease = await read_lease(a)
    assert lease.spec.holderIdentity == "ctl-a"
    assert lease.spec.leaseTransitions == 3


async def test_a_holder_that_stops_renewing_stops_leading_before_its_lease_can_be_taken(candidate: MakeCandidate) -> None:
    a, b = candidate("ctl-a", lease_seconds=2, renew_seconds=1.0), candidate("ctl-b", lease_seconds=2, renew_seconds=1.0)
    assert not a.leading()
    await a.acquire()
    assert a.leading()
    # No renewal (a stalled process): past lease - renew it must not act, while b cannot take
    # the lease yet.
    await asyncio.sleep(1.1)
    assert not a.leading()
    assert await b.try_acquire() is False
    await asyncio.sleep(1.2)
    assert await b.try_acquire() is True


async def test_a_restarted_candidate_waits_out_its_predecessors_lease(candidate: MakeCandidate) -> None:
    # A container restarted after a crash keeps its pod name; it must not resume the lease the
    # killed process held, or no standby would ever take over from a crashing leader.
    crashed = candidate(process_identity("controller-7d9f-abcde"), lease_seconds=2)
    assert await crashed.try_acquire()
    restarted = candidate(process_identity("controller-7d9f-abcde"), lease_seconds=2)
    standby = candidate(process_identity("controller-7d9f-fghij"), lease_seconds=2)
    assert restarted.identity != crashed.identity
    assert candidate_of(restarted.identity) == "controller-7d9f-abcde"
    assert await restarted.try_acquire() is False
    await asyncio.sleep(2.5)
    assert await standby.try_acquire() is True
    assert candidate_of((await read_lease(standby)).spec.holderIdentity) == "controller-7d9f-fghij"
