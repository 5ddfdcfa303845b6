"""`qatvm local up --host-node`: the machine itself as a node, beside simulated ones.

The machine here has no QAT part, so the "host" is a node root holding a simulated kernel
(`--host-root`, as the agent's own flag, and `--simulated-host`, which hands the host node's
checks, agent and give-back the simulation); everything else is what a QAT server gets: the
preflight checks, a Node without the simulated label, an agent with a token bound to it, and
`local down` giving the host back. tests/realkernel runs the same on a real kernel.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from qatvm.local.state import ClusterState
from qatvm.processes import pid_alive, wait_until
from qatvm.simulation import HardwareProfile, generate
from qatvm.simulation.hypervisor import open_hypervisor
from qatvm.testing.kubectl import Kubectl

IMAGE = "/var/lib/qatvm/images/base.qcow2"
# c62x VFs start on their in-tree driver, so "given back" has a driver to return to.
PROFILE = {"disable_denylist": True, "pfs": [{"generation": "c62x", "vfs": 2}]}


def qatvm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qatvm", *args], capture_output=True, text=True, timeout=timeout)


def host_root(tmp_path: Path, profile: dict[str, Any]) -> Path:
    root = tmp_path / "host"
    generate(HardwareProfile.model_validate(profile), root / "sys")
    image = root / IMAGE.lstrip("/")
    image.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return root


def host_flags(root: Path) -> list[str]:
    return [
        "--host-node", "hn", "--host-root", str(root), "--libvirt-uri", f"qatvm-test://{root}/hypervisor.xml",
        "--virt-type", "qemu", "--cpu-mode", "maximum", "--simulated-host",
    ]


def driver(root: Path, address: str) -> str | None:
    link = root / "sys/bus/pci/devices" / address / "driver"
    return Path(link.readlink()).name if link.is_symlink() else None


def domains(root: Path) -> list[str]:
    """The states of qatvm's domains, as the node's libvirt file holds them now."""
    with open_hypervisor(f"qatvm-test://{root}/hypervisor.xml") as hypervisor:
        return [d.state.value for d in hypervisor.owned_domains()]


def token_claims(kubeconfig: Path) -> dict[str, Any]:
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def vm() -> dict[str, Any]:
    return {
        "apiVersion": "qatvm.io/v1alpha1",
        "kind": "QatVirtualMachine",
        "metadata": {"name": "on-host", "namespace": "default"},
        "spec": {
            "memory": "128Mi", "qat": {"count": 1}, "image": {"path": IMAGE},
            "nodeSelector": {"kubernetes.io/hostname": "hn"},
        },
    }


def test_host_node_runs_a_vm_and_down_gives_the_host_back(tmp_path: Path) -> None:
    root = host_root(tmp_path, PROFILE)
    state_dir = tmp_path / "cluster"
    reservation = ["--reserved-cpus", "1", "--reserved-memory", "512Mi"]
    up = qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir), *host_flags(root), *reservation)
    assert up.returncode == 0, up.stderr
    assert "ok   IOMMU: on" in up.stderr and "ok   VFs: 2 of 2 VFs assignable" in up.stderr
    kubectl = Kubectl(state_dir / "bin" / "kubectl", state_dir / "kubeconfig")
    try:
        # The host's own reservation reached its agent: what it keeps back is off the capacity.
        numa = kubectl.json("get", "qatnode", "hn")["status"]["numa"]
        assert [n["reservedCpus"] for n in numa if n["reservedCpus"]] == ["1"]
        assert {n["reservedMemory"] for n in numa} == {512 * 2**20}
        nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in kubectl.json("get", "nodes")["items"]}
        assert sorted(nodes) == ["hn", "node-1"]
        assert "qatvm.io/simulated" not in nodes["hn"] and nodes["hn"]["kubernetes.io/hostname"] == "hn"
        claims = token_claims(state_dir / "nodes" / "hn" / "agent.kubeconfig")
        assert claims["kubernetes.io"]["node"]["name"] == "hn"
        assert claims["sub"] == "system:serviceaccount:qatvm-system:qatvm-agent"
        assert kubectl.json("get", "qatnode", "hn")["status"]["vfs"]

        kubectl.apply(vm())
        kubectl.run("wait", "--for=condition=Ready", "qvm/on-host", "--timeout=60s")
        status = kubectl.json("get", "qvm", "on-host")["status"]
        assert status["nodeName"] == "hn"
        address = status["devices"][0]["pciAddress"]
        assert driver(root, address) == "vfio-pci"
        assert (root / "var/lib/qatvm/binding").is_dir()
    finally:
        state = ClusterState.load(state_dir)
        down = qatvm("local", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert state is not None and not any(pid_alive(p) for p in [state.supervisor_pid, *state.components.values()])
    # Given back: the VF on its driver again, no domain, no binding record; the VM is still wanted.
    assert driver(root, address) == "c6xxvf"
    assert domains(root) == []
    assert list((root / "var/lib/qatvm/binding").iterdir()) == []
    log = (state_dir / "logs" / "supervisor.log").read_text()
    assert f"host node hn: gave VF {address} back" in log

    # The next `up` starts the VM again on the host.
    again = qatvm("local", "up", "--nodes", "1", "--state-dir", str(state_dir), *host_flags(root))
    assert again.returncode == 0, again.stderr
    try:
        # Its status still says Ready from before `down`: the node itself shows the restart.
        assert wait_until(lambda: driver(root, address) == "vfio-pci", 60)
        assert wait_until(lambda: domains(root) == ["running"], 30)
        kubectl.run("delete", "qvm", "on-host", "--timeout=60s")
        assert driver(root, address) == "c6xxvf"
    finally:
        assert qatvm("local", "down", "--purge", "--state-dir", str(state_dir)).returncode == 0


def test_a_host_that_is_not_ready_starts_nothing_and_says_what_to_fix(tmp_path: Path) -> None:
    root = host_root(tmp_path, {"vfio_pci": False, "pfs": [{"generation": "4xxx", "vfs": 0, "total_vfs": 4}]})
    state_dir = tmp_path / "cluster"
    up = qatvm("local", "up", "--nodes", "0", "--state-dir", str(state_dir), *host_flags(root), "--image-dir", "/srv/images")
    assert up.returncode == 1
    assert "FAIL vfio-pci: the vfio-pci driver is not loaded" in up.stderr
    assert "FAIL VFs: SR-IOV is off on" in up.stderr and "sriov_numvfs" in up.stderr
    assert "FAIL images directory: /srv/images does not exist" in up.stderr
    assert "nothing was started: fix vfio-pci, VFs, images directory" in up.stderr
    assert not state_dir.exists()


def test_host_node_flags_are_checked(tmp_path: Path) -> None:
    alone = qatvm("local", "up", "--state-dir", str(tmp_path), "--libvirt-uri", "qemu:///system")
    assert alone.returncode == 2 and "--libvirt-uri configure the host node: add --host-node" in alone.stderr
    twin = qatvm("local", "up", "--nodes", "2", "--state-dir", str(tmp_path), "--host-node", "node-2")
    assert twin.returncode == 2 and "also the name of a simulated node" in twin.stderr
    bad = qatvm("local", "up", "--state-dir", str(tmp_path), "--host-node", "Not_A_Name")
    assert bad.returncode == 2 and "is not a valid Node name" in bad.stderr
    cpus = qatvm("local", "up", "--state-dir", str(tmp_path), "--host-node", "hn", "--reserved-cpus", "3-1")
    assert cpus.returncode == 2 and "--reserved-cpus: '3-1' in CPU list '3-1' is not a CPU or an ascending range" in cpus.stderr
    memory = qatvm("local", "up", "--state-dir", str(tmp_path), "--host-node", "hn", "--reserved-memory", "lots")
    assert memory.returncode == 2 and "--reserved-memory: 'lots' is not a Kubernetes quantity" in memory.stderr
    lonely = qatvm("local", "up", "--state-dir", str(tmp_path), "--reserved-memory", "1Gi")
    assert lonely.returncode == 2 and "--reserved-memory configure the host node: add --host-node" in lonely.stderr
    assert not (tmp_path / "cluster.json").exists()
