"""EventRecorder against a real API server: Events are written in the background, in order,
and neither a failing write nor a full backlog stops the writes that carry state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import lightkube
import pytest
from lightkube.resources.core_v1 import Event

from qatvm.events import EventRecorder
from qatvm.kube_writes import Writer

pytestmark = pytest.mark.controlplane

MakeRecorder = Callable[..., EventRecorder]


@pytest.fixture
async def recorder(writer: Writer) -> AsyncIterator[MakeRecorder]:
    made: list[EventRecorder] = []

    def make(**options: int) -> EventRecorder:
        made.append(EventRecorder(writer, "test-component", **options))
        return made[-1]

    yield make
    for one in made:
        await one.close()


def _about(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}}


async def _events(client: lightkube.AsyncClient, namespace: str) -> list[Event]:
    return [e async for e in client.list(Event, namespace=namespace)]


async def test_posting_returns_at_once_and_the_events_follow_in_order(
    kube: lightkube.AsyncClient, recorder: MakeRecorder, namespace: str
) -> None:
    events = recorder(senders=1)
    for i in range(20):
        await events.post(_about(f"thing-{i}", namespace), "Normal", "Numbered", f"event {i}")
    # Posting only queued them: the sender has not had the loop yet.
    assert events.waiting == 20
    await asyncio.wait_for(events.sent(), timeout=30)
    # One sender writes them one after another: their resourceVersions follow the posting order.
    written = sorted(await _events(kube, namespace), key=lambda e: int(e.metadata.resourceVersion))
    assert [e.message for e in written] == [f"event {i}" for i in range(20)]
    assert {e.source.component for e in written} == {"test-component"}
    assert written[3].involvedObject.name == "thing-3" and written[3].involvedObject.uid == "uid-thing-3"


async def test_a_failed_write_is_logged_and_the_next_event_still_goes(
    kube: lightkube.AsyncClient, recorder: MakeRecorder, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = recorder(senders=1)
    with caplog.at_level(logging.WARNING, logger="qatvm.events"):
        await events.post(_about("lost", "no-such-namespace"), "Normal", "Lost", "to a missing namespace")
        await events.post(_about("kept", namespace), "Normal", "Kept", "after the failure")
        await asyncio.wait_for(events.sent(), timeout=30)
    assert "could not post event Lost on lost" in caplog.text
    assert [e.reason for e in await _events(kube, namespace)] == ["Kept"]


async def test_a_full_backlog_drops_new_events_and_says_so(
    kube: lightkube.AsyncClient, recorder: MakeRecorder, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = recorder(senders=1, backlog=3)
    with caplog.at_level(logging.WARNING, logger="qatvm.events"):
        # Posted without yielding to the loop: the sender takes none before the backlog fills.
        for i in range(5):
            await events.post(_about(f"thing-{i}", namespace), "Normal", "Numbered", f"event {i}")
        await asyncio.wait_for(events.sent(), timeout=30)
    assert events.dropped == 2
    assert "dropped event Numbered on thing-3: 3 events wait to be sent" in caplog.text
    assert sorted(e.message for e in await _events(kube, namespace)) == ["event 0", "event 1", "event 2"]
