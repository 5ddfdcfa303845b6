"""A long-running loop beside kopf's handlers, started with the operator and stopped with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import kopf


def run_alongside(
    registry: kopf.OperatorRegistry, name: str, loop: Callable[[Any], Coroutine[Any, Any, None]]
) -> None:
    """Start `loop(memo)` once the startup handlers registered before this have run; cancel it
    at cleanup. Tasks made in a startup handler outlive it, so the task is kept on the memo."""

    @kopf.on.startup(registry=registry, id=f"start-{name}")
    async def start(memo: Any, **_: Any) -> None:
        setattr(memo, f"{name}_task", asyncio.create_task(loop(memo), name=name))

    @kopf.on.cleanup(registry=registry, id=f"stop-{name}")
    async def stop(memo: Any, **_: Any) -> None:
        task: asyncio.Task[None] | None = getattr(memo, f"{name}_task", None)
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
