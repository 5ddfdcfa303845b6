"""The real nodes' cluster DNS: the `kubernetes` Service's name, and nothing else."""

from __future__ import annotations

import socket
import struct

from qatvm.local.cluster_dns import DnsServer, answer


def _query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _rcode_and_answers(response: bytes) -> tuple[int, int]:
    ident, flags, _, answers = struct.unpack("!HHHH", response[:8])
    assert ident == 0x1234 and flags & 0x8000
    return flags & 0xF, answers


def test_the_api_servers_name_resolves_to_its_service_address() -> None:
    response = answer(_query("kubernetes.default.svc.cluster.local"))
    assert _rcode_and_answers(response) == (0, 1)
    assert socket.inet_ntoa(response[-4:]) == "10.0.0.1"
    # Case does not matter in DNS; a search-domain guess is not found; AAAA has no record.
    assert _rcode_and_answers(answer(_query("Kubernetes.Default.SVC.cluster.local"))) == (0, 1)
    assert _rcode_and_answers(answer(_query("kubernetes.default.svc.qatvm-system.svc.cluster.local"))) == (3, 0)
    assert _rcode_and_answers(answer(_query("kubernetes.default.svc.cluster.local", qtype=28))) == (0, 0)


def test_the_server_answers_over_udp() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = DnsServer(sock).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(_query("example.org"), sock.getsockname())
            assert _rcode_and_answers(client.recv(512)) == (3, 0)
    finally:
        server.close()
