"""Kubernetes Events about qatvm objects, for `kubectl describe` and `kubectl get events`.

Posted with our own client rather than kopf's queue, because most of them come from background
loops (scheduling, device health) where kopf's per-handler posting context does not exist.
A failure to post is logged and otherwise ignored: an Event is a courtesy, never a state.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024


class EventRecorder:
    def __init__(self, client: AsyncClient, component: str) -> None:
        self.client = client
        self.component = component

    async def post(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = Event(
            metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta.get("namespace") or "default"),
            involvedObject=ObjectReference(
                apiVersion=body.get("apiVersion"),
                kind=body.get("kind"),
                name=meta["name"],
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
                resourceVersion=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:MAX_MESSAGE],
            source=EventSource(component=self.component),
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            await self.client.create(event)
        except Exception as error:  # noqa: BLE001 - see the module docstring
            log.warning("could not post event %s on %s: %s", reason, meta["name"], error)
