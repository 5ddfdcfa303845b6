"""The metrics each component serves, scraped over HTTP and parsed as Prometheus parses them."""

from __future__ import annotations

import asyncio
import datetime
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qatvm import metrics
from qatvm.api.base import ObjectRef
from qatvm.api.qatnode import QatVf
from qatvm.processes import free_port


def vf(fn: int, *, healthy: bool = True, assignable: bool = True, allocated: bool = False, generation: str = "4xxx") -> QatVf:
    return QatVf(
        pci_address=f"0000:3d:00.{fn}", pf_address="0000:3d:00.0", device_id="4941", generation=generation,
        numa_node=0, iommu_group=10 + fn, healthy=healthy, assignable=assignable,
        reason=None if healthy and assignable else "heartbeat failed",
        allocated_to=ObjectRef(namespace="t", name="vm", uid="u-1") if allocated else None,
    )


async def scrape(component: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = free_port()
    async with metrics.serving(component, port, host="127.0.0.1"):
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


async def test_node_vfs_counts_every_state_and_forgets_vanished_vfs() -> None:
    metrics.inventory_published("n-vfs", [
        vf(1), vf(2), vf(3, allocated=True), vf(4, healthy=False), vf(5, assignable=False), vf(6, generation="c62x"),
    ])
    scraped = await scrape("agent")

    def count(generation: str, state: str) -> float:
        return scraped[("qatvm_node_vfs", (("generation", generation), ("node", "n-vfs"), ("state", state)))]

    assert [count("4xxx", s) for s in metrics.VF_STATES] == [2, 1, 1, 1]
    assert [count("c62x", s) for s in metrics.VF_STATES] == [1, 0, 0, 0]

    metrics.inventory_published("n-vfs", [vf(1)])
    scraped = await scrape("agent")
    assert count("4xxx", "free") == 1 and count("4xxx", "unhealthy") == 0
    # Other tests' agents publish their own nodes into the same process-wide registry.
    assert not any(
        key[0] == "qatvm_node_vfs" and ("node", "n-vfs") in key[1] and ("generation", "c62x") in key[1] for key in scraped
    )


async def test_vms_by_phase_follow_what_the_controller_watches() -> None:
    before = await scrape("controller")
    metrics.vm_observed({"metadata": {"uid": "p-1"}})
    metrics.vm_observed({"metadata": {"uid": "p-2"}, "status": {"phase": "Running"}})
    metrics.vm_observed({"metadata": {"uid": "p-3"}, "status": {"phase": "Running"}})
    metrics.vm_observed({"metadata": {"uid": "p-3"}, "status": {"phase": "Stopped"}})
    metrics.vm_observed({"metadata": {"uid": "p-2"}}, deleted=True)
    after = await scrape("controller")

    def delta(phase: str) -> float:
        key = ("qatvm_vms", (("phase", phase),))
        return after[key] - before[key]

    assert (delta("Pending"), delta("Running"), delta("Stopped"), delta("Failed")) == (1, 0, 1, 0)


async def test_each_component_serves_only_its_own_metrics() -> None:
    agent = {name for name, _ in await scrape("agent")}
    controller = {name for name, _ in await scrape("controller")}
    assert "qatvm_leader" in controller and "qatvm_leader" not in agent
    assert not any(name.startswith("qatvm_vms") for name in agent)
    assert not any(name.startswith("qatvm_node_vfs") for name in controller)
    assert "process_resident_memory_bytes" in agent and "process_resident_memory_bytes" in controller


async def test_schedule_and_step_durations_and_errors() -> None:
    def value(scraped: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return scraped.get((name, tuple(sorted(labels.items()))), 0.0)  # type: ignore[no-any-return]

    controller, agent = await scrape("controller"), await scrape("agent")
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    metrics.placed("2026-01-01T00:00:00Z", now=created + datetime.timedelta(seconds=7))
    metrics.leader(lambda: True)
    metrics.reconcile_error("controller", RuntimeError("boom"))
    with pytest.raises(OSError), metrics.step("bind"):
        raise OSError("a failed step is timed too")
    with pytest.raises(ValueError, match="one of bind, disk"):
        metrics.step("reboot").__enter__()
    controller2, agent2 = await scrape("controller"), await scrape("agent")

    assert value(controller2, "qatvm_schedule_duration_seconds_count") - value(controller, "qatvm_schedule_duration_seconds_count") == 1
    # Other tests' placements add to the same process-wide sum: compare with a float's tolerance.
    assert value(controller2, "qatvm_schedule_duration_seconds_sum") - value(controller, "qatvm_schedule_duration_seconds_sum") == pytest.approx(7)
    # 7 s falls in the 10 s bucket and not the 5 s one.
    assert value(controller2, "qatvm_schedule_duration_seconds_bucket", le="10.0") - value(controller, "qatvm_schedule_duration_seconds_bucket", le="10.0") == 1
    assert value(controller2, "qatvm_schedule_duration_seconds_bucket", le="5.0") == value(controller, "qatvm_schedule_duration_seconds_bucket", le="5.0")
    assert value(controller2, "qatvm_leader") == 1
    errors = ("qatvm_reconcile_errors_total", {"component": "controller", "reason": "RuntimeError"})
    assert value(controller2, errors[0], **errors[1]) - value(controller, errors[0], **errors[1]) == 1
    assert value(agent2, errors[0], **errors[1]) - value(agent, errors[0], **errors[1]) == 1  # one counter, shared
    assert value(agent2, "qatvm_agent_step_duration_seconds_count", step="bind") - value(agent, "qatvm_agent_step_duration_seconds_count", step="bind") == 1


async def test_port_zero_serves_nothing() -> None:
    async with metrics.serving("agent", 0) as bound:
        assert bound is None
