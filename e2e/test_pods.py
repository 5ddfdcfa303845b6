"""The operator as the shipped manifests run it: pods on real kubelets (`qatvm local up --kubelet`).

Each test acts on the pods as an admin would (delete a pod, kill a container, roll the
DaemonSet) and checks that the VMs, whose domains live on the nodes, never notice.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from qatvm.controller.leader import candidate_of
from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from vms import status, vm, wait_ready

pytestmark = pytest.mark.kubelet
SYSTEM = "qatvm-system"


def _pods(kubectl: Kubectl, component: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=qatvm,app.kubernetes.io/component={component}"
    return list(kubectl.json("get", "pods", "-n", SYSTEM, "-l", selector)["items"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _holder(kubectl: Kubectl) -> str:
    return str(kubectl.json("get", "lease", "qatvm-controller", "-n", SYSTEM)["spec"]["holderIdentity"])


def _leader(kubectl: Kubectl) -> str:
    """The leading pod's name."""
    return candidate_of(_holder(kubectl))


def _domain_running(nodes: LocalNodes, kubectl: Kubectl, name: str, namespace: str) -> None:
    st = status(kubectl, name, namespace)
    assert nodes.domains(st["nodeName"])[st["domain"]["name"]][0].value == "running"
    assert st["phase"] == "Running"


def test_the_manifests_run_as_pods_with_their_own_identities(kubectl: Kubectl, nodes: LocalNodes) -> None:
    controllers = _pods(kubectl, "controller")
    agents = _pods(kubectl, "agent")
    assert len(controllers) == 2 and all(_ready(p) for p in controllers)
    assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(nodes.state().nodes)
    assert all(_ready(p) for p in agents)
    assert _leader(kubectl) in {p["metadata"]["name"] for p in controllers}

    # The controller's process runs as the image's unprivileged user, the agent's as root.
    components = nodes.state().components
    uid = {name: _uid(components[name]) for name in ("controller", "controller-standby", "agent-node-1")}
    assert uid == {"controller": 10001, "controller-standby": 10001, "agent-node-1": 0}
    # Every agent published its node's inventory through the policy that demands the node
    # claim of the pod's own projected token.
    for node in nodes.state().nodes:
        assert kubectl.json("get", "qatnode", node)["status"]["vfs"]


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("Uid:"))
    return int(line.split()[1])


def test_the_standby_takes_over_when_the_leader_dies(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    holder = _holder(kubectl)
    os.kill(nodes.state().components["controller"], signal.SIGKILL)
    # The killed container restarts under the same pod name, yet as a new holder: it cannot
    # resume its predecessor's lease, so once the lease runs out a live process takes it over.
    eventually(lambda: _assert_not(_holder(kubectl) == holder), timeout=90, interval=1)
    assert _leader(kubectl) in {p["metadata"]["name"] for p in _pods(kubectl, "controller")}
    kubectl.apply(vm("after-takeover", namespace))
    wait_ready(kubectl, "after-takeover", namespace, timeout=90)


def _assert_not(condition: bool) -> None:
    assert not condition


def test_a_deleted_agent_pod_is_replaced_and_its_vms_keep_running(
    kubectl: Kubectl, nodes: LocalNodes, namespace: str
) -> None:
    kubectl.apply(vm("steady", namespace))
    wait_ready(kubectl, "steady", namespace)
    node = status(kubectl, "steady", namespace)["nodeName"]
    old = next(p for p in _pods(kubectl, "agent") if p["spec"]["nodeName"] == node)
    kubectl.run("delete", "pod", old["metadata"]["name"], "-n", SYSTEM, "--wait=false")

    def replaced() -> None:
        pods = [p for p in _pods(kubectl, "agent") if p["spec"]["nodeName"] == node]
        assert [p["metadata"]["uid"] for p in pods] != [old["metadata"]["uid"]]
        assert len(pods) == 1 and _ready(pods[0])
        _domain_running(nodes, kubectl, "steady", namespace)

    eventually(replaced, timeout=120, interval=1)
    # The new agent acts: a VM deleted now is cleaned up on that node.
    domain = status(kubectl, "steady", namespace)["domain"]["name"]
    kubectl.run("delete", "qvm", "steady", "-n", namespace, "--timeout=90s", timeout=100)
    assert domain not in nodes.domains(node)


def test_a_rolling_update_of_the_agents_keeps_vms_running(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("rolled", namespace))
    wait_ready(kubectl, "rolled", namespace)
    # A new tag of the same image, as a release would bring, loaded on every node.
    for node in nodes.state().nodes:
        nodes.run_in(
            node, "ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "tag", "--force",
            "docker.io/library/qatvm:latest", "docker.io/library/qatvm:rolled",
        )
    kubectl.run("set", "image", "daemonset/qatvm-agent", "agent=qatvm:rolled", "-n", SYSTEM)
    kubectl.run("rollout", "status", "daemonset/qatvm-agent", "-n", SYSTEM, "--timeout=240s", timeout=250)

    def rolled() -> None:
        # `rollout status` can return while the last old pod is still terminating (listed).
        agents = _pods(kubectl, "agent")
        assert {p["spec"]["containers"][0]["image"] for p in agents} == {"qatvm:rolled"}
        assert all(_ready(p) for p in agents)

    eventually(rolled, timeout=60, interval=1)
    _domain_running(nodes, kubectl, "rolled", namespace)
    kubectl.run("set", "image", "daemonset/qatvm-agent", "agent=qatvm:latest", "-n", SYSTEM)
    kubectl.run("rollout", "status", "daemonset/qatvm-agent", "-n", SYSTEM, "--timeout=240s", timeout=250)
