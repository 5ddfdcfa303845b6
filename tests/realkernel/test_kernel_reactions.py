"""The simulated kernel (qatvm.simulation) against the real one, write for write.

Every scenario in `kernel_reactions` runs on a VF of the guest's real kernel and on the same
VF of a simulated node laid out like the guest (an NVMe PF with two VFs on nvme, vfio-pci
loaded), with the IOMMU on and off. Any difference in an errno, a driver link, an override or
/dev/vfio is a place where tests on the simulated kernel would prove something Linux does not
do. Known differences are strict xfails, so fixing the simulation turns them into failures
that ask for the mark to go.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import kernel_reactions
import pytest
from guest_node import Node

from qatvm.node.sysfs import Sysfs
from qatvm.simulation import HardwareProfile, SimulatedSysfs, generate

pytestmark = pytest.mark.realkernel

Observations = dict[str, list[dict[str, object]]]

# Scenario name -> why the simulation reacts differently (none known at present).
KNOWN_DIFFERENCES: dict[str, str] = {}


def simulated_node(root: Path, iommu: bool) -> tuple[Sysfs, str, str]:
    """A simulated node shaped like the guest; returns its sysfs, the PF and the VF compared."""
    nvme = {"vendor": "1b36", "device": "0010", "driver": "nvme", "vfs": 2, "total_vfs": 2,
            "vf_device": "0010", "vf_driver": "nvme"}
    generate(HardwareProfile.model_validate({"iommu": iommu, "nics": [nvme]}), root / "sys")
    sysfs = SimulatedSysfs(root / "sys")
    pf = next(d for d in sysfs.listdir("bus/pci/devices") if sysfs.exists(f"bus/pci/devices/{d}/sriov_totalvfs"))
    vf = sysfs.readlink(f"bus/pci/devices/{pf}/virtfn1")
    assert vf is not None
    return sysfs, pf, vf


def real_observations(node: Node) -> Observations:
    # The second VF: the first one is the binding and libvirt tests'.
    code = (
        "import json, kernel_reactions\nfrom qatvm.node.sysfs import HostSysfs\n"
        f"print(json.dumps(kernel_reactions.observe(HostSysfs(), {node.pf!r}, {node.vfs[1]!r})))"
    )
    result: Observations = node.json(code, timeout=120)
    return result


@pytest.fixture(scope="module")
def with_iommu(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[Observations, Observations]:
    sysfs, pf, vf = simulated_node(tmp_path_factory.mktemp("sim-iommu"), iommu=True)
    return real_observations(node), kernel_reactions.observe(sysfs, pf, vf)


@pytest.fixture(scope="module")
def without_iommu(node_without_iommu: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[Observations, Observations]:
    sysfs, pf, vf = simulated_node(tmp_path_factory.mktemp("sim-noiommu"), iommu=False)
    return real_observations(node_without_iommu), kernel_reactions.observe(sysfs, pf, vf)


def scenarios() -> list[Any]:
    params = []
    for scenario in kernel_reactions.SCENARIOS:
        reason = KNOWN_DIFFERENCES.get(scenario.name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(scenario.name, marks=marks, id=scenario.name.replace(" ", "-")))
    return params


def _compare(name: str, real: Observations, simulated: Observations) -> None:
    assert simulated[name] == real[name], (
        f"simulated kernel differs from Linux in {name!r}:\n"
        f"real:      {json.dumps(real[name], indent=1)}\nsimulated: {json.dumps(simulated[name], indent=1)}"
    )


@pytest.mark.parametrize("name", scenarios())
def test_same_reaction_with_the_iommu_on(name: str, with_iommu: tuple[Observations, Observations]) -> None:
    _compare(name, *with_iommu)


@pytest.mark.parametrize("name", scenarios())
def test_same_reaction_with_the_iommu_off(name: str, without_iommu: tuple[Observations, Observations]) -> None:
    _compare(name, *without_iommu)


# Attribute -> why the simulation reads differently (none known at present).
KNOWN_READ_DIFFERENCES: dict[str, str] = {}


@pytest.fixture(scope="module")
def attribute_reads(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    code = (
        "import json, kernel_reactions\nfrom qatvm.node.sysfs import HostSysfs\n"
        f"print(json.dumps(kernel_reactions.read_attributes(HostSysfs(), {node.pf!r}, {node.vfs[1]!r})))"
    )
    real = node.json(code)
    sysfs, pf, vf = simulated_node(tmp_path_factory.mktemp("sim-reads"), iommu=True)
    return real, kernel_reactions.read_attributes(sysfs, pf, vf)


@pytest.mark.parametrize(
    "attribute",
    [
        pytest.param(a, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_READ_DIFFERENCES[a])] if a in KNOWN_READ_DIFFERENCES else [])
        for a in kernel_reactions.READ_ATTRIBUTES
    ],
)
def test_same_value_when_read(attribute: str, attribute_reads: tuple[dict[str, str], dict[str, str]]) -> None:
    real, simulated = attribute_reads
    assert simulated[attribute] == real[attribute]


def vfio_node(sysfs: Sysfs, vf: str) -> dict[str, object]:
    """Bind `vf` to vfio-pci by the anchors' recipe and describe its /dev/vfio/<group>."""
    dev = f"bus/pci/devices/{vf}"
    group = sysfs.readlink(f"{dev}/iommu_group")
    assert group is not None
    try:
        sysfs.write("bus/pci/drivers/nvme/unbind", vf)
        sysfs.write(f"{dev}/driver_override", "vfio-pci")
        sysfs.write("bus/pci/drivers/vfio-pci/bind", vf)
        info = os.stat(sysfs.dev_root / "vfio" / group)
        return {
            "char_device": stat.S_ISCHR(info.st_mode),
            "regular_file": stat.S_ISREG(info.st_mode),
            "mode": oct(stat.S_IMODE(info.st_mode)),
            "owner": info.st_uid,
        }
    finally:
        kernel_reactions.restore(sysfs, sysfs.readlink(f"{dev}/physfn") or "", vf)


def test_vfio_group_node_has_the_same_mode(node: Node, tmp_path: Path) -> None:
    """Linux's /dev/vfio/<group> is a root-owned 0600 character device; the simulation's, by
    design, a regular file with that mode (`Tree.vfio_node` says why). When it exists is
    compared by every scenario above; here, that it is root's alone to open."""
    real = node.json(
        "import json, kernel_reactions, test_kernel_reactions\nfrom qatvm.node.sysfs import HostSysfs\n"
        f"print(json.dumps(test_kernel_reactions.vfio_node(HostSysfs(), {node.vfs[1]!r})))"
    )
    sysfs, _, vf = simulated_node(tmp_path, iommu=True)
    simulated = vfio_node(sysfs, vf)
    assert real == {"char_device": True, "regular_file": False, "mode": "0o600", "owner": 0}
    # The owner is whoever generated the tree, so it is not compared.
    assert simulated == {**real, "char_device": False, "regular_file": True, "owner": simulated["owner"]}
