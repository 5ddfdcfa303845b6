from __future__ import annotations

import uuid

from qatvm.domain.naming import DOMAIN_PREFIX, MAX_NAME_LENGTH, domain_name, domain_uuid


def test_short_names_are_readable() -> None:
    assert domain_name("team-a", "db.primary") == "qatvm-team-a_db.primary"


def test_separator_keeps_namespace_and_name_apart() -> None:
    # With `-` between them, these two VMs would share a domain.
    assert domain_name("a-b", "c") != domain_name("a", "b-c")


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    long = "x" * 240
    first = domain_name("ns", long + "1")
    second = domain_name("ns", long + "2")
    assert len(first) == len(second) == MAX_NAME_LENGTH
    assert first != second
    assert first.startswith(DOMAIN_PREFIX + "ns_xxx")
    assert first.count("_") == 2


def test_no_vm_can_take_another_vms_hashed_name() -> None:
    hashed = domain_name("ns", "y" * 200)
    # A VM whose own name equals the tail of the hashed one: its domain name has one `_` only.
    squatter = hashed.removeprefix(DOMAIN_PREFIX + "ns_").replace("_", "-")
    assert domain_name("ns", squatter) != hashed


def test_uuid_is_stable_per_uid_and_not_the_uid_itself() -> None:
    uid = "0b4a3c5e-6f1d-4c2a-9e8b-7d6c5b4a3f21"
    assert domain_uuid(uid) == domain_uuid(uid)
    assert domain_uuid(uid) != uuid.UUID(uid)
    assert domain_uuid(uid) != domain_uuid("0b4a3c5e-6f1d-4c2a-9e8b-7d6c5b4a3f22")
