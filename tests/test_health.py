"""The liveness endpoint the Deployment and DaemonSet probe."""

from __future__ import annotations

import asyncio
import urllib.request

from qatvm.health import serving
from qatvm.processes import free_port


async def test_healthz_answers_while_serving_and_stops_after() -> None:
    port = free_port()
    async with serving(port, host="127.0.0.1") as bound:
        assert bound == port
        body = await _get(f"http://127.0.0.1:{port}/healthz")
        assert body == "ok\n"
    try:
        await _get(f"http://127.0.0.1:{port}/healthz")
    except OSError:
        return
    raise AssertionError("still serving after the block")


async def test_port_zero_serves_nothing() -> None:
    async with serving(0) as bound:
        assert bound is None


async def _get(url: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)
