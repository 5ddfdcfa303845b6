"""A user's whole path: apply, Ready, stop, start, delete, as `kubectl` shows it."""

from __future__ import annotations

import time

from qatvm.testing.cluster import LocalNodes, eventually
from qatvm.testing.kubectl import Kubectl
from vms import condition, status, vm, wait_ready


def test_apply_runs_a_domain_with_exactly_its_vfs(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    started = time.monotonic()
    kubectl.apply(vm("web", namespace, count=2, services=["sym", "asym"], numa="require"))
    wait_ready(kubectl, "web", namespace)
    print(f"apply to Ready: {time.monotonic() - started:.2f}s")

    row = kubectl.run("get", "qvm", "web", "-n", namespace, "--no-headers").stdout.split()
    st = status(kubectl, "web", namespace)
    node = st["nodeName"]
    assert row[:5] == ["web", "Running", node, "2", "True"]
    devices = sorted(d["pciAddress"] for d in st["devices"])
    assert len(devices) == 2 and len({d["numaNode"] for d in st["devices"]}) == 1
    assert all(d["pfAddress"] and d["iommuGroup"] is not None for d in st["devices"])

    # On the node: the VFs sit on vfio-pci, and the running domain has those and only those.
    assert [nodes.driver(node, d) for d in devices] == ["vfio-pci", "vfio-pci"]
    domain = st["domain"]["name"]
    assert nodes.domains(node)[domain][0].value == "running"
    assert nodes.hostdevs(node, domain) == devices

    # The operator wrote status and a label, never spec: GitOps tools see no drift.
    meta = kubectl.json("get", "qvm", "web", "-n", namespace, "--show-managed-fields")["metadata"]
    assert meta["generation"] == 1
    spec_writers = {m["manager"] for m in meta["managedFields"] if "f:spec" in (m.get("fieldsV1") or {})}
    assert spec_writers == {"kubectl-client-side-apply"}, spec_writers

    inventory = kubectl.json("get", "qatnode", node)["status"]
    held = sorted(v["pciAddress"] for v in inventory["vfs"] if (v.get("allocatedTo") or {}).get("name") == "web")
    assert held == devices
    assert inventory["free"] == inventory["total"] - sum(1 for v in inventory["vfs"] if v.get("allocatedTo"))


def test_running_false_stops_and_keeps_the_vfs(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("sleeper", namespace))
    wait_ready(kubectl, "sleeper", namespace)
    st = status(kubectl, "sleeper", namespace)
    node, domain, vf = st["nodeName"], st["domain"]["name"], st["devices"][0]["pciAddress"]

    kubectl.run("patch", "qvm", "sleeper", "-n", namespace, "--type=merge", "-p", '{"spec":{"running":false}}')
    eventually(lambda: _assert_phase(kubectl, "sleeper", namespace, "Stopped"))
    assert nodes.domains(node)[domain][0].value == "shutoff"
    assert nodes.driver(node, vf) == "vfio-pci"
    assert status(kubectl, "sleeper", namespace)["devices"][0]["pciAddress"] == vf
    ready = condition(kubectl, "sleeper", namespace, "Ready")
    assert ready and ready["status"] == "True" and ready["reason"] == "Stopped"

    kubectl.run("patch", "qvm", "sleeper", "-n", namespace, "--type=merge", "-p", '{"spec":{"running":true}}')
    eventually(lambda: _assert_phase(kubectl, "sleeper", namespace, "Running"))
    assert nodes.domains(node)[domain][0].value == "running"


def test_delete_removes_the_domain_and_gives_the_vfs_back(kubectl: Kubectl, nodes: LocalNodes, namespace: str) -> None:
    kubectl.apply(vm("brief", namespace, count=3))
    wait_ready(kubectl, "brief", namespace)
    st = status(kubectl, "brief", namespace)
    node, domain = st["nodeName"], st["domain"]["name"]
    uid = kubectl.json("get", "qvm", "brief", "-n", namespace)["metadata"]["uid"]
    devices = [d["pciAddress"] for d in st["devices"]]
    before = {d: d_drv for d, d_drv in ((d["pciAddress"], d.get("driver")) for d in st["devices"])}

    kubectl.run("delete", "qvm", "brief", "-n", namespace, "--timeout=60s")
    assert domain not in nodes.domains(node)
    assert {d: nodes.driver(node, d) for d in devices} == before
    # Its own VFs, not the node's count: VMs of earlier tests' namespaces may still be going away.
    eventually(lambda: _assert_given_back(kubectl, node, devices))
    assert not (nodes.root(node) / "var/lib/qatvm/vms" / uid).exists()


def _assert_phase(kubectl: Kubectl, name: str, namespace: str, phase: str) -> None:
    assert status(kubectl, name, namespace).get("phase") == phase


def _assert_given_back(kubectl: Kubectl, node: str, devices: list[str]) -> None:
    vfs = {vf["pciAddress"]: vf for vf in kubectl.json("get", "qatnode", node)["status"]["vfs"]}
    assert all(vfs[d].get("allocatedTo") is None and vfs[d]["healthy"] for d in devices), [vfs[d] for d in devices]
