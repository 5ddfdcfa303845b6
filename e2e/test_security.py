"""The controller and agents run with their own tokens and can do only their own work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

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
        own_agent, "patch", "qvm", "guarded", "-n", namespace, "--type=merge", "-p", '{"spec":{"vcpus":8}}'
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
    assert controller.run("auth", "can-i", "patch", "qatvirtualmachines/status", check=False).stdout.strip() == "yes"


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
    assert by_user.get("qatvm-controller") == 2  # allocation into status, then the node label
    assert operator_writes <= 6, by_user


def test_idle_agents_write_nothing(kubectl: Kubectl, nodes: LocalNodes) -> None:
    """Agents rescan sysfs every 2 s; with nothing changing, the API server sees no write from them."""

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
    assert agent_writes()[before:] == []
