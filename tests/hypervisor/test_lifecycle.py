"""The libvirt layer on libvirt's own test driver: every call idempotent, every failure explicit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qatvm.domain import DomainSpec, build_domain
from qatvm.hypervisor import (
    ConnectionFailed,
    DomainActive,
    DomainConflict,
    DomainNotFound,
    DomainState,
    Hypervisor,
    HypervisorError,
    open_hypervisor,
)

SpecFactory = Callable[..., DomainSpec]


def test_full_lifecycle_with_every_step_repeated(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    spec = make_spec("lifecycle")
    domain = build_domain(spec)
    assert hypervisor.state(spec.name) is None
    for _ in range(2):
        hypervisor.define(domain)
        assert hypervisor.state(spec.name) is DomainState.SHUTOFF
    for _ in range(2):
        hypervisor.start(spec.name)
        assert hypervisor.state(spec.name) is DomainState.RUNNING
    for _ in range(2):
        hypervisor.stop(spec.name, timeout=5)
        assert hypervisor.state(spec.name) is DomainState.SHUTOFF
    hypervisor.start(spec.name)
    for _ in range(2):
        hypervisor.destroy(spec.name)
        assert hypervisor.state(spec.name) is DomainState.SHUTOFF
    for _ in range(2):
        hypervisor.undefine(spec.name)
        assert hypervisor.state(spec.name) is None
    # Gone is gone: stopping or destroying what is not there changes nothing and does not fail.
    hypervisor.stop(spec.name)
    hypervisor.destroy(spec.name)


def test_libvirt_hands_back_our_hostdevs_and_owner(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    spec = make_spec("roundtrip", hostdevs=("0000:3d:01.2", "0000:3f:00.7", "10000:01:1f.0"))
    hypervisor.define(build_domain(spec))
    hypervisor.start(spec.name)
    try:
        live = hypervisor.domain(spec.name)
        assert live.id is not None  # the live XML, not our input echoed back
        assert live.uuid == spec.uuid
        assert [h.source.address.bdf for h in live.devices.hostdevs] == list(spec.hostdevs)
        assert {(h.managed, h.driver.name if h.driver else None) for h in live.devices.hostdevs} == {("no", "vfio")}
        assert live.owner is not None
        assert (live.owner.namespace, live.owner.name, live.owner.uid) == ("team-a", "roundtrip", spec.owner.uid)
    finally:
        hypervisor.destroy(spec.name)
        hypervisor.undefine(spec.name)


def test_owned_domains_are_found_by_metadata_only(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    ours = [make_spec("one"), make_spec("two", namespace="team-b", hostdevs=())]
    for spec in ours:
        hypervisor.define(build_domain(spec))
    hypervisor.start(ours[0].name)
    try:
        owned = {d.name: d for d in hypervisor.owned_domains()}
        # The test driver's own running domain `test` has no qatvm metadata.
        assert set(owned) == {spec.name for spec in ours}
        assert owned[ours[0].name].owner == ours[0].owner
        assert owned[ours[0].name].state is DomainState.RUNNING
        assert owned[ours[1].name].uuid == ours[1].uuid
        assert owned[ours[1].name].state is DomainState.SHUTOFF
        assert hypervisor.state("test") is DomainState.RUNNING
    finally:
        hypervisor.destroy(ours[0].name)
        for spec in ours:
            hypervisor.undefine(spec.name)


def test_redefining_updates_the_definition(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    spec = make_spec("grow", hostdevs=("0000:3d:01.2",))
    hypervisor.define(build_domain(spec))
    grown = spec.model_copy(update={"hostdevs": ("0000:3d:01.2", "0000:3d:01.3"), "vcpus": 8})
    hypervisor.define(build_domain(grown))
    try:
        domain = hypervisor.domain(spec.name)
        assert len(domain.devices.hostdevs) == 2
        assert domain.vcpu.count == 8
    finally:
        hypervisor.undefine(spec.name)


def test_a_name_or_uuid_taken_by_another_domain_is_a_conflict(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    first = make_spec("db")
    hypervisor.define(build_domain(first))
    try:
        # The same VM name re-created (new UID, so new UUID) while the old domain is still defined.
        with pytest.raises(DomainConflict, match="already exists with uuid"):
            hypervisor.define(build_domain(make_spec("db")))
        # The same UID under another name: libvirt refuses two domains with one UUID.
        with pytest.raises(DomainConflict, match="already defined with uuid"):
            hypervisor.define(build_domain(make_spec("other", uid=first.owner.uid)))
        assert [d.owner for d in hypervisor.owned_domains()] == [first.owner]
    finally:
        hypervisor.undefine(first.name)


def test_calls_that_need_a_domain_say_it_is_missing(hypervisor: Hypervisor) -> None:
    with pytest.raises(DomainNotFound, match="no domain named qatvm-x_missing"):
        hypervisor.start("qatvm-x_missing")
    with pytest.raises(DomainNotFound):
        hypervisor.domain("qatvm-x_missing")


def test_reading_a_domain_qatvm_did_not_write_says_so(hypervisor: Hypervisor) -> None:
    # The test driver's stock domain `test` has a disk with no <driver>, which qatvm always writes.
    with pytest.raises(HypervisorError, match="domain test is not one qatvm defined"):
        hypervisor.domain("test")


def test_undefining_a_running_domain_is_refused(hypervisor: Hypervisor, make_spec: SpecFactory) -> None:
    spec = make_spec("busy")
    hypervisor.define(build_domain(spec))
    hypervisor.start(spec.name)
    try:
        with pytest.raises(DomainActive, match="stop or destroy it"):
            hypervisor.undefine(spec.name)
        assert hypervisor.state(spec.name) is DomainState.RUNNING
    finally:
        hypervisor.destroy(spec.name)
        hypervisor.undefine(spec.name)


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("nosuch:///system", "cannot connect to libvirt at 'nosuch:///system'"),
        ("test:///nonexistent/node.xml", "cannot connect to libvirt at 'test:///nonexistent/node.xml'"),
        # The simulation's scheme means nothing to production: libvirt is asked, and refuses.
        ("qatvm-test:///tmp/node.xml", "cannot connect to libvirt at 'qatvm-test:///tmp/node.xml'"),
    ],
)
def test_bad_uris_fail_to_connect(uri: str, complaint: str) -> None:
    with pytest.raises(ConnectionFailed, match=complaint):
        open_hypervisor(uri)
