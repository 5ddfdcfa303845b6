"""The whole operator on a real kernel, through the project's own commands, as the README's
section for a QAT server tells a person to run it: `qatvm local up --host-node` in the guest
(a machine with an IOMMU, SR-IOV VFs, libvirt and no network card), `kubectl apply` of a VM,
Ready with the VF on vfio-pci inside a running nested domain, `kubectl delete`, the VF given
back, `qatvm local down`, nothing left.

The guest's root is the host's, read-only: the agent's state and the images go on /run, which
is what the first (refused) `up` says to do; the control plane's binaries come from the host's
cache, which is why the guest needs no Go.
"""

from __future__ import annotations

import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from guest_node import Node

from qatvm.paths import cache_dir
from qatvm.testbed.guest import GuestError

pytestmark = pytest.mark.realkernel

STATE = PurePosixPath("/run/qatvm-local")
AGENT_STATE = PurePosixPath("/run/qatvm")
IMAGES = AGENT_STATE / "images"
NODE = "qatvm-guest"  # the guest's host name (tools/guest/init): --host-node's default
VM = "on-host"
# Software emulation runs the control plane about 25 times slower than the host does: kube-apiserver
# alone needs some 100 s of emulated CPU to start, so the default limit of `local up` is too short,
# and with other work on the machine (a shared developer box) the guest gets a fraction of it.
UP_TIMEOUT = 900


