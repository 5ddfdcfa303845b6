"""A liveness endpoint for the long-running commands: `GET /healthz` answers while the event
loop turns. It says nothing about leadership or the API server, so a standby controller and an
agent waiting out an outage stay alive; only a wedged process is restarted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@asynccontextmanager
async def serving(port: int, host: str = "0.0.0.0") -> AsyncIterator[int | None]:  # noqa: S104 - probed by the kubelet
    """Serve /healthz on `port` for the duration of the block (port 0: not at all)."""
    if not port:
        yield None
        return
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()
