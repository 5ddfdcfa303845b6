"""Kubernetes Events about qatvm objects, posted through kopf's queue (batched, retried)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

# (body, type, reason, message): how plain classes post an Event without knowing kopf.
Notify = Callable[[dict[str, Any], str, str, str], None]

MAX_MESSAGE = 1024


def notify(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:MAX_MESSAGE])
