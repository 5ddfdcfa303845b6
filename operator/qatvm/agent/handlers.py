"""kopf wiring for the agent: raw watch events in, the NodeAgent's reconcile queue does the rest.

The watch is filtered on the server by `status.nodeName=<node>` (a CRD selectable field, written
by the controller only), so the agent sees only VMs placed on its node, whatever their labels.
Only `on.event` handlers: kopf adds no finalizer and stores no progress or last-handled
annotation on the VM (an annotation that copies the spec overflows with a large userData). The
agent manages its own finalizer and reconciles from status and `observedGeneration`.
"""

from __future__ import annotations

from typing import Any

import kopf

from qatvm.agent.service import NodeAgent
from qatvm.api.vm import GROUP, PLURAL, VERSION
from qatvm.background import run_alongside
from qatvm.kopf_settings import watch_only
from qatvm.login import register_login

registry = kopf.OperatorRegistry()
register_login(registry)


def configure(settings: kopf.OperatorSettings, node: str) -> kopf.OperatorSettings:
    settings.watching.field_selectors[GROUP, PLURAL] = f"status.nodeName={node}"
    settings.posting.loggers = False
    return watch_only(settings)


def _agent(memo: Any) -> NodeAgent:
    return memo.agent  # type: ignore[no-any-return]


@kopf.on.startup(registry=registry)
async def start(memo: Any, **_: Any) -> None:
    agent = _agent(memo)
    # Before the watch: a first inventory (the audit's passes check allocations against it),
    # then the node's holdings against the API.
    await agent.refresh_inventory()
    await agent.audit()


# After `start`: the first scan is published before the loops take over.
run_alongside(registry, "inventory", lambda memo: _agent(memo).watch_inventory())
run_alongside(registry, "audit", lambda memo: _agent(memo).watch_holdings())
run_alongside(registry, "node-lease", lambda memo: _agent(memo).lease.run())


@kopf.on.cleanup(registry=registry)
async def stop(memo: Any, **_: Any) -> None:
    await _agent(memo).close()


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def observe(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    _agent(memo).observe(dict(body), event.get("type") == "DELETED")
