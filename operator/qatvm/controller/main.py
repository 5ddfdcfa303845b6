"""`qatvm controller`: the cluster-wide scheduler, one active replica elected by a Lease."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

import kopf
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from qatvm import health, logs, metrics
from qatvm.controller import handlers
from qatvm.controller.leader import LEASE_NAME, LeaderElection, process_identity
from qatvm.controller.lost_nodes import LostNodeWatcher
from qatvm.controller.placement import Strategy
from qatvm.controller.scheduler import Scheduler
from qatvm.kube_writes import Writer

FIELD_MANAGER = "qatvm-controller"


async def run(args: argparse.Namespace) -> int:
    async with health.serving(args.health_port), metrics.serving("controller", args.metrics_port, args.metrics_address):
        return await _lead_or_stand_by(args)


async def _lead_or_stand_by(args: argparse.Namespace) -> int:
    config = KubeConfig.from_file(str(args.kubeconfig)) if args.kubeconfig else KubeConfig.from_env()
    client = AsyncClient(config=config, field_manager=FIELD_MANAGER)
    election = LeaderElection(
        client,
        namespace=args.lease_namespace,
        name=args.lease_name,
        identity=process_identity(args.identity),
        lease_seconds=args.lease_seconds,
        renew_seconds=max(1.0, args.lease_seconds / 3),
    )
    metrics.leader(election.leading)
    await election.acquire()
    stop = asyncio.Event()
    writer = Writer(config, FIELD_MANAGER)
    scheduler = Scheduler(client, writer, strategy=Strategy(args.strategy), leading=election.leading)
    operator = asyncio.create_task(
        kopf.operator(
            registry=handlers.registry,
            settings=handlers.settings(),
            clusterwide=True,
            standalone=True,
            stop_flag=stop,
            memo=kopf.Memo(
                scheduler=scheduler,
                lost_nodes=LostNodeWatcher(
                    client, scheduler, grace_seconds=args.node_grace_seconds, poll_seconds=max(1.0, args.node_grace_seconds / 4)
                ),
            ),
        ),
        name="kopf",
    )
    holder = asyncio.create_task(election.hold(), name="lease")
    done, _ = await asyncio.wait({operator, holder}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    holder.cancel()
    await asyncio.gather(operator, holder, return_exceptions=True)
    # Events still queued are a courtesy worth a moment on a clean stop, not a delayed exit.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(scheduler.events.sent(), timeout=2.0)
    await scheduler.events.close()
    await writer.close()
    if holder in done:
        return 1  # leadership lost: exit, so the restart rejoins as a standby
    await election.release()
    await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qatvm controller", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    parser.add_argument("--strategy", choices=[s.value for s in Strategy], default=Strategy.PACK.value,
                        help="pack: fill the fullest node that fits; spread: the emptiest (default: %(default)s)")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "kube-system"))
    parser.add_argument("--lease-name", default=LEASE_NAME)
    parser.add_argument("--lease-seconds", type=int, default=15)
    parser.add_argument("--node-grace-seconds", type=float, default=40.0,
                        help="a node whose agent has not renewed its node lease for this long is unreachable (default: %(default)s)")
    parser.add_argument("--identity", default=socket.gethostname(),
                        help="this candidate's name, e.g. its pod's; the lease holder is NAME_<random> (default: the host name)")
    parser.add_argument("--health-port", type=int, default=0, help="serve GET /healthz on this port (0: off)")
    metrics.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        # kopf logs in through KUBECONFIG; both clients then talk to the same cluster as the same user.
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    logs.setup(args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
