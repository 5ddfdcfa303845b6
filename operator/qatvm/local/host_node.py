"""The machine `qatvm local up --host-node` runs on, as a real node of the local cluster.

Beside (or instead of) the simulated nodes, the host itself becomes a Node: its agent reads the
real /sys, binds real VFs to vfio-pci and runs domains on the host's libvirt, with a token bound
to its Node like every other agent. Nothing starts until the preflight checks pass. When the
cluster stops (`qatvm local down`), the host is given back: its qatvm domains are destroyed and
undefined and every VF returns to the driver it had, so the machine is as it was; the VMs stay
in the API, and the next `up` starts them again.

The host is reached as the kernel's own files and libvirt (`qatvm.agent.access.HOST`). Only tests,
which have no QAT part, make the "host" a simulated node's root; they say so with the hidden
flag `--simulated-host`, and get the simulation's agent and access like a simulated node.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from pydantic import BaseModel, ConfigDict

from qatvm.agent.config import STATE_DIR
from qatvm.api.cpulist import parse_cpulist
from qatvm.api.quantity import parse_bytes
from qatvm.domain.spec import CpuMode, VirtType
from qatvm.local.credentials import AGENT_SA, service_account_kubeconfig
from qatvm.local.nodes import AGENT as SIMULATED_AGENT
from qatvm.node.devices import ExtraVfId
from qatvm.node.images import DEFAULT_IMAGE_DIR
from qatvm.node.passthrough_readiness import Finding, HostPaths, check_readiness
from qatvm.processes import ManagedProcess

if TYPE_CHECKING:
    from qatvm.agent.access import NodeAccess

# A Node name is a DNS subdomain (RFC 1123), lower case.
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class HostNode(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    libvirt_uri: str = "qemu:///system"
    virt_type: VirtType = VirtType.KVM
    cpu_mode: CpuMode = CpuMode.HOST_PASSTHROUGH
    extra_vf_ids: str = ""
    # Node paths, as the agent's flags take them.
    state_dir: PurePosixPath = STATE_DIR
    image_dir: PurePosixPath = DEFAULT_IMAGE_DIR
    # `/` on a real machine; a simulated node's root in tests, which also set `simulated`.
    host_root: Path = Path("/")
    simulated: bool = False
    # What the host keeps for itself, as the agent's flags take it; None: the agent's defaults.
    reserved_cpus: str | None = None
    reserved_memory: str | None = None

    def argv(self) -> list[str]:
        """The flags that give this node to another process (the supervisor) via `from_args`."""
        return [
            "--host-node", self.name, "--libvirt-uri", self.libvirt_uri, "--virt-type", self.virt_type.value,
            "--cpu-mode", self.cpu_mode.value, "--extra-vf-ids", self.extra_vf_ids,
            "--agent-state-dir", str(self.state_dir), "--image-dir", str(self.image_dir),
            "--host-root", str(self.host_root), *self._reservation(),
            *(["--simulated-host"] if self.simulated else []),
        ]

    def access(self) -> NodeAccess:
        # Imported here: only the checks and a stopping host node need libvirt in the supervisor,
        # and a real host never loads the simulation.
        if self.simulated:
            from qatvm.simulation.access import SIMULATED

            return SIMULATED
        from qatvm.agent.access import HOST

        return HOST

    def _reservation(self) -> list[str]:
        flags = [("--reserved-cpus", self.reserved_cpus), ("--reserved-memory", self.reserved_memory)]
        return [part for flag, value in flags if value is not None for part in (flag, value)]

    def preflight(self) -> list[Finding]:
        access = self.access()
        return check_readiness(
            access.sysfs(self.host_root / "sys"),
            HostPaths(self.host_root, self.state_dir, (self.image_dir,)),
            self.libvirt_uri,
            access.hypervisor,
            self.virt_type,
            ExtraVfId.parse_list(self.extra_vf_ids),
        )

    def register(self, kube: Client) -> None:
        """The Node object a kubelet would have made; no simulated label, since it is not."""
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        kube.apply(Node(metadata=ObjectMeta(name=self.name, labels=labels)), force=True)

    def agent(
        self, kube: Client, server: str, ca_file: Path, state_dir: Path, extra: Sequence[str] = ()
    ) -> ManagedProcess:
        """The node's agent, with a token bound to this Node (as a DaemonSet pod's would be);
        `extra` are more of its flags (how often it renews its node lease, to match the controller)."""
        kubeconfig = service_account_kubeconfig(
            kube, state_dir / "nodes" / self.name / "agent.kubeconfig", server, ca_file, AGENT_SA, bound_node=self.name
        )
        return ManagedProcess(
            f"agent-{self.name}",
            [
                sys.executable, "-m", "qatvm", *(SIMULATED_AGENT if self.simulated else ["agent"]),
                "--node", self.name, "--kubeconfig", kubeconfig,
                "--host-root", self.host_root, "--libvirt-uri", self.libvirt_uri,
                "--virt-type", self.virt_type.value, "--cpu-mode", self.cpu_mode.value,
                "--extra-vf-ids", self.extra_vf_ids, "--state-dir", str(self.state_dir),
                "--image-dir", str(self.image_dir), *self._reservation(), *extra,
            ],
            state_dir / "logs" / f"agent-{self.name}.log",
        )

    def give_back(self) -> list[str]:
        """With the agent stopped: destroy and undefine qatvm's domains, return every VF it holds.

        The VMs' disks stay in the agent's state directory, so the next `up` starts them again
        from where they were."""
        from qatvm.node.binding import VfBinder

        access = self.access()
        done = []
        with access.hypervisor(self.libvirt_uri) as hypervisor:
            for domain in hypervisor.owned_domains():
                hypervisor.destroy(domain.name)
                hypervisor.undefine(domain.name)
                done.append(f"removed domain {domain.name} of {domain.owner.namespace}/{domain.owner.name}")
        binder = VfBinder(access.sysfs(self.host_root / "sys"), self.host_root.joinpath(*self.state_dir.parts[1:], "binding"))
        for address in binder.held():
            binder.release(address)
            done.append(f"gave VF {address} back")
        return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the host as a node (--host-node)")
    group.add_argument(
        "--host-node", nargs="?", const=socket.gethostname().lower(), metavar="NAME",
        help="also run a node on this machine, with its real VFs (NAME: default the host name); "
        "checks first that the machine is ready, and says what to fix",
    )
    group.add_argument("--libvirt-uri", help="the host node's libvirt (default: qemu:///system)")
    group.add_argument("--virt-type", choices=[v.value for v in VirtType], help="default: kvm")
    group.add_argument("--cpu-mode", choices=[c.value for c in CpuMode], help="default: host-passthrough")
    group.add_argument("--extra-vf-ids", metavar="VVVV:DDDD[=NAME],...",
                       help="more VF device IDs for the host node's agent to manage")
    group.add_argument("--agent-state-dir", type=PurePosixPath, metavar="DIR",
                       help=f"the host node's agent files: VM disks, binding records (default: {STATE_DIR})")
    group.add_argument("--image-dir", type=PurePosixPath, metavar="DIR",
                       help=f"where the base images VMs name are (default: {DEFAULT_IMAGE_DIR})")
    group.add_argument("--reserved-cpus", metavar="CPULIST",
                       help="host CPUs no VM gets, e.g. 0,16; '' for none (default: the first CPU of each NUMA node)")
    group.add_argument("--reserved-memory", metavar="QUANTITY",
                       help="memory kept for the host on each NUMA node (default: 1Gi)")
    group.add_argument("--host-root", type=Path, help=argparse.SUPPRESS)
    group.add_argument("--simulated-host", action="store_true", default=None, help=argparse.SUPPRESS)


HOST_ONLY = (
    "libvirt_uri", "virt_type", "cpu_mode", "extra_vf_ids", "agent_state_dir", "image_dir", "reserved_cpus",
    "reserved_memory", "host_root", "simulated_host",
)


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, simulated: list[str]) -> HostNode | None:
    """The host node the flags ask for, or None; flag errors end the program as argparse does."""
    if args.host_node is None:
        given = [f"--{name.replace('_', '-')}" for name in HOST_ONLY if getattr(args, name) is not None]
        if given:
            parser.error(f"{', '.join(given)} configure the host node: add --host-node")
        return None
    if not NODE_NAME.match(args.host_node) or len(args.host_node) > 253:
        parser.error(f"--host-node {args.host_node!r} is not a valid Node name: give one in lower case, "
                     "letters, digits, '-' and '.'")
    if args.host_node in simulated:
        parser.error(f"--host-node {args.host_node} is also the name of a simulated node: choose another")
    for flag in ("agent_state_dir", "image_dir"):
        value = getattr(args, flag)
        if value is not None and not value.is_absolute():
            parser.error(f"--{flag.replace('_', '-')} {value}: give an absolute path")
    for flag, parse in (("extra_vf_ids", ExtraVfId.parse_list), ("reserved_cpus", parse_cpulist), ("reserved_memory", parse_bytes)):
        value = getattr(args, flag)
        try:
            if value is not None:
                parse(value)
        except ValueError as error:
            parser.error(f"--{flag.replace('_', '-')}: {error}")
    given = {
        "libvirt_uri": args.libvirt_uri, "virt_type": args.virt_type, "cpu_mode": args.cpu_mode,
        "extra_vf_ids": args.extra_vf_ids, "state_dir": args.agent_state_dir, "image_dir": args.image_dir,
        "host_root": args.host_root, "reserved_cpus": args.reserved_cpus, "reserved_memory": args.reserved_memory,
        "simulated": args.simulated_host,
    }
    return HostNode(name=args.host_node, **{k: v for k, v in given.items() if v is not None})