class GuestShell:
    """Commands in the guest, as a person at its terminal would type them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.env = {
            # The guest shares the host's cache (read-only) and has a writable home on /run.
            "QATVM_CACHE_DIR": str(cache_dir()),
            "HOME": "/run/tmp",
            "KUBECONFIG": str(STATE / "kubeconfig"),
            "PATH": f"{STATE / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def run(self, *argv: str, input: str = "", timeout: float = 120, check: bool = True) -> tuple[int, str, str]:
        done = self.node.guest.run(list(argv), env=self.env, input=input, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.returncode, done.stdout, done.stderr

    def qatvm(self, *args: str, timeout: float = 240, check: bool = True) -> tuple[int, str, str]:
        # The guest runs the host's interpreter (tools/guest/init): the same path works in it.
        return self.run(sys.executable, "-m", "qatvm", *args, timeout=timeout, check=check)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.run("kubectl", *args, "-o", "json")[1])

    def logs(self) -> str:
        """The end of every log of the local cluster, to see which part failed."""
        return self.run("sh", "-c", f"tail -n 25 {STATE}/logs/*.log", check=False)[1]

    def driver(self, address: str) -> str:
        return self.run("sh", "-c", f"basename \"$(readlink /sys/bus/pci/devices/{address}/driver)\"")[1].strip()


def vm_manifest() -> str:
    return yaml.safe_dump({
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": VM, "namespace": "default"},
        "spec": {"vcpus": 1, "memory": "128Mi", "qat": {"count": 1}, "image": {"path": str(IMAGES / "base.qcow2")}},
    })


def supervisor_seconds(log: str, pattern: str) -> float:
    match = re.search(pattern, log)
    assert match, f"{pattern!r} not in the supervisor log:\n{log}"
    return float(match.group(1))


@pytest.mark.timeout(UP_TIMEOUT + 600)
def test_local_up_host_node_runs_a_vm_with_a_real_vf_and_gives_it_back(
    node: Node, libvirtd: str, timings: dict[str, float]
) -> None:
    sh = GuestShell(node)
    # A 2-vCPU, 2 GiB guest: the agent's defaults (the first CPU and 1 GiB of each NUMA node kept
    # for the host) would leave a VM nothing, so this small machine keeps less, as the README says.
    host_flags = ["--libvirt-uri", libvirtd, "--virt-type", "qemu", "--cpu-mode", "maximum",
                  "--extra-vf-ids", "1b36:0010=qemu-nvme", "--reserved-cpus", "", "--reserved-memory", "256Mi"]
    up = ["local", "up", "--nodes", "0", "--state-dir", str(STATE), "--host-node", *host_flags]

    # The defaults put the agent's files and images under /var/lib/qatvm: read-only here.
    code, _, refused = sh.qatvm(*up, check=False)
    assert code == 1, refused
    for line in ("ok   IOMMU: on", "ok   vfio-pci: loaded", "ok   VFs: 2 of 2 VFs assignable",
                 f"ok   libvirt: {libvirtd} answers", "FAIL agent state directory: /var/lib/qatvm cannot be written",
                 "FAIL images directory: /var/lib/qatvm/images does not exist", "nothing was started"):
        assert line in refused, refused

    sh.run("mkdir", "-p", str(IMAGES))
    sh.run("qemu-img", "create", "-q", "-f", "qcow2", str(IMAGES / "base.qcow2"), "16M")
    started = time.monotonic()
    try:
        _, exports, progress = sh.qatvm(
            *up, "--agent-state-dir", str(AGENT_STATE), "--image-dir", str(IMAGES), "--timeout", str(UP_TIMEOUT),
            timeout=UP_TIMEOUT + 60,
        )
    except (AssertionError, GuestError) as error:
        raise AssertionError(f"{error}\n{sh.logs()}") from error
    timings["host node: qatvm local up"] = time.monotonic() - started
    assert "control plane ready in" in progress, progress  # the stages are shown as they are reached
    assert f"export KUBECONFIG={STATE / 'kubeconfig'}" in exports
    supervisor = sh.run("cat", str(STATE / "logs" / "supervisor.log"))[1]
    timings["host node: control plane up"] = supervisor_seconds(supervisor, r"control plane ready in ([\d.]+)s")
    timings["host node: + every inventory published"] = supervisor_seconds(
        supervisor, r"every node's inventory published ([\d.]+)s after start"
    )
    try:
        nodes = sh.kubectl_json("get", "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == [NODE]
        inventory = sh.kubectl_json("get", "qatnode", NODE)["status"]
        assert sorted(vf["pciAddress"] for vf in inventory["vfs"]) == sorted(node.vfs)
        assert all(vf["assignable"] and vf["driver"] == "nvme" for vf in inventory["vfs"])

        started = time.monotonic()
        sh.run("kubectl", "apply", "-f", "-", input=vm_manifest())
        code, _, _ = sh.run("kubectl", "wait", "--for=condition=Ready", f"qvm/{VM}", "--timeout=180s", timeout=200, check=False)
        assert code == 0, f"{VM} not Ready in 180 s: {sh.kubectl_json('get', 'qvm', VM).get('status')}\n{sh.logs()}"
        timings["host node: apply to Ready"] = time.monotonic() - started

        vm = sh.kubectl_json("get", "qvm", VM)
        status = vm["status"]
        assert status["phase"] == "Running" and status["nodeName"] == NODE
        vf = status["devices"][0]["pciAddress"]
        assert vf in node.vfs and sh.driver(vf) == "vfio-pci"
        domain = status["domain"]["name"]
        assert sh.run("virsh", "-c", libvirtd, "domstate", domain)[1].strip() == "running"
        xml = ET.fromstring(sh.run("virsh", "-c", libvirtd, "dumpxml", domain)[1])
        addresses = [
            {k: int(v, 16) for k, v in a.attrib.items() if k in ("domain", "bus", "slot", "function")}
            for a in xml.findall("./devices/hostdev/source/address")
        ]
        bus, slot, function = (int(part, 16) for part in vf.replace(".", ":").split(":")[1:])
        assert addresses == [{"domain": 0, "bus": bus, "slot": slot, "function": function}]
        # The agent's files (one folder per VM, named by its UID) are where --agent-state-dir put them.
        assert sh.run("ls", str(AGENT_STATE / "vms"))[1].split() == [vm["metadata"]["uid"]]

        table = sh.run("kubectl", "get", "qvm")[1].splitlines()
        assert table[0].split() == ["NAME", "PHASE", "NODE", "VFS", "READY", "AGE"]
        assert table[1].split()[:5] == [VM, "Running", NODE, "1", "True"]
        # The README's next two commands: the VF's host address, and the domain libvirt runs.
        wide = sh.run("kubectl", "get", "qvm", "-o", "wide")[1].splitlines()
        assert wide[0].split() == ["NAME", "PHASE", "NODE", "VFS", "READY", "DEVICES", "DOMAIN", "AGE"]
        assert wide[1].split()[:7] == [VM, "Running", NODE, "1", "True", vf, domain]
        assert sh.run("virsh", "-c", libvirtd, "list", "--name")[1].split() == [domain]

        started = time.monotonic()
        sh.run("kubectl", "delete", "qvm", VM, "--timeout=120s", timeout=150)
        timings["host node: delete"] = time.monotonic() - started
        assert sh.driver(vf) == "nvme"
        assert sh.run("virsh", "-c", libvirtd, "list", "--all", "--name")[1].split() == []
        assert sh.run("ls", "-A", str(AGENT_STATE / "vms"))[1].split() == []
        assert sh.run("ls", "-A", str(AGENT_STATE / "binding"))[1].split() == []
        holders = [vf.get("allocatedTo") for vf in sh.kubectl_json("get", "qatnode", NODE)["status"]["vfs"]]
        assert holders == [None, None]
    finally:
        state = json.loads(sh.run("cat", str(STATE / "cluster.json"))[1])
        started = time.monotonic()
        sh.qatvm("local", "down", "--state-dir", str(STATE), timeout=UP_TIMEOUT)
        timings["host node: qatvm local down"] = time.monotonic() - started
    pids = [state["supervisor_pid"], *state["components"].values()]
    assert sh.run("sh", "-c", " ".join(f"test ! -e /proc/{pid} &&" for pid in pids) + " echo gone")[1].strip() == "gone"
    assert sorted(sh.driver(vf) for vf in node.vfs) == ["nvme", "nvme"]
