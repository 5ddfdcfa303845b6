"""A node whose agent stops, a cordoned node, and a node deleted for good, on the local cluster.

The local cluster's grace period is 10 s (agents renew every 2 s); the controller looks every 2.5 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from qatvm.testing.cluster import LocalNodes, eventually, local_cluster
from qatvm.testing.kubectl import Kubectl

from vms import condition, status, vm, wait_ready

GRACE = 10.0


def on(name: str, namespace: str, node: str) -> dict[str, Any]:
    body = vm(name, namespace)
    body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return body


def ready(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    cond = condition(kubectl, name, namespace, "Ready")
    assert cond is not None, name
    return cond


@contextmanager
def frozen(nodes: LocalNodes, node: str) -> Iterator[int]:
    """The node's agent stopped (SIGSTOP) as a hung or cut-off agent is: alive, doing nothing."""
    pid = nodes.state().components[f"agent-{node}"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stopped_agents_vms_go_unreachable_within_the_grace_period_and_come_back(
    kubectl: Kubectl, namespace: str, nodes: LocalNodes
) -> None:
    kubectl.apply(on("steady", namespace, "node-2"))
    wait_ready(kubectl, "steady", namespace)
    before = status(kubectl, "steady", namespace)
    with frozen(nodes, "node-2"):
        stopped = time.monotonic()
        def unreachable() -> dict[str, Any]:
            cond = ready(kubectl, "steady", namespace)
            assert (cond["status"], cond["reason"]) == ("False", "NodeUnreachable"), cond
            return cond
        cond = eventually(unreachable, timeout=60)
        took = time.monotonic() - stopped
        print(f"NodeUnreachable {took:.1f}s after the agent stopped (grace {GRACE:.0f}s)")
        # The grace period, one look of the controller (2.5 s), and a busy machine's slack.
        assert GRACE <= took + 2 < GRACE + 15, took
        assert "node-2 has not renewed its node lease" in cond["message"]
        # The domain may still run: its VFs, phase and node stay as they were.
        after = status(kubectl, "steady", namespace)
        assert (after["phase"], after["nodeName"], after["devices"]) == (before["phase"], "node-2", before["devices"])
        # Nothing new goes there.
        kubectl.apply(on("newcomer", namespace, "node-2"))
        def refused() -> None:
            cond = condition(kubectl, "newcomer", namespace, "Scheduled")
            assert cond is not None and cond["status"] == "False", cond
            assert "1 of the 1 nodes matching its nodeSelector take nothing new (cordoned or unreachable)" in cond["message"]
            assert "node-2" not in cond["message"]  # a tenant learns no node's name
        eventually(refused)
    # Back: the agent reconciles, reports its VM Ready again, and the newcomer is placed.
    wait_ready(kubectl, "steady", namespace, timeout=60)
    assert ready(kubectl, "steady", namespace)["reason"] == "Running"
    wait_ready(kubectl, "newcomer", namespace, timeout=60)


def test_a_cordoned_node_takes_nothing_new(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("cordon", "node-1")
    try:
        kubectl.apply(on("cordoned", namespace, "node-1"))
        def refused() -> None:
            cond = condition(kubectl, "cordoned", namespace, "Scheduled")
            assert cond is not None and cond["status"] == "False", cond
            # No node named to the tenant: only how many of those it may go to take nothing new.
            assert "1 of the 1 nodes matching its nodeSelector take nothing new (cordoned or unreachable)" in cond["message"], cond
        eventually(refused)
        assert condition(kubectl, "cordoned", namespace, "Stalled") is None  # uncordoning will help
    finally:
        kubectl.run("uncordon", "node-1")
    wait_ready(kubectl, "cordoned", namespace)


def test_deleting_a_lost_nodes_node_and_qatnode_fails_its_vms_and_frees_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A cluster of its own: the shared one keeps both its nodes for the tests after this one.
    with local_cluster(tmp_path_factory.mktemp("gone") / "cluster", nodes=1) as cluster:
        assert cluster.local is not None
        kubectl, nodes, namespace = cluster.kubectl, cluster.local, "default"
        kubectl.apply(on("doomed", namespace, "node-1"))
        wait_ready(kubectl, "doomed", namespace)
        with frozen(nodes, "node-1"):
            kubectl.run("delete", "qatnode", "node-1")
            kubectl.run("delete", "node", "node-1")
            def failed() -> dict[str, Any]:
                st = status(kubectl, "doomed", namespace)
                cond = ready(kubectl, "doomed", namespace)
                assert (st["phase"], cond["reason"]) == ("Failed", "NodeGone"), st
                return st
            st = eventually(failed, timeout=60)
            assert st["devices"] == [] and not st.get("resources")
            # No agent is left to let it go: the admin who deleted the node removes its finalizer.
            kubectl.run("delete", "qvm", "doomed", "-n", namespace, "--wait=false")
            kubectl.run("patch", "qvm", "doomed", "-n", namespace, "--type=json",
                        "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
            kubectl.run("wait", "--for=delete", "qvm/doomed", "-n", namespace, "--timeout=30s")
