"""`qatvm agent --node NAME`: one per node (a DaemonSet), or one per simulated node locally."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path, PurePosixPath

import kopf
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from pydantic import ValidationError

from qatvm import health, logs, metrics
from qatvm.agent import handlers
from qatvm.agent.access import HOST, NodeAccess
from qatvm.agent.config import STATE_DIR, AgentConfig
from qatvm.agent.service import NodeAgent
from qatvm.api.cpulist import parse_cpulist
from qatvm.api.quantity import parse_bytes
from qatvm.domain.spec import CpuMode, VirtType
from qatvm.kube_writes import Writer
from qatvm.node.capacity import HostReservation
from qatvm.node.devices import ExtraVfId
from qatvm.node.images import DEFAULT_IMAGE_DIR

# One node's writes (its VMs' statuses, two Event senders, the QatNode) at once: the API server,
# not the connection count, limits them, and every connection costs a TLS handshake on both sides.
WRITE_CONNECTIONS = 4


def parse(argv: list[str] | None, prog: str = "qatvm agent") -> tuple[argparse.Namespace, AgentConfig]:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    parser.add_argument("--host-root", type=Path, default=Path("/"),
                        help="the node's root filesystem: image paths, sys/ and var/lib/qatvm/ are under it")
    parser.add_argument("--sysfs-root", type=Path, help="default: HOST_ROOT/sys")
    parser.add_argument("--libvirt-uri", default="qemu:///system")
    parser.add_argument("--virt-type", choices=[v.value for v in VirtType], default=VirtType.KVM.value)
    parser.add_argument("--cpu-mode", choices=[c.value for c in CpuMode], default=CpuMode.HOST_PASSTHROUGH.value)
    parser.add_argument("--extra-vf-ids", default="", metavar="VVVV:DDDD[=NAME],...",
                        help="more VF device IDs to manage (an emulated SR-IOV device, a new QAT part)")
    parser.add_argument("--image-dir", dest="image_dirs", action="append", type=PurePosixPath, metavar="DIR",
                        help="a node directory VM images may come from; repeat for more "
                             f"(default: {DEFAULT_IMAGE_DIR}); mount exactly these into the agent")
    parser.add_argument("--scan-seconds", type=float, default=5.0, help="how often sysfs is rescanned")
    parser.add_argument("--audit-seconds", type=float, default=30.0,
                        help="how often the node's domains, bound VFs and files are checked against the API")
    parser.add_argument("--state-dir", type=PurePosixPath, default=STATE_DIR, metavar="DIR",
                        help="node path (under HOST_ROOT) of the agent's files: binding records, VM disks and "
                        "seeds (default: %(default)s)")
    parser.add_argument("--reserved-cpus", type=parse_cpulist, metavar="CPULIST",
                        help="host CPUs no VM gets, e.g. 0,16 (default: the first CPU of each NUMA node)")
    parser.add_argument("--reserved-memory", type=parse_bytes, default="1Gi", metavar="QUANTITY",
                        help="ordinary memory kept for the host on each NUMA node (default: 1Gi)")
    parser.add_argument("--lease-seconds", type=int, default=40,
                        help="how long one renewal of the node lease vouches for the node (default: %(default)s)")
    parser.add_argument("--lease-renew-seconds", type=float, default=10.0,
                        help="how often the node lease is renewed (default: %(default)s)")
    parser.add_argument("--health-port", type=int, default=0, help="serve GET /healthz on this port (0: off)")
    metrics.add_arguments(parser)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("--node (or $NODE_NAME) is required")
    if not args.state_dir.is_absolute():
        parser.error(f"--state-dir {args.state_dir}: give an absolute path, as the node sees it")
    try:
        config = AgentConfig(
            node=args.node,
            host_root=args.host_root,
            sysfs_root=args.sysfs_root,
            libvirt_uri=args.libvirt_uri,
            virt_type=VirtType(args.virt_type),
            cpu_mode=CpuMode(args.cpu_mode),
            extra_vf_ids=tuple(ExtraVfId.parse_list(args.extra_vf_ids)),
            scan_seconds=args.scan_seconds,
            audit_seconds=args.audit_seconds,
            image_dirs=tuple(args.image_dirs or (DEFAULT_IMAGE_DIR,)),
            state_path=args.state_dir,
            reservation=HostReservation(cpus=args.reserved_cpus, memory_per_numa_node=args.reserved_memory),
            lease_seconds=args.lease_seconds,
            lease_renew_seconds=args.lease_renew_seconds,
        )
    except ValidationError as error:
        parser.error("; ".join(str(e["msg"]) for e in error.errors()))
    return args, config


async def run(args: argparse.Namespace, config: AgentConfig, access: NodeAccess) -> None:
    kubeconfig = KubeConfig.from_file(str(args.kubeconfig)) if args.kubeconfig else KubeConfig.from_env()
    client = AsyncClient(config=kubeconfig, field_manager=f"qatvm-agent-{config.node}")
    agent = NodeAgent(config, client, Writer(kubeconfig, f"qatvm-agent-{config.node}", connections=WRITE_CONNECTIONS), access)
    async with health.serving(args.health_port), metrics.serving("agent", args.metrics_port, args.metrics_address):
        await kopf.operator(
            registry=handlers.registry,
            settings=handlers.configure(kopf.OperatorSettings(), config.node),
            clusterwide=True,
            standalone=True,
            memo=kopf.Memo(agent=agent),
        )


def main(argv: list[str] | None = None, access: NodeAccess = HOST, prog: str = "qatvm agent") -> int:
    """The agent on the node `access` reaches: the host's own unless its caller hands in another."""
    args, config = parse(argv, prog)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    logs.setup(args.verbose)
    asyncio.run(run(args, config, access))
    return 0


if __name__ == "__main__":
    sys.exit(main())
