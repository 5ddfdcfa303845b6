"""The writes made for every VM, over one aiohttp session: VM status and metadata patches,
QatNode status patches and Events.

In a burst these requests are most of what the controller and the agents do. Through lightkube
(httpx, anyio) one request costs about 1.3 ms of CPU on a 2-core machine; through aiohttp, which
kopf already uses for its watches, about 0.35 ms, and the API server answers more of them per
second. Everything else (lists, gets, leases) stays on lightkube, where its typed models help more
than a millisecond costs.

The bodies are the same dictionaries lightkube would send, with the same field manager, and a
refusal raises lightkube's `ApiError` with the API server's Status, so callers handle both clients
alike. Credentials come from the same kubeconfig (or in-cluster service account) through
lightkube's own helpers: a token file is read again, and an exec plugin run again, on a 401.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import httpx2
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from qatvm.api.vm import GROUP, PLURAL, VERSION

TIMEOUT_SECONDS = 10.0  # lightkube's default for one request
MERGE_PATCH = "application/merge-patch+json"
# A new TLS connection costs about 3 ms of the client's CPU and 2 ms of the API server's, more
# than the write it carries: connections outlive a burst, for less than the API server keeps an
# idle one (90 s), so the next burst finds them open.
KEEPALIVE_SECONDS = 60.0


class Writer:
    def __init__(
        self, config: KubeConfig | SingleConfig, field_manager: str, timeout: float = TIMEOUT_SECONDS, connections: int = 100
    ) -> None:
        """`connections` bounds the writes under way at once (HTTP/1.1: one per connection); more
        wait for a connection to come free."""
        single = config.get() if isinstance(config, KubeConfig) else config
        assert single.user is not None, "a kubeconfig context without a user"
        self.server = single.cluster.server.rstrip("/")
        self.field_manager = field_manager
        # Bounds on connecting and on each wait for the answer, not on the whole request: a write
        # may first wait for one of the `connections`, behind the writes of a burst.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._ssl = client_adapter.verify_cluster(single.cluster, single.user, single.abs_file) if self.server.startswith("https:") else None
        self._auth = client_adapter.user_auth(single.user)
        self._authorization: str | None = None
        self.connections = connections
        # Made on first use, inside the event loop that writes.
        self._session: aiohttp.ClientSession | None = None

    # -- what is written -------------------------------------------------------------------------

    async def patch_vm(self, namespace: str, name: str, patch: dict[str, Any], status: bool = False) -> dict[str, Any]:
        """Merge-patch a QatVirtualMachine (its status subresource when `status`); the object as stored."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}" + ("/status" if status else "")
        return await self._send("PATCH", path, patch, MERGE_PATCH)

    async def patch_qatnode_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._send("PATCH", f"/apis/{GROUP}/{VERSION}/qatnodes/{name}/status", patch, MERGE_PATCH)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", f"/api/v1/namespaces/{namespace}/events", event, "application/json")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the wire --------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
        data = json.dumps(body).encode()
        status, payload = await self._attempt(method, path, data, content_type, refused=False)
        if status == 401:
            # A rotated token or an expired exec credential: fetched again, and tried once more.
            status, payload = await self._attempt(method, path, data, content_type, refused=True)
        answer: dict[str, Any] = json.loads(payload) if payload else {}
        if status >= 400:
            raise ApiError(status=_status(status, answer, payload))
        return answer

    async def _attempt(self, method: str, path: str, data: bytes, content_type: str, refused: bool) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        authorization = await self._authorize(401 if refused else None)
        if authorization:
            headers["Authorization"] = authorization
        async with self._open().request(
            method, self.server + path, params={"fieldManager": self.field_manager}, data=data, headers=headers
        ) as response:
            return response.status, await response.read()

    async def _authorize(self, refused: int | None) -> str | None:
        """The Authorization header, from lightkube's auth flow for this user (httpx's Auth protocol)."""
        if self._auth is None:
            return None
        if self._authorization is not None and refused is None:
            return self._authorization
        request = httpx2.Request("GET", self.server)
        flow = self._auth.async_auth_flow(request)
        request = await flow.__anext__()
        if refused is not None:
            try:
                request = await flow.asend(httpx2.Response(refused, request=request))
            except StopAsyncIteration:
                pass  # a flow that cannot refresh: the same header again
        self._authorization = request.headers.get("Authorization")
        return self._authorization

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else False, limit=self.connections, keepalive_timeout=KEEPALIVE_SECONDS
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session


def _status(code: int, answer: dict[str, Any], payload: bytes) -> Status:
    if answer.get("kind") == "Status":
        return Status.from_dict(answer)
    return Status(code=code, message=payload.decode(errors="replace")[:500] or f"HTTP {code}", status="Failure")
