"""NodeLease against a real kube-apiserver: created, renewed, and a lapse reported once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import lightkube
import pytest
from lightkube import KubeConfig
from lightkube.resources.coordination_v1 import Lease

from qatvm.agent.node_lease import NodeLease
from qatvm.api.lease import NODE_LEASE_NAMESPACE
from qatvm.controlplane.server import ControlPlane
from qatvm.testing.kubectl import Kubectl

pytestmark = pytest.mark.controlplane

NODE = "node-lease-test"


@pytest.fixture
async def client(control_plane: ControlPlane, kubectl: Kubectl, node_lease_namespace: str) -> AsyncIterator[lightkube.AsyncClient]:
    made = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    yield made
    kubectl.run("delete", "lease", NODE, "-n", NODE_LEASE_NAMESPACE, "--ignore-not-found")
    await made.close()


async def test_renew_creates_then_moves_the_renew_time(client: lightkube.AsyncClient) -> None:
    lease = NodeLease(client, NODE, lease_seconds=40)
    await lease.renew()
    first = await client.get(Lease, NODE, namespace=NODE_LEASE_NAMESPACE)
    assert first.spec.holderIdentity == NODE and first.spec.leaseDurationSeconds == 40
    await asyncio.sleep(0.01)
    await lease.renew()
    second = await client.get(Lease, NODE, namespace=NODE_LEASE_NAMESPACE)
    assert second.spec.renewTime > first.spec.renewTime


async def test_a_renewal_after_a_lapse_says_so_and_others_do_not(client: lightkube.AsyncClient) -> None:
    calls: list[bool] = []

    async def renewed(lapsed: bool) -> None:
        calls.append(lapsed)

    lease = NodeLease(client, NODE, lease_seconds=5, renew_seconds=0.05, on_renewed=renewed)
    task = asyncio.create_task(lease.run())
    try:
        while len(calls) < 2:
            await asyncio.sleep(0.05)
        assert not any(calls)
        # As if the process had been frozen for longer than the lease lasts.
        assert lease.renewed_at is not None
        lease.renewed_at = time.monotonic() - 6
        seen = len(calls)
        while len(calls) < seen + 2:
            await asyncio.sleep(0.05)
        assert calls[seen:seen + 2] == [True, False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
