"""The cluster DNS of the real nodes: pods find the API server as `kubernetes.default.svc`.

kopf's in-cluster login, like many clients, names the API server by that DNS name rather than
by the KUBERNETES_SERVICE_HOST address, so a pod needs what every cluster has, a DNS server
at the kubelet's clusterDNS address. This one answers A queries for the `kubernetes` Service
only (NXDOMAIN for anything else, so nothing is ever looked up outside), from a UDP socket
inside each node's own network namespace, on the address of the node's pod bridge: answers
must come from the address the pod asked, and the kernel sends them from the bridge's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from qatvm.controlplane.certs import SERVICE_ADDRESS

CLUSTER_DOMAIN = "cluster.local"
RECORDS = {f"kubernetes.default.svc.{CLUSTER_DOMAIN}": SERVICE_ADDRESS}
TYPE_A, CLASS_IN = 1, 1


def _question(packet: bytes) -> tuple[str, int, int, int]:
    """The first question's name, type and class, and the offset where it ends."""
    labels, offset = [], 12
    while (length := packet[offset]) != 0:
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", errors="replace").lower())
        offset += 1 + length
    qtype, qclass = struct.unpack("!HH", packet[offset + 1 : offset + 5])
    return ".".join(labels), qtype, qclass, offset + 5


def answer(query: bytes) -> bytes:
    """The response to one DNS query."""
    ident = query[:2]
    name, qtype, qclass, end = _question(query)
    question = query[12:end]
    address = RECORDS.get(name)
    if address is None:
        # NXDOMAIN, recursion available, so resolvers move on to the next search domain.
        return ident + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
    if qtype != TYPE_A or qclass != CLASS_IN:
        return ident + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0) + question  # the name exists, no such record
    record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 30, 4) + socket.inet_aton(address)
    return ident + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record


class DnsServer:
    """Answers on one UDP socket until closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            with contextlib.suppress(IndexError, struct.error, OSError):
                self.sock.sendto(answer(query), client)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
