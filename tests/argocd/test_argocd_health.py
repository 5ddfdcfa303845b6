"""manifests/argocd/health.lua, run by a real Lua 5.1 on status fixtures captured from real
objects of a local cluster (e2e/test_gitops_status.py writes and re-checks them)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from qatvm.paths import project_root
from qatvm.testing.argocd import HEALTH_SCRIPT, health
from qatvm.testing.states import EXPECTED, condition

FIXTURES = project_root() / "tests" / "fixtures" / "vm-status"
ARGOCD_CM = project_root() / "manifests" / "argocd" / "argocd-cm.yaml"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_there_is_a_fixture_for_every_state() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_health_of_each_captured_state(state: str) -> None:
    assert health(fixture(state)).status == EXPECTED[state][1]


def test_messages_come_from_the_conditions() -> None:
    for state, source in (("waiting", "Reconciling"), ("stalled", "Stalled"), ("failed", "Stalled"), ("ready", "Ready"), ("stopped", "Ready")):
        obj = fixture(state)
        assert health(obj).message == condition(obj, source)["message"], state  # type: ignore[index]
    assert "generation 2" in health(fixture("unobserved")).message
    assert "deleted" in health(fixture("deleting")).message


def test_a_vm_whose_vf_failed_is_degraded() -> None:
    # The agent's DevicesHealthy=False (and Ready=False) on a VM that was Ready.
    obj = copy.deepcopy(fixture("ready"))
    message = "VFs gone from the host: 0000:10:00.1"
    for c in obj["status"]["conditions"]:
        if c["type"] == "Ready":
            c.update(status="False", reason="DeviceMissing", message=message)
    obj["status"]["conditions"].append({"type": "DevicesHealthy", "status": "False", "reason": "DeviceMissing", "message": message})
    assert health(obj) == type(health(obj))("Degraded", message)


def test_a_stopped_vm_that_should_run_is_not_suspended() -> None:
    # Ready=True with phase Stopped only counts as Suspended when the spec asks for it.
    obj = copy.deepcopy(fixture("stopped"))
    obj["spec"]["running"] = True
    assert health(obj).status == "Healthy"


def test_an_object_with_no_status_yet_is_progressing() -> None:
    obj = fixture("ready")
    bare = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {**obj["metadata"], "generation": 1}, "spec": obj["spec"]}
    assert health(bare).status == "Progressing"


def test_argocd_cm_snippet_carries_the_script_unchanged() -> None:
    snippet = yaml.safe_load(ARGOCD_CM.read_text())
    assert snippet == {"data": {"resource.customizations.health.qatvm.io_QatVirtualMachine": HEALTH_SCRIPT.read_text()}}
