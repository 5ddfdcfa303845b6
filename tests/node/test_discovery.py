"""Discovery finds every QAT VF, and only those, with what a scheduler needs to know."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qatvm.node.devices import GENERATIONS, ExtraVfId, Generation
from qatvm.node.discovery import discover
from qatvm.node.sysfs import HostSysfs, Sysfs
from qatvm.simulation import DEFAULT_PROFILE

MakeNode = Callable[..., Sysfs]


def by_address(sysfs: Sysfs, extra: list[ExtraVfId] | None = None) -> dict:
    return {vf.pci_address: vf for vf in discover(sysfs, extra or []).vfs}


def test_default_node(make_node: MakeNode) -> None:
    inventory = discover(make_node(DEFAULT_PROFILE))
    assert [pf.address for pf in inventory.pfs] == ["0000:10:00.0", "0000:18:00.0"]
    assert len(inventory.vfs) == 16
    first = inventory.vfs[0]
    assert first.model_dump() == {
        "pci_address": "0000:10:00.1",
        "pf_address": "0000:10:00.0",
        "device_id": "4941",
        "generation": "4xxx",
        "services": ["sym", "asym"],
        "numa_node": 0,
        "iommu_group": 1,
        "driver": None,
        "healthy": True,
        "assignable": True,
        "reason": None,
        "allocated_to": None,
    }
    assert {vf.numa_node for vf in inventory.vfs[8:]} == {1}
    assert {tuple(vf.services or ()) for vf in inventory.vfs[8:]} == {("dc",)}
    assert len({vf.iommu_group for vf in inventory.vfs}) == 16


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_every_generation(make_node: MakeNode, gen: Generation) -> None:
    sysfs = make_node({"disable_denylist": True, "pfs": [{"generation": gen.name, "vfs": 3, "numa_node": 1}]})
    inventory = discover(sysfs)
    [pf] = inventory.pfs
    assert (pf.generation, pf.device_id, pf.driver, pf.vfs_enabled) == (gen.name, gen.pf_device, gen.pf_driver, 3)
    assert len(inventory.vfs) == 3
    for vf in inventory.vfs:
        assert vf.pf_address == pf.address
        assert vf.device_id == gen.vf_devices[0]
        assert vf.generation == gen.name
        assert vf.driver == gen.vf_driver
        assert vf.services == (["sym", "asym"] if gen.configurable_services else None)
        assert vf.numa_node == 1
        assert vf.healthy and vf.assignable, vf.reason


@pytest.mark.parametrize("gen", ["c62x", "c3xxx", "dh895xcc"])
def test_denylisted_generations_are_not_assignable_without_disable_denylist(make_node: MakeNode, gen: str) -> None:
    vfs = discover(make_node({"pfs": [{"generation": gen, "vfs": 1}]})).vfs
    assert [vf.assignable for vf in vfs] == [False]
    assert "disable_denylist=1" in (vfs[0].reason or "")
    assert vfs[0].healthy


def test_unknown_numa_is_none(make_node: MakeNode) -> None:
    vfs = discover(make_node({"pfs": [{"generation": "4xxx", "vfs": 2, "numa_node": -1}]})).vfs
    assert [vf.numa_node for vf in vfs] == [None, None]


def test_shared_iommu_group_is_not_assignable(make_node: MakeNode) -> None:
    vfs = by_address(make_node({"pfs": [{"generation": "4xxx", "vfs": 2, "shared_iommu_group": True}]}))
    vf = vfs["0000:10:00.1"]
    assert not vf.assignable and vf.healthy
    assert vf.reason == "its IOMMU group 0 also holds 0000:10:00.0, 0000:10:00.2"


def test_nics_are_ignored_even_with_vfs_but_their_groups_count(make_node: MakeNode) -> None:
    sysfs = make_node(
        {
            "pfs": [{"generation": "4xxx", "vfs": 2}],
            "nics": [
                {"vfs": 4},
                {"device": "1593", "driver": "ice", "vf_device": "1889", "vfs": 2, "share_iommu_group_with": "pf0.vf0"},
            ],
        }
    )
    vfs = by_address(sysfs)
    assert sorted(vfs) == ["0000:10:00.1", "0000:10:00.2"]
    assert not vfs["0000:10:00.1"].assignable
    assert vfs["0000:10:00.1"].reason == "its IOMMU group 1 also holds 0000:21:00.0"
    assert vfs["0000:10:00.2"].assignable
    assert [pf.address for pf in discover(sysfs).pfs] == ["0000:10:00.0"]


def test_sriov_off_lists_the_pf_and_no_vfs(make_node: MakeNode) -> None:
    inventory = discover(make_node({"pfs": [{"generation": "420xx", "vfs": 0}, {"generation": "c4xxx", "vfs": 2}]}))
    assert [(pf.generation, pf.vfs_enabled, pf.vfs_total) for pf in inventory.pfs] == [
        ("420xx", 0, 16),
        ("c4xxx", 2, 16),
    ]
    assert {vf.generation for vf in inventory.vfs} == {"c4xxx"}


def test_pre_bound_vfs_show_their_driver(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "6xxx", "vfs": 2, "vf_drivers": {1: "vfio-pci"}}]})
    assert [(vf.driver, vf.assignable) for vf in discover(sysfs).vfs] == [(None, True), ("vfio-pci", True)]


def test_health_follows_the_pf_heartbeat_and_state(make_node: MakeNode) -> None:
    sysfs = make_node(
        {
            "pfs": [
                {"generation": "4xxx", "vfs": 1, "heartbeat": "failed"},
                {"generation": "401xx", "vfs": 1, "state": "down"},
                {"generation": "402xx", "vfs": 1},
            ]
        }
    )
    inventory = discover(sysfs)
    assert [pf.heartbeat_ok for pf in inventory.pfs] == [False, True, True]
    assert [(vf.healthy, vf.assignable) for vf in inventory.vfs] == [(False, True), (False, True), (True, True)]
    assert [vf.reason for vf in inventory.vfs[:2]] == [
        "PF 0000:10:00.0 heartbeat failed",
        "PF 0000:18:00.0 is down (qat/state)",
    ]
    # A heartbeat failing later is seen on the next scan.
    sysfs.write("kernel/debug/qat_4xxx_0000:20:00.0/heartbeat/inject_error", "1")
    assert not discover(sysfs).vfs[2].healthy


def test_no_debugfs_means_no_heartbeat_information(make_node: MakeNode) -> None:
    inventory = discover(make_node({"debugfs": False, "pfs": [{"generation": "4xxx", "vfs": 1}]}))
    assert inventory.pfs[0].heartbeat_ok is None
    assert inventory.vfs[0].healthy


def test_inside_a_vm_vfs_are_found_by_device_id(make_node: MakeNode) -> None:
    sysfs = make_node({"devices": [{"device": "4941"}, {"device": "37c9", "driver": "c6xxvf"}, {"device": "10d3"}]})
    vfs = discover(sysfs).vfs
    assert [(vf.pci_address, vf.pf_address, vf.generation, vf.driver, vf.services) for vf in vfs] == [
        ("0000:11:00.0", None, "4xxx", None, None),
        ("0000:19:00.0", None, "c62x", "c6xxvf", None),
    ]


def test_extra_vf_ids_find_emulated_sriov_devices(make_node: MakeNode) -> None:
    # QEMU's emulated NVMe: PF and VFs are both 1b36:0010; only the VFs are VFs.
    sysfs = make_node(
        {
            "nics": [
                {
                    "vendor": "1b36",
                    "device": "0010",
                    "driver": "nvme",
                    "vf_device": "0010",
                    "vf_driver": "nvme",
                    "vfs": 2,
                }
            ]
        }
    )
    assert discover(sysfs).vfs == []
    vfs = discover(sysfs, ExtraVfId.parse_list("1b36:0010=qemu-nvme")).vfs
    assert [(vf.pci_address, vf.pf_address, vf.device_id, vf.generation, vf.driver) for vf in vfs] == [
        ("0000:11:02.0", "0000:11:00.0", "0010", "qemu-nvme", "nvme"),
        ("0000:11:02.1", "0000:11:00.0", "0010", "qemu-nvme", "nvme"),
    ]
    assert all(vf.assignable for vf in vfs)


def test_vfio_pci_not_loaded_makes_nothing_assignable(make_node: MakeNode) -> None:
    vfs = discover(make_node({"vfio_pci": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})).vfs
    assert not vfs[0].assignable
    assert "modprobe vfio-pci" in (vfs[0].reason or "")


def test_iommu_off(make_node: MakeNode) -> None:
    vfs = discover(make_node({"iommu": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})).vfs
    assert vfs[0].iommu_group is None
    assert not vfs[0].assignable
    assert "intel_iommu=on" in (vfs[0].reason or "")


def test_vanished_vfs_disappear(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 3}]})
    sysfs.write("bus/pci/devices/0000:10:00.2/remove", "1")
    assert [vf.pci_address for vf in discover(sysfs).vfs] == ["0000:10:00.1", "0000:10:00.3"]


def test_discovery_only_reads(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 2}, {"generation": "c62x", "vfs": 1}]})
    assert discover(HostSysfs(sysfs.root)) == discover(sysfs)
