"""Small HTTP endpoints of the long-running commands. `GET /healthz` answers while the event
loop turns. It says nothing about leadership or the API server, so a standby controller and an
agent waiting out an outage stay alive; only a wedged process is restarted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@asynccontextmanager
async def serving_routes(port: int, host: str, routes: Mapping[str, Handler]) -> AsyncIterator[int | None]:
    """Serve `GET path` for each route on `port` for the duration of the block (port 0: not at all)."""
    if not port:
        yield None
        return
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(port: int, host: str = "0.0.0.0") -> AsyncIterator[int | None]:  # noqa: S104 - probed by the kubelet
    """Serve /healthz on `port` for the duration of the block (port 0: not at all)."""
    async with serving_routes(port, host, {"/healthz": _healthz}) as served:
        yield served
