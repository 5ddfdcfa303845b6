"""qatvm's view of one libvirt connection: idempotent domain lifecycle and ownership by metadata.

Every call is safe to repeat, because an agent killed at any line re-runs the whole sequence on
restart: defining an existing identical domain, starting a running one, stopping, destroying or
undefining one that is already gone all succeed and change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from uuid import UUID

import libvirt
from pydantic import ValidationError

from qatvm.api.base import ObjectRef
from qatvm.domain.models import Domain, DomainIdentity
from qatvm.hypervisor.errors import ConnectionFailed, DomainActive, DomainNotFound, HypervisorError, translate
from qatvm.hypervisor.state import DomainState

log = logging.getLogger(__name__)


def _silence_default_handler(_context: object, _error: object) -> None:
    # libvirt's default handler prints every error to stderr, including the ones qatvm expects
    # and handles (a missing domain); the errors still arrive as exceptions.
    return None


libvirt.registerErrorHandler(_silence_default_handler, None)


def open_connection(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as error:
        raise ConnectionFailed(
            f"cannot connect to libvirt at {uri!r}: {error.get_error_message()}", code=error.get_error_code()
        ) from error


@dataclass(frozen=True)
class OwnedDomain:
    name: str
    uuid: UUID
    owner: ObjectRef
    state: DomainState


class Hypervisor:
    """One open libvirt connection. Use `qatvm.hypervisor.open_hypervisor(uri)` to get one."""

    def __init__(self, connection: libvirt.virConnect) -> None:
        self._connection = connection
        self.uri: str = connection.getURI()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.close()

    def define(self, domain: Domain) -> None:
        """Define or update the persistent definition; a running domain takes it on its next boot."""
        with self._changing(domain.name):
            try:
                self._connection.defineXML(domain.xml())
            except libvirt.libvirtError as error:
                raise translate(error, f"defining domain {domain.name}") from error

    def start(self, name: str) -> None:
        with self._changing(name):
            dom = self._lookup(name)
            if dom.isActive():
                return
            try:
                dom.create()
            except libvirt.libvirtError as error:
                # Someone else started it between our check and our call: the goal is reached.
                if not dom.isActive():
                    raise translate(error, f"starting domain {name}") from error

    def stop(self, name: str, timeout: float = 60.0) -> None:
        """Ask the guest to power off (ACPI); destroy it if it is still up after `timeout` seconds."""
        with self._changing(name):
            dom = self._find(name)
            if dom is None or not dom.isActive():
                return
            try:
                dom.shutdown()
            except libvirt.libvirtError as error:
                if not dom.isActive():
                    return
                # A guest that cannot take the request (paused, firmware only) is destroyed now.
                log.info("graceful shutdown of %s refused (%s); destroying it", name, error.get_error_message())
            else:
                deadline = time.monotonic() + timeout
                while dom.isActive() and time.monotonic() < deadline:
                    time.sleep(0.2)
            self._destroy(dom, name)

    def destroy(self, name: str) -> None:
        """Power off at once, as pulling the plug does."""
        with self._changing(name):
            dom = self._find(name)
            if dom is not None:
                self._destroy(dom, name)

    def undefine(self, name: str) -> None:
        """Remove the definition of a stopped domain; refuses a running one, which would leak it."""
        with self._changing(name):
            dom = self._find(name)
            if dom is None:
                return
            if dom.isActive():
                raise DomainActive(f"domain {name} is running: stop or destroy it before undefining it")
            try:
                dom.undefine()
            except libvirt.libvirtError as error:
                if self._find(name) is not None:
                    raise translate(error, f"undefining domain {name}") from error

    def state(self, name: str) -> DomainState | None:
        """The domain's state, or None when no such domain is defined."""
        dom = self._find(name)
        if dom is None:
            return None
        try:
            return DomainState.from_libvirt(dom.state()[0])
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(error, f"reading the state of domain {name}") from error

    def domain(self, name: str) -> Domain:
        """The domain as libvirt has it now (live if running), parsed into the models."""
        dom = self._lookup(name)
        try:
            return Domain.from_xml(dom.XMLDesc(0))
        except libvirt.libvirtError as error:
            raise translate(error, f"reading domain {name}") from error
        except ValidationError as error:
            raise HypervisorError(f"domain {name} is not one qatvm defined: {error}") from error

    def owned_domains(self) -> list[OwnedDomain]:
        """Every domain carrying qatvm metadata, so the agent can match them to VMs and find orphans."""
        return [owned for dom in self._connection.listAllDomains(0) if (owned := self._owned(dom)) is not None]

    def owned_domain(self, name: str) -> OwnedDomain | None:
        """The domain of that name if it carries qatvm metadata: one lookup, not a listing."""
        dom = self._find(name)
        return self._owned(dom) if dom is not None else None

    def _owned(self, dom: libvirt.virDomain) -> OwnedDomain | None:
        try:
            identity = DomainIdentity.from_xml(dom.XMLDesc(0))
            if identity.owner is None:
                return None
            state = DomainState.from_libvirt(dom.state()[0])
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # undefined while we were looking
            raise translate(error, "listing domains") from error
        except ValidationError as error:
            # qatvm only ever touches what it can identify for sure.
            log.warning("ignoring domain %s: its XML does not parse: %s", dom.name(), error)
            return None
        try:
            owner = ObjectRef.model_validate(identity.owner.model_dump())
        except ValidationError as error:
            log.warning("ignoring domain %s: its qatvm metadata is not valid: %s", identity.name, error)
            return None
        return OwnedDomain(name=identity.name, uuid=identity.uuid, owner=owner, state=state)

    @contextmanager
    def _changing(self, name: str) -> Iterator[None]:
        try:
            yield
        finally:
            self._persist(name)

    def _persist(self, name: str) -> None:
        """Called after every call that may change domain `name`; a real hypervisor keeps them itself."""

    def _find(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._connection.lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(error, f"looking up domain {name}") from error

    def _lookup(self, name: str) -> libvirt.virDomain:
        dom = self._find(name)
        if dom is None:
            raise DomainNotFound(f"no domain named {name} at {self.uri}", code=libvirt.VIR_ERR_NO_DOMAIN)
        return dom

    def _destroy(self, dom: libvirt.virDomain, name: str) -> None:
        if not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as error:
            if dom.isActive():
                raise translate(error, f"destroying domain {name}") from error
