"""A simulated node's hypervisor that keeps its domains across agent restarts.

libvirt's test driver is real libvirt (same XML parser, same domain list, same errors) but keeps
state only inside the process that opened it; a `test:///FILE` connection starts from FILE, a
test-driver node description. This class opens FILE and, after every call that may change a
domain, writes the domains back to it with their run state (`<test:runstate>`, read by the test
driver's own parser), so the next agent process finds what the previous one left, as it would on a
real host after a crash. `open_hypervisor` hands it out for the URI scheme
`qatvm-test:///ABSOLUTE/PATH.xml`, which only the simulation knows.

One process at a time per file: two connections on one file would each write their own view.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit
from xml.dom import minidom

import libvirt

from qatvm.hypervisor import ConnectionFailed, Hypervisor
from qatvm.hypervisor import open_hypervisor as open_libvirt
from qatvm.hypervisor.connection import open_connection
from qatvm.hypervisor.errors import translate

PERSISTENT_TEST_SCHEME = "qatvm-test"
TEST_DRIVER_XMLNS = "http://libvirt.org/schemas/domain/test/1.0"


def open_hypervisor(uri: str) -> Hypervisor:
    """A simulated node's hypervisor: `qatvm-test:///PATH.xml`, whose domains outlive the process,
    or any libvirt URI, opened as production opens it."""
    parts = urlsplit(uri)
    if parts.scheme != PERSISTENT_TEST_SCHEME:
        return open_libvirt(uri)
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise ConnectionFailed(f"{uri!r}: write {PERSISTENT_TEST_SCHEME}:///ABSOLUTE/PATH.xml")
    return PersistentTestHypervisor(Path(parts.path))


class PersistentTestHypervisor(Hypervisor):
    def __init__(self, state_file: Path) -> None:
        if not state_file.exists():
            state_file.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically([], _empty_node(), state_file)
        super().__init__(open_connection(f"test://{state_file}"))
        self.state_file = state_file
        # The agent works on several VMs at once: their writes of this one file take turns, and
        # a write that starts after a change covers it, so a burst of changes costs a few writes.
        self._writing = threading.Lock()
        self._counting = threading.Lock()
        self._changes = 0
        self._written = 0
        self._changed: set[str] = set()
        # Everything but the domains (host CPUs, networks, pools the file was seeded with) stays.
        self._document = _empty_node()
        for child in _root(minidom.parse(str(state_file))).childNodes:
            if isinstance(child, minidom.Element) and child.tagName != "domain":
                _root(self._document).appendChild(self._document.importNode(child, deep=True))
        # Each domain as last written, by name: a write reads and serialises only the domains
        # that changed, so a node with many domains stays cheap to save.
        self._saved: dict[str, bytes] = {}
        try:
            for dom in self._connection.listAllDomains(0):
                self._saved[dom.name()] = self._serialised(dom)
        except libvirt.libvirtError as error:
            raise translate(error, f"reading the domains of {self.state_file}") from error

    def _persist(self, name: str) -> None:
        with self._counting:
            self._changes += 1
            self._changed.add(name)
            mine = self._changes
        with self._writing:
            if self._written >= mine:
                return
            with self._counting:
                covered, changed = self._changes, self._changed
                self._changed = set()
            try:
                for each in changed:
                    self._refresh(each)
                _write_atomically(list(self._saved.values()), self._document, self.state_file)
            except BaseException:
                with self._counting:
                    self._changed |= changed  # not saved: the next write takes them up again
                raise
            self._written = covered

    def _refresh(self, name: str) -> None:
        try:
            dom = self._connection.lookupByName(name)
            self._saved[name] = self._serialised(dom)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise translate(error, f"saving domain {name} to {self.state_file}") from error
            self._saved.pop(name, None)  # undefined (or never defined): gone from the file too

    def _serialised(self, dom: libvirt.virDomain) -> bytes:
        # The inactive definition is what the test driver boots from when it reloads. DOM, not
        # ElementTree: ElementTree renames namespace prefixes, and the domains of other tools
        # (their own <metadata>) must come back exactly as libvirt gave them.
        element = _root(minidom.parseString(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        element.setAttribute("xmlns:test", TEST_DRIVER_XMLNS)
        document = element.ownerDocument
        element.appendChild(_test_driver_element(document, "runstate", str(dom.state()[0])))
        if not dom.isPersistent():
            element.appendChild(_test_driver_element(document, "transient"))
        return element.toxml(encoding="utf-8")


def _empty_node() -> minidom.Document:
    return minidom.getDOMImplementation().createDocument(None, "node", None)


def _root(document: minidom.Document) -> minidom.Element:
    root = document.documentElement
    if root is None:
        raise ValueError("an XML document with no root element")
    return root


def _test_driver_element(document: minidom.Document, name: str, text: str | None = None) -> minidom.Element:
    element = document.createElementNS(TEST_DRIVER_XMLNS, f"test:{name}")
    if text is not None:
        element.appendChild(document.createTextNode(text))
    return element


def _write_atomically(domains: list[bytes], document: minidom.Document, path: Path) -> None:
    """`document` (the node) with `domains` inside it. A process killed mid-write must leave the
    previous file, never half of a new one."""
    node = _root(document).toxml(encoding="utf-8")
    # An empty <node/> serialises as one tag: open it so the domains can go in.
    head, tail = (node[:-2] + b">", b"</node>") if node.endswith(b"/>") else (node[: -len(b"</node>")], b"</node>")
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(b'<?xml version="1.0" encoding="utf-8"?>' + head + b"".join(domains) + tail)
    os.replace(partial, path)
