"""Sockets in another process's network namespace, and TCP relays between namespaces.

A real node of the local cluster lives in its own network namespace, which has no route to the
host's loopback where the API server listens, and the host has no route into it. Rather than
give either side an address on the other's network, the supervisor opens sockets inside a
node's namespace (a thread enters it with setns(2), makes the socket, and returns; a socket
stays in the namespace it was made in) and relays bytes between the two sides itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def entered(namespace: Path) -> Iterator[None]:
    """Run the block with this thread in `namespace` (e.g. /proc/PID/ns/net), then come back."""
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(namespace, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def listen_in(namespace: Path | None, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket in `namespace` (None: this thread's own)."""
    with entered(namespace) if namespace else contextlib.nullcontext():
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(address)
    server.listen(64)
    return server


IP_FREEBIND = 15


def udp_in(namespace: Path, address: tuple[str, int]) -> socket.socket:
    """A UDP socket in `namespace`, bound to `address` even before any interface there has it."""
    with entered(namespace):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    server.bind(address)
    return server


def connect_in(namespace: Path | None, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    with entered(namespace) if namespace else contextlib.nullcontext():
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(address)
    conn.settimeout(None)
    return conn


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close, so the other direction can still finish (a TLS close_notify, a response).
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def splice(a: socket.socket, b: socket.socket) -> None:
    """Relay both ways until both sides are done, then close both."""
    other = threading.Thread(target=_pump, args=(b, a), daemon=True)
    other.start()
    _pump(a, b)
    other.join()
    a.close()
    b.close()


class Relay:
    """Accepts on `server` and connects each client to what `dial` returns, until closed."""

    def __init__(self, name: str, server: socket.socket, dial: Callable[[socket.socket], socket.socket | None]) -> None:
        self.name = name
        self.server = server
        self.dial = dial
        self._thread = threading.Thread(target=self._serve, name=f"relay-{name}", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = self.dial(client)
        except OSError:
            upstream = None
        if upstream is None:
            client.close()
            return
        splice(client, upstream)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
