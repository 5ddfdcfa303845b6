"""A VF whose PF fails its heartbeat, or that vanishes, is reported and never handed out again.

It breaks hardware, so it runs on a cluster of its own rather than the session's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qatvm.simulation import SimulatedSysfs
from qatvm.testing.cluster import E2eCluster, eventually, local_cluster
from vms import condition, status, vm, wait_ready


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eCluster]:
    if "QATVM_E2E_KUBECONFIG" in os.environ:
        pytest.skip("breaks simulated hardware, which only a local cluster has")
    with local_cluster(tmp_path_factory.mktemp("health") / "cluster", nodes=1) as cluster:
        yield cluster


def _events(cluster: E2eCluster, name: str) -> list[dict[str, Any]]:
    return cluster.kubectl.json("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}")["items"]  # type: ignore[no-any-return]


def test_vfs_that_appear_are_published(private: E2eCluster) -> None:
    kubectl, nodes = private.kubectl, private.local
    assert nodes is not None
    inventory = kubectl.json("get", "qatnode", "node-1")["status"]
    pf = next(v["pfAddress"] for v in inventory["vfs"] if v["services"] == ["dc"])
    enabled = sum(1 for v in inventory["vfs"] if v["pfAddress"] == pf)
    sysfs = SimulatedSysfs(nodes.root("node-1") / "sys")
    total_vfs = int(sysfs.read(f"bus/pci/devices/{pf}/sriov_totalvfs"))
    # As an admin does: SR-IOV off, then on with every VF the PF can have.
    sysfs.write(f"bus/pci/devices/{pf}/sriov_numvfs", "0")
    sysfs.write(f"bus/pci/devices/{pf}/sriov_numvfs", str(total_vfs))

    def published() -> None:
        now = kubectl.json("get", "qatnode", "node-1")["status"]
        assert now["total"] == inventory["total"] - enabled + total_vfs, now["total"]
        node = kubectl.json("get", "node", "node-1")["status"]
        assert node["allocatable"]["qatvm.io/vf"] == str(now["total"])

    eventually(published, timeout=30)


def test_failed_heartbeat_is_reported_and_its_vfs_are_not_handed_out(private: E2eCluster) -> None:
    kubectl, nodes = private.kubectl, private.local
    assert nodes is not None
    kubectl.apply(vm("hb", "default", count=1, services=["dc"]))
    wait_ready(kubectl, "hb", "default")
    device = status(kubectl, "hb", "default")["devices"][0]
    sysfs = SimulatedSysfs(nodes.root("node-1") / "sys")
    sysfs.write(f"kernel/debug/qat_4xxx_{device['pfAddress']}/heartbeat/inject_error", "1")

    def reported() -> None:
        health = condition(kubectl, "hb", "default", "DevicesHealthy")
        assert health is not None and health["status"] == "False" and health["reason"] == "DeviceUnhealthy", health
        assert device["pciAddress"] in health["message"]
        ready = condition(kubectl, "hb", "default", "Ready")
        assert ready is not None and ready["status"] == "False"
        assert any(e["reason"] == "DeviceFailure" and e["type"] == "Warning" for e in _events(private, "hb"))

    eventually(reported, timeout=30)
    inventory = kubectl.json("get", "qatnode", "node-1")["status"]
    sick = [v for v in inventory["vfs"] if v["pfAddress"] == device["pfAddress"]]
    assert sick and all(not v["healthy"] for v in sick) and inventory["unhealthy"] == len(sick)
    node = kubectl.json("get", "node", "node-1")["status"]
    assert node["allocatable"]["qatvm.io/vf"] == str(inventory["total"] - len(sick))

    # Every dc VF of this node sits on the failed PF: a new dc VM must wait, not get one.
    kubectl.apply(vm("after", "default", count=1, services=["dc"]))
    def waits() -> None:
        scheduled = condition(kubectl, "after", "default", "Scheduled")
        assert scheduled is not None and scheduled["status"] == "False", scheduled
    eventually(waits, timeout=20)


def test_vanished_vf_is_reported(private: E2eCluster) -> None:
    kubectl, nodes = private.kubectl, private.local
    assert nodes is not None
    kubectl.apply(vm("lost", "default", count=1, services=["sym"]))
    wait_ready(kubectl, "lost", "default")
    address = status(kubectl, "lost", "default")["devices"][0]["pciAddress"]
    total = kubectl.json("get", "qatnode", "node-1")["status"]["total"]
    SimulatedSysfs(nodes.root("node-1") / "sys").write(f"bus/pci/devices/{address}/remove", "1")

    def reported() -> None:
        health = condition(kubectl, "lost", "default", "DevicesHealthy")
        assert health is not None and health["reason"] == "DeviceMissing" and address in health["message"], health
        assert kubectl.json("get", "qatnode", "node-1")["status"]["total"] == total - 1

    eventually(reported, timeout=30)
    assert not Path(nodes.root("node-1") / "sys/bus/pci/devices" / address).exists()
