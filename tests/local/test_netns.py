"""Relays between the host's loopback and a network namespace the test makes (and that dies with it)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qatvm.local.netns import Relay, connect_in, listen_in
from qatvm.processes import ManagedProcess, free_port, pid_alive, wait_until


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Path]:
    """A fresh network namespace held by a sleeping process; gone when that process is."""
    holder = ManagedProcess("netns", ["unshare", "--net", "--", "sleep", "300"], tmp_path / "netns.log")
    holder.start()
    assert holder.pid is not None
    path = Path(f"/proc/{holder.pid}/ns/net")
    assert wait_until(lambda: path.exists() and path.readlink() != Path("/proc/self/ns/net").readlink(), 5)
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)
    yield path
    pid = holder.pid
    holder.stop()
    assert not pid_alive(pid)


def _echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_a_relay_joins_a_namespace_to_the_hosts_loopback(namespace: Path) -> None:
    echo = _echo_server()
    host_port = echo.getsockname()[1]
    inside = free_port()  # free on the host, so a connection there can only be refused
    relay = Relay("test", listen_in(namespace, ("127.0.0.1", inside)), lambda _: connect_in(None, ("127.0.0.1", host_port)))
    relay.start()
    try:
        # From inside the namespace, its own loopback reaches the host's through the relay.
        with connect_in(namespace, ("127.0.0.1", inside)) as client:
            client.sendall(b"ping")
            assert client.recv(1024) == b"PING"
        # The namespace's loopback is not the host's: nothing listens there on the host.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", inside), timeout=2).close()
    finally:
        relay.close()
        echo.close()
