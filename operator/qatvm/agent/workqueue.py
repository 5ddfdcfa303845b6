"""A reconcile queue keyed by VM UID: one worker per key at a time, many keys at once.

Events only mark a key dirty; the worker reads the newest state when it runs, so a burst of
events for one VM costs one pass (plus one more if an event arrived during the pass). A pass may
ask to run again after a delay (a retry with backoff); a new event for the key runs it sooner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# A pass returns None when done, or the seconds after which it wants to run again.
Worker = Callable[[str], Awaitable[float | None]]


class KeyedQueue:
    def __init__(self, worker: Worker, concurrency: int = 16) -> None:
        self.worker = worker
        self.slots = asyncio.Semaphore(concurrency)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.dirty: set[str] = set()
        self.timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, key: str, delay: float = 0.0) -> None:
        """Run `key` as soon as possible (delay 0) or after `delay` seconds, whichever is first."""
        if delay > 0:
            if key not in self.timers and key not in self.dirty:
                self.timers[key] = asyncio.get_running_loop().call_later(delay, self._due, key)
            return
        self._due(key)

    def _due(self, key: str) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.dirty.add(key)
        if key not in self.running:
            self.running[key] = asyncio.create_task(self._run(key), name=f"reconcile-{key}")

    async def _run(self, key: str) -> None:
        retry: float | None = None
        try:
            while key in self.dirty:
                self.dirty.discard(key)
                async with self.slots:
                    try:
                        retry = await self.worker(key)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - a worker bug must not stop the key for good
                        log.exception("reconciling %s failed; retrying", key)
                        retry = 5.0
        finally:
            del self.running[key]
        if retry is not None:
            self.add(key, retry)

    async def idle(self) -> None:
        """Wait until no key is running (for tests and orderly shutdown)."""
        while self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def stop(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
