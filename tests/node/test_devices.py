"""The QAT ID table and configured extra IDs."""

from __future__ import annotations

import pytest

from qatvm.node.devices import BY_PF_DEVICE, BY_VF_DEVICE, GENERATIONS, ExtraVfId, vfio_denylisted


def test_table_has_every_generation_of_the_anchors_once() -> None:
    assert [g.name for g in GENERATIONS] == [
        "dh895xcc",
        "c62x",
        "c3xxx",
        "d15xx",
        "c4xxx",
        "200xx",
        "4xxx",
        "401xx",
        "402xx",
        "420xx",
        "6xxx",
    ]
    assert len(BY_PF_DEVICE) == len(GENERATIONS)
    assert len(BY_VF_DEVICE) == sum(len(g.vf_devices) for g in GENERATIONS)
    assert not set(BY_PF_DEVICE) & set(BY_VF_DEVICE)
    assert {g.name for g in GENERATIONS if g.vf_driver is None} == {"200xx", "4xxx", "401xx", "402xx", "420xx", "6xxx"}
    assert {g.name for g in GENERATIONS if g.configurable_services} == {"4xxx", "401xx", "402xx", "420xx", "6xxx"}


def test_vfio_denylist_is_the_kernels() -> None:
    assert vfio_denylisted("8086", "37c9") and vfio_denylisted("8086", "0435")
    assert not vfio_denylisted("8086", "0442")
    assert not vfio_denylisted("1234", "37c9")
    assert not vfio_denylisted("8086", "4941")


def test_extra_ids_parse() -> None:
    assert ExtraVfId.parse_list(" 1B36:0010=qemu-nvme, 8086:1234 ,") == [
        ExtraVfId("1b36", "0010", "qemu-nvme"),
        ExtraVfId("8086", "1234", "custom"),
    ]


@pytest.mark.parametrize("text", ["1b36", "1b36:10", "1b36:001g", ":0010", "1b36:0010:1"])
def test_extra_ids_reject_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a PCI ID"):
        ExtraVfId.parse(text)
