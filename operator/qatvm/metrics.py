"""Prometheus metrics of the controller and the agents, served on `--metrics-port`.

Each component calls the one-line hooks below from its own code; the metric objects live
here so that their names, labels and buckets are defined once, and each component serves only
its own (an agent exports no `qatvm_vms`, so a sum over every target counts each VM once). Gauges that describe a whole
picture (the VFs of a node, the VMs per phase) are computed at scrape time from the last
picture a component reported, so a series never lingers after its VF or VM is gone.
"""

from __future__ import annotations

import argparse
import datetime
import threading
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qatvm.api.qatnode import QatVf
from qatvm.api.vm import Phase
from qatvm.health import serving_routes

# The `_created` series only repeat the process start time for every histogram and counter.
disable_created_metrics()

VF_STATES = ("free", "allocated", "unhealthy", "unassignable")
AGENT_STEPS = ("bind", "disk", "define", "start", "stop", "remove")

# Placement waits from a fraction of a second (room now) to hours (waiting for a deletion).
SCHEDULE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))

SCHEDULE_DURATION = Histogram(
    "qatvm_schedule_duration_seconds",
    "Time from a QatVirtualMachine's creation to its placement on a node",
    buckets=SCHEDULE_BUCKETS,
    registry=None,
)
STEP_DURATION = Histogram(
    "qatvm_agent_step_duration_seconds",
    "Time an agent spends in one step of running a VM",
    ["step"],
    buckets=STEP_BUCKETS,
    registry=None,
)
RECONCILE_ERRORS = Counter(
    "qatvm_reconcile_errors",
    "Reconciliations that failed, by component and reason (the error's kind)",
    ["component", "reason"],
    registry=None,
)
LEADER = Gauge("qatvm_leader", "1 while this controller holds the leader lease, else 0", registry=None)


def vf_state(vf: QatVf) -> str:
    if not vf.healthy:
        return "unhealthy"
    if not vf.assignable:
        return "unassignable"
    return "allocated" if vf.allocated_to is not None else "free"


class _NodeVfs(Collector):
    """`qatvm_node_vfs{node, generation, state}` from the inventory each agent last published."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[QatVf, ...]] = {}

    def publish(self, node: str, vfs: Sequence[QatVf]) -> None:
        with self._lock:
            self._nodes[node] = tuple(vfs)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "qatvm_node_vfs", "VFs of a node by generation and state", labels=["node", "generation", "state"]
        )
        with self._lock:
            nodes = dict(self._nodes)
        for node, vfs in sorted(nodes.items()):
            counts = Tally((vf.generation, vf_state(vf)) for vf in vfs)
            # Every state of every generation present, zeros included, so sums never miss a series.
            for generation in sorted({vf.generation for vf in vfs}):
                for state in VF_STATES:
                    family.add_metric([node, generation, state], counts[(generation, state)])
        yield family


class _VmPhases(Collector):
    """`qatvm_vms{phase}` from the VMs the controller watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def observe(self, uid: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = phase

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("qatvm_vms", "QatVirtualMachines by status.phase", labels=["phase"])
        with self._lock:
            counts = Tally(self._phases.values())
        for phase in Phase:
            family.add_metric([phase.value], counts[phase.value])
        yield family


NODE_VFS = _NodeVfs()
VM_PHASES = _VmPhases()
COMPONENTS: dict[str, tuple[Collector, ...]] = {
    "controller": (VM_PHASES, SCHEDULE_DURATION, LEADER, RECONCILE_ERRORS),
    "agent": (NODE_VFS, STEP_DURATION, RECONCILE_ERRORS),
}


def registry(component: str) -> CollectorRegistry:
    """What one component exports: its own metrics and its process's CPU, memory and files."""
    collectors = CollectorRegistry()
    for collector in COMPONENTS[component]:
        collectors.register(collector)
    ProcessCollector(registry=collectors)
    return collectors


# The hooks, one call each from the component that knows the fact.

def inventory_published(node: str, vfs: Iterable[QatVf]) -> None:
    NODE_VFS.publish(node, list(vfs))


def vm_observed(body: dict[str, Any], deleted: bool = False) -> None:
    """Count a VM by phase; a VM with no status yet is Pending, as the controller sees it."""
    uid = body["metadata"]["uid"]
    if deleted:
        VM_PHASES.forget(uid)
    else:
        VM_PHASES.observe(uid, (body.get("status") or {}).get("phase") or Phase.PENDING.value)


def placed(created: str | datetime.datetime, now: datetime.datetime | None = None) -> None:
    """Record how long a VM waited, from its metadata.creationTimestamp to now."""
    if isinstance(created, str):
        created = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    now = now or datetime.datetime.now(datetime.UTC)
    SCHEDULE_DURATION.observe(max(0.0, (now - created).total_seconds()))


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time one agent step, whether it succeeds or raises."""
    if name not in AGENT_STEPS:
        raise ValueError(f"unknown agent step {name!r}; one of {', '.join(AGENT_STEPS)}")
    started = time.monotonic()
    try:
        yield
    finally:
        STEP_DURATION.labels(step=name).observe(time.monotonic() - started)


def reconcile_error(component: str, reason: str | BaseException) -> None:
    """Count a failed reconciliation; an exception counts under its class name (few, stable values)."""
    label = type(reason).__name__ if isinstance(reason, BaseException) else reason
    RECONCILE_ERRORS.labels(component=component, reason=label).inc()


def leader(is_leading: Callable[[], bool]) -> None:
    """Read leadership at each scrape, so the gauge drops the moment the lease is lost."""
    LEADER.set_function(lambda: 1.0 if is_leading() else 0.0)


@asynccontextmanager
async def serving(component: str, port: int, host: str = "0.0.0.0") -> AsyncIterator[int | None]:  # noqa: S104 - scraped from outside the pod
    """Serve `component`'s /metrics on `port` for the duration of the block (port 0: not at all)."""
    collectors = registry(component)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(collectors), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async with serving_routes(port, host, {"/metrics": metrics}) as served:
        yield served


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on /metrics at this port (0: off)")
    parser.add_argument("--metrics-address", default="0.0.0.0", help="the address /metrics listens on (default: %(default)s)")  # noqa: S104
