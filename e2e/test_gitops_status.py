"""kstatus (Flux, kpt) and Argo CD health of QatVirtualMachines in every state, read from the
real API server, and the committed status fixtures kept true to what the cluster writes.

`QATVM_WRITE_FIXTURES=1` rewrites tests/fixtures/vm-status/ from this run's objects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from qatvm.paths import project_root
from qatvm.testing.argocd import health
from qatvm.testing.cluster import E2eCluster
from qatvm.testing.kstatus import kstatus
from qatvm.testing.states import EXPECTED, HOLD, StateCapture, condition, normalised, shape

FIXTURES = project_root() / "tests" / "fixtures" / "vm-status"


@pytest.fixture(scope="module")
def captured(monitored: E2eCluster) -> Iterator[dict[str, dict[str, Any]]]:
    namespace = f"gitops-{uuid.uuid4().hex[:8]}"
    monitored.kubectl.run("create", "namespace", namespace)
    capture = StateCapture(monitored.kubectl, namespace)
    try:
        yield capture.capture_all()
    finally:
        capture.release()
        monitored.kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)


def test_every_state_is_captured(captured: dict[str, dict[str, Any]]) -> None:
    assert set(captured) == set(EXPECTED)
    assert captured["unobserved"]["metadata"]["generation"] > captured["unobserved"]["status"]["observedGeneration"]
    assert captured["deleting"]["metadata"].get("deletionTimestamp")


def test_kstatus_of_each_state(captured: dict[str, dict[str, Any]]) -> None:
    names = sorted(captured)
    results = dict(zip(names, kstatus(*(captured[n] for n in names)), strict=True))
    assert {n: r.status for n, r in results.items()} == {n: EXPECTED[n][0] for n in names}
    # kstatus passes our words through: the Stalled condition's message is what Flux prints.
    assert results["stalled"].message == condition(captured["stalled"], "Stalled")["message"]  # type: ignore[index]


def test_kstatus_of_qatnodes(monitored: E2eCluster) -> None:
    kubectl = monitored.kubectl
    [node] = kstatus(kubectl.json("get", "qatnode", "node-1"))
    assert node.status == "Current"
    # A QatNode going away (its node removed) is Terminating while anything holds it.
    ghost = {"apiVersion": "qatvm.io/v1alpha1", "kind": "QatNode", "metadata": {"name": "node-gone", "finalizers": [HOLD]}}
    kubectl.apply(ghost)
    try:
        kubectl.run("delete", "qatnode", "node-gone", "--wait=false")
        [gone] = kstatus(kubectl.json("get", "qatnode", "node-gone"))
        assert gone.status == "Terminating"
    finally:
        kubectl.run("patch", "qatnode", "node-gone", "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


def test_argocd_health_of_each_state(captured: dict[str, dict[str, Any]]) -> None:
    verdicts = {name: health(obj) for name, obj in captured.items()}
    assert {n: h.status for n, h in verdicts.items()} == {n: EXPECTED[n][1] for n in captured}
    assert verdicts["waiting"].message == condition(captured["waiting"], "Reconciling")["message"]  # type: ignore[index]
    assert verdicts["failed"].message == condition(captured["failed"], "Stalled")["message"]  # type: ignore[index]


def test_committed_fixtures_have_the_shape_of_a_fresh_capture(captured: dict[str, dict[str, Any]]) -> None:
    if os.environ.get("QATVM_WRITE_FIXTURES"):
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, obj in captured.items():
            (FIXTURES / f"{name}.json").write_text(json.dumps(normalised(obj), indent=2, sort_keys=True) + "\n")
    committed = {p.stem: json.loads(p.read_text()) for p in FIXTURES.glob("*.json")}
    assert set(committed) == set(captured), "run with QATVM_WRITE_FIXTURES=1 to capture the missing states"
    for name, obj in captured.items():
        assert shape(committed[name]) == shape(obj), f"{name}: rerun with QATVM_WRITE_FIXTURES=1 and review the diff"
