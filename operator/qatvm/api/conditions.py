"""Standard Kubernetes conditions, as kstatus-aware tools (kubectl wait, Flux, Argo CD) read them.

`Ready` says the VM is as its spec asks (running, or stopped on purpose); `Reconciling` is
present while the operator works towards that; `Stalled` means it cannot get there without a
change from a person. Ours are always written whole, never as a diff, so a reader sees
a consistent set.
"""

from __future__ import annotations

import datetime
from typing import Literal

from qatvm.api.vm import Condition

READY = "Ready"
SCHEDULED = "Scheduled"
RECONCILING = "Reconciling"
STALLED = "Stalled"
DEVICES_HEALTHY = "DevicesHealthy"
# Ready's reasons when the VM's node is lost: its agent stopped renewing the node lease, or the
# node was deleted for good.
NODE_UNREACHABLE = "NodeUnreachable"
NODE_GONE = "NodeGone"

Status = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime.datetime | None = None,
) -> list[Condition]:
    """A copy of `conditions` with `type_` set; its transition time moves only if status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    timestamp = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=timestamp if changed or previous is None else previous.last_transition_time,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def remove_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]


def same(a: list[Condition], b: list[Condition]) -> bool:
    """Equal but for transition times: whether writing `b` over `a` would tell anyone anything."""

    def key(conditions: list[Condition]) -> list[tuple[object, ...]]:
        return sorted((c.type, c.status, c.reason, c.message, c.observed_generation) for c in conditions)

    return key(a) == key(b)
