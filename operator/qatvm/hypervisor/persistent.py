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
        document = _empty_node()
        node = _root(document)
        # Everything but the domains (host CPUs, networks, pools the file was seeded with) stays.
        for child in _root(minidom.parse(str(self.state_file))).childNodes:
            if isinstance(child, minidom.Element) and child.tagName != "domain":
                node.appendChild(document.importNode(child, deep=True))
        try:
            for dom in self._connection.listAllDomains(0):
                # The inactive definition is what the test driver boots from when it reloads.
                definition = document.importNode(
                    _root(minidom.parseString(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))), deep=True
                )
                definition.setAttribute("xmlns:test", TEST_DRIVER_XMLNS)
                definition.appendChild(_test_driver_element(document, "runstate", str(dom.state()[0])))
                if not dom.isPersistent():
                    definition.appendChild(_test_driver_element(document, "transient"))
                node.appendChild(definition)
        except libvirt.libvirtError as error:
            raise translate(error, f"saving the domains to {self.state_file}") from error
        _write_atomically(document, self.state_file)


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
