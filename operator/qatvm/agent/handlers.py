"""kopf wiring for the agent: VM events in, calls on the NodeAgent out, status patches back.

The agent sees only the VMs placed on its node (a server-side field selector on status.nodeName, set in
`configure`), uses its own finalizer and annotation prefix so it never collides with the
controller, and writes each outcome to status in one patch.
"""

from __future__ import annotations

from typing import Any

import kopf

from qatvm import metrics
from qatvm.agent import status as report
from qatvm.agent.reconciler import AllocationMissing
from qatvm.agent.service import NodeAgent
from qatvm.api.vm import GROUP, PLURAL, VERSION, QatVirtualMachine
from qatvm.background import run_alongside
from qatvm.login import register_login

registry = kopf.OperatorRegistry()
register_login(registry)

FINALIZER = "agent.qatvm.io/finalizer"
PREFIX = "agent.qatvm.io"
RETRY_SECONDS = 30


def configure(settings: kopf.OperatorSettings, node: str) -> kopf.OperatorSettings:
    settings.watching.field_selectors[GROUP, PLURAL] = f"status.nodeName={node}"
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled")
    settings.posting.loggers = False
    # The resources are known; scanning CRDs would need a right the agent has no other use for.
    settings.scanning.disabled = True
    return settings


def _agent(memo: Any) -> NodeAgent:
    return memo.agent  # type: ignore[no-any-return]


@kopf.on.startup(registry=registry)
async def start(memo: Any, **_: Any) -> None:
    agent = _agent(memo)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": agent.config.node}}
    for line in await agent.recover():
        await agent.events.post(node, "Normal", "Recovered", line)
    await agent.refresh_inventory()


# After `start`: the first scan is published before the loop takes over.
run_alongside(registry, "inventory", lambda memo: _agent(memo).watch_inventory())


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
def observe(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    _agent(memo).observe(dict(body), event.get("type") == "DELETED")


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    vm = QatVirtualMachine.model_validate(dict(body))
    agent = _agent(memo)
    try:
        outcome = await agent.apply(vm)
    except AllocationMissing as error:
        raise kopf.TemporaryError(str(error), delay=5) from error
    except Exception as error:  # noqa: BLE001 - reported on the object, then retried
        metrics.reconcile_error("agent", error)
        patch.status.update(report.after_failure(vm, error))
        await agent.events.post(dict(body), "Warning", "Failed", str(error))
        raise kopf.TemporaryError(str(error), delay=RETRY_SECONDS) from error
    patch.status.update(report.after_apply(vm, outcome))
    await agent.events.post(dict(body), "Normal", outcome.phase.value, outcome.message)
    await agent.refresh_inventory()


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def remove(body: kopf.Body, memo: Any, **_: Any) -> None:
    vm = QatVirtualMachine.model_validate(dict(body))
    agent = _agent(memo)
    await agent.remove(vm)
    await agent.events.post(dict(body), "Normal", "Removed", "domain removed and VFs given back")
    await agent.refresh_inventory()
