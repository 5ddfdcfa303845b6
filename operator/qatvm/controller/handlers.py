"""kopf wiring for the controller: raw watch events in, calls on the Scheduler out.

Only `on.event` handlers: they add no finalizer and store no progress, so the controller's
only writes are the allocations and conditions the Scheduler makes on purpose. They are async,
though none waits: kopf runs a sync handler in a thread, and the hop for every event of a burst
cost more than the handler.
"""

from __future__ import annotations

from typing import Any

import kopf

from qatvm import metrics
from qatvm.api.vm import GROUP, PLURAL, VERSION
from qatvm.background import run_alongside
from qatvm.controller.scheduler import Scheduler
from qatvm.kopf_settings import watch_only
from qatvm.login import register_login

registry = kopf.OperatorRegistry()
register_login(registry)


def settings() -> kopf.OperatorSettings:
    configured = watch_only(kopf.OperatorSettings())
    # kopf keeps a worker task per object until it has been idle this long (default 5 s): in a
    # burst of placements that is thousands of idle tasks and queues held at once.
    configured.batching.idle_timeout = 1.0
    return configured


def _scheduler(memo: Any) -> Scheduler:
    return memo.scheduler  # type: ignore[no-any-return]


def _deleted(event: Any) -> bool:
    return bool(event.get("type") == "DELETED")


run_alongside(registry, "scheduler", lambda memo: _scheduler(memo).run())
run_alongside(registry, "lost-nodes", lambda memo: memo.lost_nodes.run())


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def vm_event(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    metrics.vm_observed(body, _deleted(event))
    _scheduler(memo).on_vm(_plain(body), _deleted(event))


@kopf.on.event("", "v1", "nodes", registry=registry)
async def node_event(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    _scheduler(memo).on_node(_plain(body), _deleted(event))


@kopf.on.event("", "v1", "namespaces", registry=registry)
async def namespace_event(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    _scheduler(memo).on_namespace(_plain(body), _deleted(event))


@kopf.on.event(GROUP, VERSION, "qatnodes", registry=registry)
async def inventory_event(event: Any, body: kopf.Body, memo: Any, **_: Any) -> None:
    _scheduler(memo).on_inventory(_plain(body), _deleted(event))


def _plain(body: kopf.Body) -> dict[str, Any]:
    # A view on the event's freshly parsed object, which kopf never changes: a process without
    # daemons or timers has no "live" body, so there is nothing to copy it away from.
    return dict(body)

