"""EventRecorder against a real API server: Events are written in the background, in order,
and neither a failing write nor a full backlog stops the writes that carry state."""

from __future__ import annotations

import asyncio
import logging

import lightkube
import pytest
from lightkube import KubeConfig
from lightkube.resources.core_v1 import Event

from qatvm.controlplane.server import ControlPlane
from qatvm.events import EventRecorder

pytestmark = pytest.mark.controlplane


def _about(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}}


async def _events(client: lightkube.AsyncClient, namespace: str) -> list[Event]:
    return [e async for e in client.list(Event, namespace=namespace)]


async def test_posting_returns_at_once_and_the_events_follow_in_order(control_plane: ControlPlane, namespace: str) -> None:
    client = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    recorder = EventRecorder(client, "test-component", senders=1)
    try:
        for i in range(20):
            await recorder.post(_about(f"thing-{i}", namespace), "Normal", "Numbered", f"event {i}")
        # Posting only queued them: the sender has not had the loop yet.
        assert recorder.waiting == 20
        await asyncio.wait_for(recorder.sent(), timeout=30)
        # One sender writes them one after another: their resourceVersions follow the posting order.
        events = sorted(await _events(client, namespace), key=lambda e: int(e.metadata.resourceVersion))
        assert [e.message for e in events] == [f"event {i}" for i in range(20)]
        assert {e.source.component for e in events} == {"test-component"}
        assert events[3].involvedObject.name == "thing-3" and events[3].involvedObject.uid == "uid-thing-3"
    finally:
        await recorder.close()
        await client.close()


async def test_a_failed_write_is_logged_and_the_next_event_still_goes(
    control_plane: ControlPlane, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    recorder = EventRecorder(client, "test-component", senders=1)
    try:
        with caplog.at_level(logging.WARNING, logger="qatvm.events"):
            await recorder.post(_about("lost", "no-such-namespace"), "Normal", "Lost", "to a missing namespace")
            await recorder.post(_about("kept", namespace), "Normal", "Kept", "after the failure")
            await asyncio.wait_for(recorder.sent(), timeout=30)
        assert "could not post event Lost on lost" in caplog.text
        assert [e.reason for e in await _events(client, namespace)] == ["Kept"]
    finally:
        await recorder.close()
        await client.close()


async def test_a_full_backlog_drops_new_events_and_says_so(
    control_plane: ControlPlane, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = lightkube.AsyncClient(config=KubeConfig.from_file(str(control_plane.kubeconfig)))
    recorder = EventRecorder(client, "test-component", senders=1, backlog=3)
    try:
        with caplog.at_level(logging.WARNING, logger="qatvm.events"):
            # Posted without yielding to the loop: the sender takes none before the backlog fills.
            for i in range(5):
                await recorder.post(_about(f"thing-{i}", namespace), "Normal", "Numbered", f"event {i}")
            await asyncio.wait_for(recorder.sent(), timeout=30)
        assert recorder.dropped == 2
        assert "dropped event Numbered on thing-3: 3 events wait to be sent" in caplog.text
        assert sorted(e.message for e in await _events(client, namespace)) == ["event 0", "event 1", "event 2"]
    finally:
        await recorder.close()
        await client.close()
