"""`qatvm inventory` on simulated nodes of every generation and odd layouts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from qatvm.node.devices import GENERATIONS
from qatvm.node.inventory_cli import COLUMNS, main
from qatvm.node.sysfs import Sysfs

MakeNode = Callable[..., Sysfs]
KEYS = {
    "pciAddress",
    "pfAddress",
    "deviceId",
    "generation",
    "services",
    "numaNode",
    "iommuGroup",
    "driver",
    "healthy",
    "assignable",
    "reason",
    "allocatedTo",
}

ODD_NODE = {
    "pfs": [
        {"generation": "4xxx", "vfs": 2, "numa_node": -1, "vf_drivers": {0: "vfio-pci"}},
        {"generation": "c62x", "vfs": 1},
        {"generation": "6xxx", "vfs": 2, "shared_iommu_group": True, "services": "dcc"},
        {"generation": "420xx", "vfs": 0},
    ],
    "nics": [{"vfs": 2}],
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_json_has_the_qatnode_keys_for_every_generation(
    make_node: MakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    sysfs = make_node({"disable_denylist": True, "pfs": [{"generation": g.name, "vfs": 1} for g in GENERATIONS]})
    out = json.loads(run(capsys, "--sysfs-root", str(sysfs.root), "--output", "json"))
    assert (out["total"], out["free"], out["unhealthy"]) == (len(GENERATIONS), len(GENERATIONS), 0)
    assert [vf["generation"] for vf in out["vfs"]] == [g.name for g in GENERATIONS]
    assert [vf["deviceId"] for vf in out["vfs"]] == [g.vf_devices[0] for g in GENERATIONS]
    for vf in out["vfs"]:
        assert set(vf) == KEYS
        assert isinstance(vf["iommuGroup"], int) and isinstance(vf["numaNode"], int)
        assert vf["allocatedTo"] is None


def test_json_on_odd_layouts(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    sysfs = make_node(ODD_NODE)
    vfs = {vf["pciAddress"]: vf for vf in json.loads(run(capsys, "--sysfs-root", str(sysfs.root), "-o", "json"))["vfs"]}
    assert sorted(vfs) == ["0000:10:00.1", "0000:10:00.2", "0000:19:01.0", "0000:20:00.1", "0000:20:00.2"]
    assert vfs["0000:10:00.1"]["numaNode"] is None
    assert vfs["0000:10:00.1"]["driver"] == "vfio-pci"
    assert vfs["0000:19:01.0"]["services"] is None
    assert vfs["0000:19:01.0"]["assignable"] is False
    assert vfs["0000:20:00.1"]["services"] == ["dcc"]
    assert vfs["0000:20:00.1"]["assignable"] is False
    assert "also holds 0000:20:00.0" in vfs["0000:20:00.1"]["reason"]


def test_yaml_matches_json(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(make_node(ODD_NODE).root)
    assert yaml.safe_load(run(capsys, "--sysfs-root", root, "-o", "yaml")) == json.loads(
        run(capsys, "--sysfs-root", root, "-o", "json")
    )


def test_table(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, "--sysfs-root", str(make_node(ODD_NODE).root)).splitlines()
    assert lines[0].split("  ")[0] == "PF"
    for column in COLUMNS:
        assert column in lines[0]
    assert [line.split() for line in lines[1:6]] == [
        ["0000:10:00.0", "0000:10:00.1", "4xxx", "sym;asym", "-", "1", "vfio-pci", "yes", "ok"],
        ["0000:10:00.0", "0000:10:00.2", "4xxx", "sym;asym", "-", "2", "-", "yes", "ok"],
        ["0000:19:00.0", "0000:19:01.0", "c62x", "-", "0", "5", "c6xxvf", "no", "ok"],
        ["0000:20:00.0", "0000:20:00.1", "6xxx", "dcc", "0", "6", "-", "no", "ok"],
        ["0000:20:00.0", "0000:20:00.2", "6xxx", "dcc", "0", "6", "-", "no", "ok"],
    ]
    assert lines[6] == ""
    notes = lines[7:11]
    assert [n.split(":")[0:3] for n in notes] == [
        ["0000", "19", "01.0"],
        ["0000", "20", "00.1"],
        ["0000", "20", "00.2"],
        ["0000", "28", "00.0 (420xx)"],
    ]
    assert "disable_denylist=1" in notes[0]
    assert notes[3].endswith("SR-IOV is off; enable VFs by writing a count to its sriov_numvfs")
    # The NUMA layout follows: the profile's default two-socket node, VFs counted where they sit.
    assert lines[11] == ""
    assert [line.split() for line in lines[12:]] == [
        ["NUMA", "CPUS", "MEMORY", "HUGEPAGES", "2Mi", "FREE/TOTAL", "HUGEPAGES", "1Gi", "FREE/TOTAL", "QAT", "VFS"],
        ["0", "0-15", "32Gi", "512/512", "8/8", "3"],
        ["1", "16-31", "32Gi", "512/512", "8/8", "0"],
    ]


def test_table_shows_a_profile_s_numa_layout(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    profile = {"numa_nodes": [{"cpus": "0-3,8-11", "memory": "16Gi", "hugepages": {"2Mi": 512}}]}
    root = str(make_node(profile).root)
    lines = run(capsys, "--sysfs-root", root).splitlines()
    assert [line.split() for line in lines[-1:]] == [["0", "0-3,8-11", "16Gi", "512/512", "0/0", "0"]]
    status = json.loads(run(capsys, "--sysfs-root", root, "-o", "json"))
    # JSON shows the node as the kernel does: nothing is reserved, huge page pools are not ordinary memory.
    assert status["numa"] == [{
        "id": 0, "cpus": "0-3,8-11", "reservedCpus": "", "memory": 15 << 30, "reservedMemory": 0,
        "hugepages": {"2Mi": 512, "1Gi": 0}, "hugepagesFree": {"2Mi": 512, "1Gi": 0},
        "allocated": {"vcpus": 0, "memory": 0, "hugepages": {}, "dedicatedCpus": ""},
    }]
    assert (status["freeCpus"], status["freeMemory"]) == (8, "15Gi")


def test_table_on_an_empty_node(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--sysfs-root", str(make_node({"nics": [{"vfs": 4}]}).root))
    assert out.startswith("No QAT VFs found.\n\nNUMA")


def test_extra_vf_ids(make_node: MakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(make_node({"devices": [{"vendor": "1b36", "device": "0010", "driver": "nvme"}]}).root)
    assert json.loads(run(capsys, "--sysfs-root", root, "-o", "json"))["vfs"] == []
    [vf] = json.loads(run(capsys, "--sysfs-root", root, "-o", "json", "--extra-vf-ids", "1b36:0010"))["vfs"]
    assert (vf["deviceId"], vf["generation"], vf["pfAddress"]) == ("0010", "custom", None)


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--extra-vf-ids", "1b36-0010"])
    assert exit_.value.code == 2
    assert "not a PCI ID" in capsys.readouterr().err
    assert main(["--sysfs-root", str(tmp_path)]) == 2
    assert "not a sysfs with PCI devices" in capsys.readouterr().err
