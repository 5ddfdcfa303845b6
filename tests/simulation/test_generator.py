"""The generated tree is laid out as Linux's sysfs is."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from qatvm.node.devices import GENERATIONS
from qatvm.node.sysfs import Sysfs
from qatvm.simulation import DEFAULT_PROFILE, HardwareProfile, SimulatedSysfs, generate, load_profile
from qatvm.simulation.sysfs_cli import main as sysfs_main

MakeNode = Callable[..., Sysfs]


def _links(root: Path) -> list[Path]:
    return [Path(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if Path(d, n).is_symlink()]


def test_default_profile_two_4xxx_pfs_on_two_numa_nodes(make_node: MakeNode) -> None:
    sysfs = make_node(DEFAULT_PROFILE)
    pfs = [a for a in sysfs.listdir("bus/pci/devices") if sysfs.read(f"bus/pci/devices/{a}/device") == "0x4940"]
    assert pfs == ["0000:10:00.0", "0000:18:00.0"]
    assert [sysfs.read(f"bus/pci/devices/{pf}/numa_node") for pf in pfs] == ["0", "1"]
    assert [sysfs.read(f"bus/pci/devices/{pf}/qat/cfg_services") for pf in pfs] == ["sym;asym", "dc"]
    for pf in pfs:
        dev = f"bus/pci/devices/{pf}"
        assert sysfs.read(f"{dev}/sriov_numvfs") == "8"
        assert sysfs.read(f"{dev}/sriov_totalvfs") == "16"
        assert sysfs.read(f"{dev}/qat/state") == "up"
        assert sysfs.readlink(f"{dev}/driver") == "4xxx"
        assert sysfs.read(f"kernel/debug/qat_4xxx_{pf}/heartbeat/status") == "0"
        vfs = [sysfs.readlink(f"{dev}/virtfn{i}") for i in range(8)]
        assert not sysfs.exists(f"{dev}/virtfn8")
        for vf in vfs:
            assert sysfs.readlink(f"bus/pci/devices/{vf}/physfn") == pf
            assert sysfs.read(f"bus/pci/devices/{vf}/device") == "0x4941"
            assert sysfs.readlink(f"bus/pci/devices/{vf}/driver") is None
            assert sysfs.read(f"bus/pci/devices/{vf}/driver_override") == "(null)"


def test_every_link_is_relative_and_resolves_inside_the_tree(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "c62x", "vfs": 2}], "nics": [{"vfs": 1}]})
    links = _links(sysfs.root)
    assert len(links) > 30
    for link in links:
        target = os.readlink(link)
        assert not os.path.isabs(target), link
        assert link.resolve().exists(), link
        assert link.resolve().is_relative_to(sysfs.root.resolve()), link


def test_devices_live_under_host_bridges_and_bus_links_point_there(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 1}, {"generation": "dh895xcc", "vfs": 1}]})
    real = {a: Path(os.path.realpath(sysfs.path(f"bus/pci/devices/{a}"))) for a in sysfs.listdir("bus/pci/devices")}
    devices = sysfs.root.resolve() / "devices"
    # gen4+ are integrated endpoints; the dh895xcc card sits behind a root port.
    assert real["0000:10:00.0"] == devices / "pci0000:10" / "0000:10:00.0"
    assert real["0000:10:00.1"] == devices / "pci0000:10" / "0000:10:00.1"
    assert real["0000:19:00.0"] == devices / "pci0000:18" / "0000:18:00.0" / "0000:19:00.0"
    assert real["0000:19:01.0"] == devices / "pci0000:18" / "0000:18:00.0" / "0000:19:01.0"
    assert sysfs.readlink("bus/pci/devices/0000:18:00.0/driver") == "pcieport"


def test_iommu_groups_list_their_members_both_ways(make_node: MakeNode) -> None:
    sysfs = make_node(
        {"pfs": [{"generation": "4xxx", "vfs": 3}, {"generation": "4xxx", "vfs": 2, "shared_iommu_group": True}]}
    )
    groups = sysfs.listdir("kernel/iommu_groups")
    members = {g: sysfs.listdir(f"kernel/iommu_groups/{g}/devices") for g in groups}
    for group, devices in members.items():
        for address in devices:
            assert sysfs.readlink(f"bus/pci/devices/{address}/iommu_group") == group
    assert sorted(len(m) for m in members.values()) == [1, 1, 1, 1, 3]
    assert ["0000:18:00.0", "0000:18:00.1", "0000:18:00.2"] in members.values()


@pytest.mark.parametrize("gen", GENERATIONS, ids=lambda g: g.name)
def test_every_generation_probes_like_the_kernel(make_node: MakeNode, gen) -> None:
    sysfs = make_node({"pfs": [{"generation": gen.name, "vfs": 2}]})
    [pf] = [
        a for a in sysfs.listdir("bus/pci/devices") if sysfs.read(f"bus/pci/devices/{a}/device") == f"0x{gen.pf_device}"
    ]
    assert sysfs.readlink(f"bus/pci/devices/{pf}/driver") == gen.pf_driver
    assert sysfs.exists(f"bus/pci/devices/{pf}/qat/cfg_services") == gen.configurable_services
    assert sysfs.exists(f"kernel/debug/qat_{gen.pf_driver}_{pf}/heartbeat/status")
    for i in range(2):
        vf = sysfs.readlink(f"bus/pci/devices/{pf}/virtfn{i}")
        assert sysfs.read(f"bus/pci/devices/{vf}/device") == f"0x{gen.vf_devices[0]}"
        assert sysfs.readlink(f"bus/pci/devices/{vf}/driver") == gen.vf_driver


def test_unloaded_vf_drivers_leave_old_vfs_unbound(make_node: MakeNode) -> None:
    sysfs = make_node({"vf_drivers_loaded": False, "pfs": [{"generation": "c62x", "vfs": 1}]})
    assert not sysfs.exists("bus/pci/drivers/c6xxvf")
    assert sysfs.readlink("bus/pci/devices/0000:11:01.0/driver") is None


def test_pre_bound_vfs_and_vfio_devices(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 3, "vf_drivers": {0: "vfio-pci", 2: "vfio-pci"}}]})
    drivers = [sysfs.readlink(f"bus/pci/devices/0000:10:00.{i}/driver") for i in (1, 2, 3)]
    assert drivers == ["vfio-pci", None, "vfio-pci"]
    assert sorted(os.listdir(sysfs.dev_root / "vfio")) == ["1", "3", "vfio"]
    assert sysfs.listdir("bus/pci/drivers/vfio-pci") == sorted(
        ["0000:10:00.1", "0000:10:00.3", "bind", "unbind", "new_id", "remove_id"]
    )
    assert sysfs.read("bus/pci/devices/0000:10:00.1/driver_override") == "(null)"


def test_no_iommu_means_no_groups(make_node: MakeNode) -> None:
    sysfs = make_node({"iommu": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})
    assert not sysfs.exists("kernel/iommu_groups")
    assert sysfs.readlink("bus/pci/devices/0000:10:00.1/iommu_group") is None


def test_module_state_is_in_sysfs(make_node: MakeNode) -> None:
    on = make_node({"disable_denylist": True}, name="a")
    assert on.read("module/vfio_pci/parameters/disable_denylist") == "Y"
    off = make_node({"vfio_pci": False, "debugfs": False}, name="b")
    assert not off.exists("bus/pci/drivers/vfio-pci")
    assert not off.exists("module/vfio_pci")
    assert not off.exists("kernel/debug")


def test_services_state_and_heartbeat_from_profile(make_node: MakeNode) -> None:
    sysfs = make_node(
        {"pfs": [{"generation": "6xxx", "vfs": 0, "services": "decomp", "state": "down", "heartbeat": "failed"}]}
    )
    assert sysfs.read("bus/pci/devices/0000:10:00.0/qat/cfg_services") == "decomp"
    assert sysfs.read("bus/pci/devices/0000:10:00.0/qat/state") == "down"
    assert sysfs.read("kernel/debug/qat_6xxx_0000:10:00.0/heartbeat/status") == "-1"
    assert sysfs.read("bus/pci/devices/0000:10:00.0/sriov_numvfs") == "0"


def test_nic_can_share_a_group_with_a_qat_vf(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 2}], "nics": [{"share_iommu_group_with": "pf0.vf1"}]})
    group = sysfs.readlink("bus/pci/devices/0000:10:00.2/iommu_group")
    assert sysfs.listdir(f"kernel/iommu_groups/{group}/devices") == ["0000:10:00.2", "0000:19:00.0"]


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"pfs": [{"generation": "5xxx"}]}, "unknown generation"),
        ({"pfs": [{"generation": "4xxx", "vfs": 17}]}, "exceeds total_vfs"),
        ({"pfs": [{"generation": "c62x", "services": "sym"}]}, "no qat/cfg_services"),
        ({"pfs": [{"generation": "4xxx", "services": "sym;sym"}]}, "distinct items"),
        ({"pfs": [{"generation": "4xxx", "services": "decomp"}]}, "distinct items"),
        ({"pfs": [{"generation": "4xxx", "vfs": 2, "vf_drivers": {2: "vfio-pci"}}]}, "only 2 VFs"),
        ({"pfs": [{"generation": "c62x", "vf_drivers": {0: "vfio-pci"}}]}, "disable_denylist"),
        ({"vfio_pci": False, "pfs": [{"generation": "4xxx", "vf_drivers": {0: "vfio-pci"}}]}, "vfio_pci is false"),
        ({"iommu": False, "pfs": [{"generation": "4xxx", "vf_drivers": {0: "vfio-pci"}}]}, "iommu: true"),
        ({"nics": [{"share_iommu_group_with": "pf7"}]}, None),
        ({"pfs": [{"generation": "4xxx", "colour": "blue"}]}, "Extra inputs"),
    ],
)
def test_bad_profiles_are_refused(tmp_path: Path, profile: dict, message: str | None) -> None:
    with pytest.raises(ValueError) as err:
        generate(HardwareProfile.model_validate(profile), tmp_path / "sys")
    if message is not None:
        assert isinstance(err.value, ValidationError)
        assert message in str(err.value)
    else:
        assert "names no device placed before" in str(err.value)


def test_refuses_to_write_over_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        generate(DEFAULT_PROFILE, tmp_path / "sys")
    assert (tmp_path / "sys" / "keep").read_text() == "x"


def test_profiles_load_from_yaml_and_json(tmp_path: Path) -> None:
    data = {"pfs": [{"generation": "420xx", "numa_node": 1, "vfs": 4}], "nics": [{"vfs": 2}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert (
        load_profile(tmp_path / "p.yaml") == load_profile(tmp_path / "p.json") == HardwareProfile.model_validate(data)
    )
    (tmp_path / "empty.yaml").write_text("")
    assert load_profile(tmp_path / "empty.yaml") == HardwareProfile()


def test_cli_writes_a_tree_from_a_profile_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("pfs:\n  - {generation: 402xx, vfs: 3}\n")
    assert sysfs_main(["--profile", str(tmp_path / "p.yaml"), "--root", str(tmp_path / "n" / "sys")]) == 0
    sysfs = SimulatedSysfs(tmp_path / "n" / "sys")
    assert sysfs.read("bus/pci/devices/0000:10:00.0/sriov_numvfs") == "3"
    assert sysfs_main(["--root", str(tmp_path / "n" / "sys")]) == 1
    assert "not empty" in capsys.readouterr().err


def test_cli_default_profile_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert sysfs_main(["--print-default-profile"]) == 0
    assert HardwareProfile.model_validate(yaml.safe_load(capsys.readouterr().out)) == DEFAULT_PROFILE


def test_cli_reports_a_bad_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("pfs:\n  - {generation: 4xxx, vfs: 99}\n")
    assert sysfs_main(["--profile", str(tmp_path / "p.yaml"), "--root", str(tmp_path / "sys")]) == 1
    assert "exceeds total_vfs" in capsys.readouterr().err
