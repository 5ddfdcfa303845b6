"""The controller and agents run with their own tokens and can do only their own work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from qatvm.controlplane.kubeconfig import write_kubeconfig
from qatvm.api.vm import FINALIZER
from qatvm.kube import QatNodeResource, QatVirtualMachineResource, client
from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from vms import status, vm, wait_ready


def _refused(kubectl: Kubectl, *args: str) -> str:
    result = kubectl.run(*args, check=False)
    assert result.returncode != 0, f"kubectl {' '.join(args)} was allowed"
    return result.stderr


def _patch_refused(kubeconfig: Path, resource: Any, name: str, patch: dict[str, Any], namespace: str | None = None) -> str:
    with pytest.raises(ApiError) as refused:
        client(kubeconfig).patch(resource, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
    return str(refused.value.status.message)


def test_agent_is_confined_to_its_node(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("guarded", namespace))
    wait_ready(kubectl, "guarded", namespace)
    home = status(kubectl, "guarded", namespace)["nodeName"]
    other = next(n for n in nodes.state().nodes if n != home)
    own_agent = kubectl.with_kubeconfig(nodes.root(home) / "agent.kubeconfig")

    assert "may not change a VM's spec" in _refused(
        own_agent, "patch", "qvm", "guarded", "-n", namespace, "--type=merge", "-p", '{"spec":{"running":false}}'
    )
    # kubectl reads a status before patching it, a right agents do not need; the API directly:
    other_config = nodes.root(other) / "agent.kubeconfig"
    assert f"may not write a VM placed on {home}" in _patch_refused(
        other_config, QatVirtualMachineResource.Status, "guarded", {"status": {"phase": "Failed"}}, namespace
    )
    assert f"may not write qatnodes {home}" in _patch_refused(
        other_config, QatNodeResource.Status, home, {"status": {"free": 0}}
    )
    assert "forbidden" in _refused(own_agent, "get", "secrets", "-A").lower()
    assert "forbidden" in _refused(own_agent, "delete", "qvm", "guarded", "-n", namespace).lower()
    # What it must do still works: its own VM's status.
    client(nodes.root(home) / "agent.kubeconfig").patch(
        QatVirtualMachineResource.Status, "guarded", {"status": {"observedGeneration": 1}},
        namespace=namespace, patch_type=PatchType.MERGE,
    )


def test_controller_cannot_delete_or_read_secrets(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    controller = kubectl.with_kubeconfig(nodes.state_dir / "controller.kubeconfig")
    kubectl.apply(vm("plain", namespace))
    assert "forbidden" in _refused(controller, "delete", "qvm", "plain", "-n", namespace).lower()
    assert "forbidden" in _refused(controller, "get", "secrets", "-A").lower()
    assert "forbidden" in _patch_refused(nodes.state_dir / "controller.kubeconfig", QatNodeResource.Status, "node-1", {"status": {}})
    assert controller.run("auth", "can-i", "patch", "qatvirtualmachines", "--subresource=status", check=False).stdout.strip() == "yes"


def test_controller_may_only_release_a_deleted_vm_that_was_never_placed(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    """RBAC lets the controller patch VMs; qatvm-controller-unplaced-only lets it do one thing:
    take the agent's finalizer off a VM being deleted that no node ever held."""
    config = nodes.state_dir / "controller.kubeconfig"
    kubectl.apply(vm("placed", namespace))
    wait_ready(kubectl, "placed", namespace)
    assert "may change nothing of a VM but remove the agent's finalizer" in _patch_refused(
        config, QatVirtualMachineResource, "placed", {"spec": {"running": False}}, namespace
    )
    assert "only from a VM that is being deleted and was never placed" in _patch_refused(
        config, QatVirtualMachineResource, "placed", {"metadata": {"finalizers": None}}, namespace
    )
    # A VM that can never fit, held from going by a finalizer of the test's own besides the agent's.
    hold = "example.com/hold"
    unfit = vm("unfit", namespace, count=64)
    unfit["metadata"]["finalizers"] = [hold]
    kubectl.apply(unfit)
    assert kubectl.json("get", "qvm", "unfit", "-n", namespace)["metadata"]["finalizers"] == [hold, FINALIZER]
    eventually(lambda: _assert_phase(kubectl, "unfit", namespace, "Pending"), timeout=30)
    kubectl.run("delete", "qvm", "unfit", "-n", namespace, "--wait=false")
    # The controller let its agent's finalizer go at once, and nothing else of the VM.
    eventually(lambda: _assert_finalizers(kubectl, "unfit", namespace, [hold]), timeout=30)
    kubectl.run("patch", "qvm", "unfit", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


def _assert_phase(kubectl: Kubectl, name: str, namespace: str, phase: str) -> None:
    assert status(kubectl, name, namespace).get("phase") == phase


def _assert_finalizers(kubectl: Kubectl, name: str, namespace: str, finalizers: list[str]) -> None:
    assert kubectl.json("get", "qvm", name, "-n", namespace)["metadata"].get("finalizers") == finalizers


def test_writes_per_vm_from_create_to_ready(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("counted", namespace, count=2))
    wait_ready(kubectl, "counted", namespace)
    writes = [
        e for e in nodes.audit.events()
        if (e.get("objectRef") or {}).get("resource") == "qatvirtualmachines"
        and e["objectRef"].get("namespace") == namespace and e["objectRef"].get("name") == "counted"
        and e["verb"] in ("create", "update", "patch") and e.get("stage") == "ResponseComplete"
    ]
    by_user: dict[str, int] = {}
    for e in writes:
        user = e["user"]["username"].rsplit(":", 1)[-1]
        by_user[user] = by_user.get(user, 0) + 1
    print(f"writes to the VM object from create to Ready: {len(writes)} {by_user}")
    operator_writes = len(writes) - by_user.get("qatvm-admin", 0)
    assert by_user.get("qatvm-controller") == 1, by_user  # the allocation into status, nothing else
    assert operator_writes <= 6, by_user
    controller_events = [
        e for e in nodes.audit.events()
        if (e.get("objectRef") or {}).get("resource") == "events" and e["objectRef"].get("namespace") == namespace
        and e["verb"] == "create" and e.get("stage") == "ResponseComplete" and e["user"]["username"].endswith(":qatvm-controller")
    ]
    assert len(controller_events) == 1, controller_events  # Scheduled


def test_idle_agents_write_nothing_but_their_node_lease(kubectl: Kubectl, nodes: LocalNodes) -> None:
    """Agents rescan sysfs every 2 s; with nothing changing, the API server sees no write from
    them but the heartbeat, as from a kubelet: each renews its own node's Lease."""

    def settled() -> None:
        # Earlier tests' namespaces are still being deleted, and their VMs with them.
        phases = [ns["status"]["phase"] for ns in kubectl.json("get", "namespaces")["items"]]
        assert "Terminating" not in phases

    eventually(settled, timeout=120, interval=1)

    def agent_writes() -> list[tuple[str, dict[str, str]]]:
        return [
            (e["verb"], e["objectRef"]) for e in nodes.audit.events()
            if e["verb"] in ("create", "update", "patch") and "qatvm-agent" in e["user"]["username"]
        ]

    time.sleep(2)
    before = len(agent_writes())
    time.sleep(6.5)  # three scans by each agent
    writes = agent_writes()[before:]
    heartbeats = [ref for verb, ref in writes if ref.get("resource") == "leases"]
    assert [w for w in writes if w[1].get("resource") != "leases"] == []
    assert {(ref["namespace"], ref["name"]) for ref in heartbeats} <= {("qatvm-node-lease", n) for n in nodes.state().nodes}
    assert heartbeats, "no agent renewed its node lease"


# -- attacks: as a tenant with the shipped roles, and as an agent with its real token ------------


def tenant_kubectl(kubectl: Kubectl, nodes: LocalNodes, namespace: str, role: str, tmp_path: Path) -> Kubectl:
    """A ServiceAccount of `namespace` bound (RoleBinding) to the ClusterRole `role`, with its own token."""
    account = f"tenant-{role}"
    kubectl.run("create", "serviceaccount", account, "-n", namespace)
    kubectl.run("create", "rolebinding", account, "-n", namespace, f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}")
    token = kubectl.run("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    state = nodes.state()
    assert state.server is not None
    path = write_kubeconfig(tmp_path / f"{account}.kubeconfig", state.server, nodes.state_dir / "pki" / "ca.crt",
                            user=account, token=token, namespace=namespace)
    return kubectl.with_kubeconfig(path)


@pytest.mark.parametrize("role", ["edit", "qatvm-edit"])
def test_a_tenant_can_neither_free_nor_move_its_vfs(kubectl: Kubectl, nodes: LocalNodes, namespace: str, role: str, tmp_path: Path) -> None:
    """Findings 2, 3, 4: relabelling, removing the agent's finalizer, `kubectl replace`."""
    tenant = tenant_kubectl(kubectl, nodes, namespace, role, tmp_path)
    manifest = vm("mine", namespace)
    eventually(lambda: tenant.apply(manifest), timeout=30)  # the aggregated `edit` may take a moment
    wait_ready(kubectl, "mine", namespace)
    placed = status(kubectl, "mine", namespace)
    home = placed["nodeName"]
    other = next(n for n in nodes.state().nodes if n != home)
    devices = [d["pciAddress"] for d in placed["devices"]]

    assert "only the node's agent removes the finalizer" in _refused(
        tenant, "patch", "qvm", "mine", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]'
    )
    current = kubectl.json("get", "qvm", "mine", "-n", namespace)
    replaced = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
    assert "kubectl replace" in tenant.run("replace", "-f", "-", input=replaced, check=False).stderr
    assert "forbidden" in _refused(tenant, "patch", "qvm", "mine", "--subresource=status", "--type=merge",
                                   "-p", '{"status":{"nodeName":"%s"}}' % other).lower()
    # The old label is a name like any other: writing it moves nothing and frees nothing.
    tenant.run("label", "qvm", "mine", f"qatvm.io/node={other}", "--overwrite")
    time.sleep(3)  # longer than an agent's scan
    assert status(kubectl, "mine", namespace)["nodeName"] == home
    assert all(nodes.driver(home, d) == "vfio-pci" for d in devices)
    domains = nodes.domains(home)
    assert [name for name in domains if name.startswith(f"qatvm-{namespace}_")] != []

    # Deleting it cleans up on its real node and nowhere else.
    tenant.run("delete", "qvm", "mine", "--timeout=60s")
    assert all(nodes.driver(home, d) != "vfio-pci" for d in devices)
    assert not [name for name in nodes.domains(home) if name.startswith(f"qatvm-{namespace}_")]


def test_an_agent_token_cannot_move_relabel_or_own_vms(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    """Finding 5, with the agent's real, node-bound token from the running cluster."""
    kubectl.apply(vm("target", namespace), vm("victim", namespace))
    wait_ready(kubectl, "target", namespace)
    wait_ready(kubectl, "victim", namespace)
    placed = status(kubectl, "target", namespace)
    home = placed["nodeName"]
    other = next(n for n in nodes.state().nodes if n != home)
    agent = nodes.root(home) / "agent.kubeconfig"
    placement = "may not change a VM's placement"
    assert placement in _patch_refused(agent, QatVirtualMachineResource.Status, "target", {"status": {"nodeName": other}}, namespace)
    nic = {"status": {"devices": [{"pciAddress": "0000:3b:00.0"}], "pciAddresses": "0000:3b:00.0"}}
    assert placement in _patch_refused(agent, QatVirtualMachineResource.Status, "target", nic, namespace)
    # An ownerReference on its own VM to another one: the garbage collector would delete it with the other.
    victim = kubectl.json("get", "qvm", "victim", "-n", namespace)["metadata"]
    owner = {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatVirtualMachine", "name": "victim", "uid": victim["uid"]}
    assert "labels or ownerReferences" in _patch_refused(
        agent, QatVirtualMachineResource, "target", {"metadata": {"ownerReferences": [owner]}}, namespace
    )
    assert "labels or ownerReferences" in _patch_refused(
        agent, QatVirtualMachineResource, "target", {"metadata": {"labels": {"qatvm.io/node": other}}}, namespace
    )
    assert "labels or ownerReferences" in _patch_refused(agent, Node.Status, home, {"metadata": {"labels": {"zone": "stolen"}}})
    assert "only the qatvm.io/vf capacity" in _patch_refused(agent, Node.Status, home, {"status": {"capacity": {"memory": "1Ti"}}})
    after = status(kubectl, "target", namespace)
    assert after["nodeName"] == home and after["devices"] == placed["devices"]
    assert "ownerReferences" not in kubectl.json("get", "qvm", "target", "-n", namespace)["metadata"]
    assert "zone" not in kubectl.json("get", "node", home)["metadata"].get("labels", {})
    # Leave no VM holding VFs behind for the tests that count free VFs.
    kubectl.run("delete", "qvm", "--all", "-n", namespace, "--timeout=60s")


def test_an_agent_token_renews_only_its_own_node_lease(kubectl: Kubectl, nodes: LocalNodes) -> None:
    """A node's heartbeat is what keeps its VMs Ready: with its real token, an agent can neither
    keep another node looking alive nor make it look lost, nor hold its own Lease as another."""
    home, other = sorted(nodes.state().nodes)[:2]
    agent = nodes.root(home) / "agent.kubeconfig"
    renewal = {"spec": {"holderIdentity": other, "renewTime": "2030-01-01T00:00:00.000000Z"}}
    assert f"may renew only the Lease qatvm-node-lease/{home}, not qatvm-node-lease/{other}" in _patch_refused(
        agent, Lease, other, renewal, "qatvm-node-lease"
    )
    assert f"must hold its Lease as {home}" in _patch_refused(agent, Lease, home, renewal, "qatvm-node-lease")
    assert "forbidden" in _patch_refused(agent, Lease, "qatvm-controller", renewal, "qatvm-system").lower()
    with pytest.raises(ApiError) as deleting:
        client(agent).delete(Lease, other, namespace="qatvm-node-lease")
    assert deleting.value.status.code == 403
    kept = kubectl.json("get", "lease", other, "-n", "qatvm-node-lease")["spec"]
    assert kept["holderIdentity"] == other and not kept["renewTime"].startswith("2030")
