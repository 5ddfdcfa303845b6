"""Kubernetes Events about qatvm objects, for `kubectl describe` and `kubectl get events`.

Posted with our own writer (`qatvm.kube_writes`) rather than kopf's queue, because most of them
come from background loops (scheduling, device health) where kopf's per-handler posting context
does not exist.
A failure to post is logged and otherwise ignored: an Event is a courtesy, never a state.

Posting only queues the Event; a few sender tasks write them in order. The writes that carry
state (an allocation, a VM's status) then never wait behind Events, nor share the API server
with a burst of them: in a burst of placements the Events follow a little later, as client-go's
recorder also sends them in the background. A backlog past `BACKLOG` drops new Events, counted
and logged, rather than grow without bound while the API server is away.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from qatvm.kube_writes import Writer

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024
SENDERS = 2
BACKLOG = 4096


class EventRecorder:
    def __init__(self, writer: Writer, component: str, senders: int = SENDERS, backlog: int = BACKLOG) -> None:
        self.writer = writer
        self.component = component
        self.senders = senders
        self.backlog = backlog
        self.dropped = 0
        # Made on first use, inside the event loop that sends.
        self._queue: asyncio.Queue[Event] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def post(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event about `body`; it is written soon, in the order posted."""
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
            self._sending().put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("dropped event %s on %s: %d events wait to be sent", reason, meta["name"], self.backlog)

    @property
    def waiting(self) -> int:
        """Events posted and not yet written."""
        return self._queue.qsize() if self._queue is not None else 0

    async def sent(self) -> None:
        """Until every Event posted so far has been written (or failed)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = None

    def _sending(self) -> asyncio.Queue[Event]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.backlog)
            self._tasks = [
                asyncio.create_task(self._send(self._queue), name=f"events {self.component}") for _ in range(self.senders)
            ]
        return self._queue

    async def _send(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            assert event.metadata is not None and event.metadata.namespace is not None and event.involvedObject is not None
            try:
                await self.writer.create_event(event.metadata.namespace, event.to_dict())
            except Exception as error:  # noqa: BLE001 - see the module docstring
                log.warning("could not post event %s on %s: %s", event.reason, event.involvedObject.name, error)
            finally:
                queue.task_done()
