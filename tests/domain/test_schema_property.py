"""Every domain the builder can produce is valid for libvirt's schema and parses back unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qatvm.api.base import ObjectRef
from qatvm.domain import CpuMode, Domain, DomainSpec, NetworkKind, NetworkSpec, VirtType, build_domain
from qatvm.api.hugepages import PageSize
from qatvm.domain.spec import MIB, HostPlacement

_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
_names = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(lambda name: len(name) <= 253)
_path_part = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\ufffe\uffff"),
    min_size=1,
    max_size=24,
).filter(lambda part: part not in (".", ".."))
_paths = st.lists(_path_part, min_size=1, max_size=4).map(lambda parts: Path("/", *parts))
_pci_addresses = st.builds(
    "{:04x}:{:02x}:{:02x}.{:x}".format,
    st.integers(0, 0xFFFF) | st.integers(0x10000, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0x1F),
    st.integers(0, 7),
)
_device_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}", fullmatch=True)
_networks = st.one_of(
    st.just(NetworkSpec()),
    st.builds(NetworkSpec, kind=st.sampled_from([NetworkKind.NETWORK, NetworkKind.BRIDGE]), source=_device_names),
)

_cpus = st.frozensets(st.integers(0, 1023), min_size=1, max_size=64)


@st.composite
def _specs(draw: st.DrawFn) -> DomainSpec:
    vcpus = draw(st.integers(1, 256))
    placement = draw(st.none() | st.builds(
        HostPlacement,
        host_node=st.none() | st.integers(0, 63),
        strict=st.booleans(),
        shared_cpus=_cpus,
        # Dedicated: one distinct host CPU per vCPU, or none.
        dedicated_cpus=st.just(()) | st.lists(st.integers(0, 4095), min_size=vcpus, max_size=vcpus, unique=True).map(tuple),
    ))
    return draw(st.builds(DomainSpec, **{**_FIELDS, "vcpus": st.just(vcpus), "placement": st.just(placement)}))


_FIELDS: dict[str, st.SearchStrategy[object]] = dict(
    owner=st.builds(ObjectRef, namespace=_label, name=_names, uid=st.uuids().map(str)),
    memory_bytes=st.integers(16 * MIB, 4 * 1024**4),
    disk=_paths,
    cloud_init_iso=st.none() | _paths,
    hostdevs=st.lists(_pci_addresses, max_size=64, unique=True).map(tuple),
    network=_networks,
    virt_type=st.sampled_from(VirtType),
    cpu_mode=st.sampled_from(CpuMode),
    hugepage_size=st.none() | st.sampled_from(PageSize),
)
specs = _specs()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(specs, min_size=1, max_size=8))
def test_built_domains_validate_and_round_trip(
    batch: list[DomainSpec], schema_errors: Callable[[list[str]], dict[int, str]]
) -> None:
    # A batch per example: xmllint loads libvirt's large schema once for all of them, and
    # Hypothesis shrinks a failing batch down to the one spec that breaks.
    domains = [build_domain(spec) for spec in batch]
    documents = [domain.xml() for domain in domains]
    assert schema_errors(documents) == {}
    for spec, domain, document in zip(batch, domains, documents, strict=True):
        parsed = Domain.from_xml(document)
        assert parsed == domain
        assert tuple(hostdev.source.address.bdf for hostdev in parsed.devices.hostdevs) == spec.hostdevs
        assert (parsed.cputune is not None) == (spec.placement is not None)
        assert (parsed.memory_backing is not None) == (spec.hugepage_size is not None)
