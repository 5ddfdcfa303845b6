"""A simulated node's hypervisor that keeps its domains across agent restarts.

libvirt's test driver is real libvirt (same XML parser, same domain list, same errors) but keeps
state only inside the process that opened it; a `test:///FILE` connection starts from FILE, a
test-driver node description. This class opens FILE and, after every call that may change a
domain, writes the domains back to it with their run state (`<test:runstate>`, read by the test
driver's own parser), so the next agent process finds what the previous one left, as it would on a
real host after a crash. Chosen by the URI scheme `qatvm-test:///ABSOLUTE/PATH.xml`.

One process at a time per file: two connections on one file would each write their own view.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from xml.dom import minidom

import libvirt

from qatvm.hypervisor.connection import Hypervisor, open_connection
from qatvm.hypervisor.errors import translate

PERSISTENT_TEST_SCHEME = "qatvm-test"
TEST_DRIVER_XMLNS = "http://libvirt.org/schemas/domain/test/1.0"


class PersistentTestHypervisor(Hypervisor):
    def __init__(self, state_file: Path) -> None:
        if not state_file.exists():
            state_file.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(_empty_node(), state_file)
        super().__init__(open_connection(f"test://{state_file}"))
        self.state_file = state_file
        # The agent works on several VMs at once: their writes of this one file take turns, and
        # a write that starts after a change covers it, so a burst of changes costs a few writes.
        self._writing = threading.Lock()
        self._counting = threading.Lock()
        self._changes = 0
        self._written = 0
        self._document = _empty_node()
        # Everything but the domains (host CPUs, networks, pools the file was seeded with) stays.
        for child in _root(minidom.parse(str(state_file))).childNodes:
            if isinstance(child, minidom.Element) and child.tagName != "domain":
                _root(self._document).appendChild(self._document.importNode(child, deep=True))
        # Each domain's element as last written, by UUID, with what it was made from: a write
        # parses only the domains that changed, so a node with many domains stays cheap to save.
        self._elements: dict[str, tuple[tuple[str, int, bool], minidom.Element]] = {}

    def _persist(self) -> None:
        with self._counting:
            self._changes += 1
            mine = self._changes
        with self._writing:
            if self._written >= mine:
                return
            with self._counting:
                covered = self._changes
            self._write_domains()
            self._written = covered

    def _write_domains(self) -> None:
        # DOM, not ElementTree: ElementTree renames namespace prefixes, and the domains of other
        # tools (their own <metadata>) must come back exactly as libvirt gave them.
        node = _root(self._document)
        for element in [c for c in node.childNodes if isinstance(c, minidom.Element) and c.tagName == "domain"]:
            node.removeChild(element)
        elements: dict[str, tuple[tuple[str, int, bool], minidom.Element]] = {}
        try:
            for dom in self._connection.listAllDomains(0):
                try:
                    # The inactive definition is what the test driver boots from when it reloads.
                    made_from = (dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), dom.state()[0], bool(dom.isPersistent()))
                except libvirt.libvirtError as error:
                    if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # removed by another VM's pass since the list: its own write follows
                    raise
                uuid = dom.UUIDString()
                known = self._elements.get(uuid)
                element = known[1] if known is not None and known[0] == made_from else self._element(*made_from)
                elements[uuid] = (made_from, element)
                node.appendChild(element)
        except libvirt.libvirtError as error:
            raise translate(error, f"saving the domains to {self.state_file}") from error
        self._elements = elements
        _write_atomically(self._document, self.state_file)

    def _element(self, definition: str, state: int, persistent: bool) -> minidom.Element:
        element = self._document.importNode(_root(minidom.parseString(definition)), deep=True)
        element.setAttribute("xmlns:test", TEST_DRIVER_XMLNS)
        element.appendChild(_test_driver_element(self._document, "runstate", str(state)))
        if not persistent:
            element.appendChild(_test_driver_element(self._document, "transient"))
        return element


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


def _write_atomically(document: minidom.Document, path: Path) -> None:
    # A process killed mid-write must leave the previous file, never half of a new one.
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(document.toxml(encoding="utf-8"))
    os.replace(partial, path)
