"""Binding VFs to vfio-pci and giving them back, on the simulated kernel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from qatvm.api.base import ObjectRef
from qatvm.node.binding import (
    BindFailedError,
    DenylistedError,
    DeviceBusyError,
    DeviceVanishedError,
    HeldByAnotherError,
    IommuOffError,
    VfBinder,
    VfioNotLoadedError,
)
from qatvm.node.sysfs import Sysfs
from qatvm.simulation import SimulatedSysfs

MakeNode = Callable[..., Sysfs]
VF = "0000:10:00.1"  # first VF of a gen4 PF
OLD_VF = "0000:11:01.0"  # first VF of a pre-gen4 PF


def driver(sysfs: Sysfs, address: str) -> str | None:
    return sysfs.readlink(f"bus/pci/devices/{address}/driver")


def override(sysfs: Sysfs, address: str) -> str:
    return sysfs.read(f"bus/pci/devices/{address}/driver_override")


def group_device(sysfs: Sysfs, address: str) -> Path:
    return sysfs.dev_root / "vfio" / str(sysfs.readlink(f"bus/pci/devices/{address}/iommu_group"))


@pytest.fixture
def gen4(make_node: MakeNode) -> Sysfs:
    return make_node({"pfs": [{"generation": "4xxx", "vfs": 2}]})


def test_bind_and_release_a_driverless_gen4_vf(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    binder.bind_to_vfio(VF)
    assert driver(gen4, VF) == "vfio-pci"
    assert override(gen4, VF) == "(null)"
    assert group_device(gen4, VF).exists()
    assert driver(gen4, "0000:10:00.2") is None  # its neighbour untouched
    binder.release(VF)
    assert driver(gen4, VF) is None
    assert override(gen4, VF) == "(null)"
    assert not group_device(gen4, VF).exists()
    assert list((tmp_path / "state").iterdir()) == []


def test_bind_and_release_are_idempotent(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    binder.bind_to_vfio(VF)
    binder.bind_to_vfio(VF)
    assert driver(gen4, VF) == "vfio-pci"
    binder.release(VF)
    binder.release(VF)
    assert driver(gen4, VF) is None


def test_release_restores_the_in_tree_vf_driver(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 2}]})
    binder = VfBinder(sysfs, tmp_path / "state")
    binder.bind_to_vfio(OLD_VF)
    assert driver(sysfs, OLD_VF) == "vfio-pci"
    binder.release(OLD_VF)
    assert driver(sysfs, OLD_VF) == "d15xxvf"
    assert override(sysfs, OLD_VF) == "(null)"


def test_release_restores_an_override_only_driver_after_a_restart(make_node: MakeNode, tmp_path: Path) -> None:
    # qat_vfio_pci binds only through driver_override: drivers_probe would never pick it again.
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 1, "vf_drivers": {0: "qat_vfio_pci"}}]})
    assert driver(sysfs, VF) == "qat_vfio_pci"
    VfBinder(sysfs, tmp_path / "state").bind_to_vfio(VF)
    assert driver(sysfs, VF) == "vfio-pci"
    # A new process, with nothing but the tree and the state directory.
    VfBinder(SimulatedSysfs(sysfs.root), tmp_path / "state").release(VF)
    assert driver(sysfs, VF) == "qat_vfio_pci"
    assert override(sysfs, VF) == "(null)"


def test_without_a_record_release_lets_the_kernel_choose(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    VfBinder(sysfs, tmp_path / "lost").bind_to_vfio(OLD_VF)
    # Even with an override a dead process left behind, which drivers_probe would obey.
    sysfs.write(f"bus/pci/devices/{OLD_VF}/driver_override", "vfio-pci")
    VfBinder(sysfs, tmp_path / "empty").release(OLD_VF)
    assert (driver(sysfs, OLD_VF), override(sysfs, OLD_VF)) == ("d15xxvf", "(null)")


def test_release_of_a_vf_never_bound_leaves_it_alone(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    VfBinder(sysfs, tmp_path / "state").release(OLD_VF)
    assert driver(sysfs, OLD_VF) == "d15xxvf"


def test_a_vf_pre_bound_by_the_admin_stays_on_vfio(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 1, "vf_drivers": {0: "vfio-pci"}}]})
    binder = VfBinder(sysfs, tmp_path / "state")
    binder.bind_to_vfio(VF)
    binder.release(VF)
    assert driver(sysfs, VF) == "vfio-pci"


def test_bind_finishes_a_bind_that_died_halfway(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    binder = VfBinder(sysfs, tmp_path / "state")
    binder.bind_to_vfio(OLD_VF)
    binder.release(OLD_VF)
    binder.bind_to_vfio(OLD_VF)
    # The process dies after unbinding from vfio-pci and setting the override to d15xxvf...
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", OLD_VF)
    sysfs.write(f"bus/pci/devices/{OLD_VF}/driver_override", "d15xxvf")
    # ...and its successor is asked to bind again, then to release.
    binder = VfBinder(SimulatedSysfs(sysfs.root), tmp_path / "state")
    binder.bind_to_vfio(OLD_VF)
    assert (driver(sysfs, OLD_VF), override(sysfs, OLD_VF)) == ("vfio-pci", "(null)")
    binder.release(OLD_VF)
    assert (driver(sysfs, OLD_VF), override(sysfs, OLD_VF)) == ("d15xxvf", "(null)")


def test_release_finishes_a_release_that_died_halfway(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    VfBinder(sysfs, tmp_path / "state").bind_to_vfio(OLD_VF)
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", OLD_VF)  # the release died here
    VfBinder(sysfs, tmp_path / "state").release(OLD_VF)
    assert driver(sysfs, OLD_VF) == "d15xxvf"


def test_iommu_off(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"iommu": False, "pfs": [{"generation": "c4xxx", "vfs": 1}]})
    with pytest.raises(IommuOffError, match="boot with intel_iommu=on"):
        VfBinder(sysfs, tmp_path / "state").bind_to_vfio(OLD_VF)
    assert driver(sysfs, OLD_VF) == "c4xxxvf"  # refused before anything moved
    assert not (tmp_path / "state").exists()


def test_vfio_pci_not_loaded(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"vfio_pci": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})
    with pytest.raises(VfioNotLoadedError, match="modprobe vfio-pci"):
        VfBinder(sysfs, tmp_path / "state").bind_to_vfio(VF)


@pytest.mark.parametrize(("gen", "vf_driver"), [("c62x", "c6xxvf"), ("c3xxx", "c3xxxvf"), ("dh895xcc", "dh895xccvf")])
def test_denylisted_parts(make_node: MakeNode, tmp_path: Path, gen: str, vf_driver: str) -> None:
    sysfs = make_node({"pfs": [{"generation": gen, "vfs": 1}]}, name="deny")
    with pytest.raises(DenylistedError, match=f"refuses {gen} devices.*disable_denylist=1"):
        VfBinder(sysfs, tmp_path / "a").bind_to_vfio(OLD_VF)
    assert driver(sysfs, OLD_VF) == vf_driver
    allowed = make_node({"disable_denylist": True, "pfs": [{"generation": gen, "vfs": 1}]}, name="allow")
    binder = VfBinder(allowed, tmp_path / "b")
    binder.bind_to_vfio(OLD_VF)
    assert driver(allowed, OLD_VF) == "vfio-pci"
    binder.release(OLD_VF)
    assert driver(allowed, OLD_VF) == vf_driver


def test_vanished_device(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    binder.bind_to_vfio(VF)
    gen4.write(f"bus/pci/devices/{VF}/remove", "1")
    binder.release(VF)  # nothing left to give back, and no record left behind
    assert list((tmp_path / "state").iterdir()) == []
    with pytest.raises(DeviceVanishedError, match="gone from sysfs"):
        binder.bind_to_vfio(VF)


def _race_after_unbind(sysfs: Sysfs, other: Callable[[], None]) -> Sysfs:
    """The same simulated node, where another actor runs `other` right after our first unbind."""
    base = type(sysfs)

    class Racing(base):  # type: ignore[valid-type, misc]
        fired = False

        def write(self, rel: str, value: str) -> None:
            super().write(rel, value)
            if rel.endswith("/unbind") and not self.fired:
                self.fired = True
                other()

    return Racing(sysfs.root)


def test_another_driver_grabbing_the_vf_is_busy_and_rolled_back(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    racing = _race_after_unbind(sysfs, lambda: sysfs.write("bus/pci/drivers_probe", OLD_VF))
    with pytest.raises(DeviceBusyError, match=r"another driver \(d15xxvf\)"):
        VfBinder(racing, tmp_path / "state").bind_to_vfio(OLD_VF)
    assert (driver(sysfs, OLD_VF), override(sysfs, OLD_VF)) == ("d15xxvf", "(null)")
    assert list((tmp_path / "state").iterdir()) == []


def test_a_vf_vanishing_mid_bind(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "d15xx", "vfs": 1}]})
    racing = _race_after_unbind(sysfs, lambda: sysfs.write(f"bus/pci/devices/{OLD_VF}/remove", "1"))
    with pytest.raises(DeviceVanishedError):
        VfBinder(racing, tmp_path / "state").bind_to_vfio(OLD_VF)
    assert list((tmp_path / "state").iterdir()) == []


def test_a_previous_driver_unloaded_meanwhile_is_named(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 1, "vf_drivers": {0: "qat_vfio_pci"}}]})
    binder = VfBinder(sysfs, tmp_path / "state")
    binder.bind_to_vfio(VF)
    (sysfs.root / "bus/pci/drivers/qat_vfio_pci").rename(sysfs.root / "bus/pci/drivers/.unloaded")
    with pytest.raises(BindFailedError, match="modprobe qat_vfio_pci"):
        binder.release(VF)


def test_concurrent_binds_on_one_node(make_node: MakeNode, tmp_path: Path) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 8}]})
    vfs = [sysfs.readlink(f"bus/pci/devices/0000:10:00.0/virtfn{i}") for i in range(8)]
    errors: list[BaseException] = []

    def bind(address: str) -> None:
        try:
            VfBinder(SimulatedSysfs(sysfs.root), tmp_path / "state").bind_to_vfio(address)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=bind, args=(vf,)) for vf in vfs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [driver(sysfs, str(vf)) for vf in vfs] == ["vfio-pci"] * 8
    assert sorted(n for n in sysfs.listdir("bus/pci/drivers/vfio-pci") if n.startswith("0000:")) == vfs


def test_the_record_names_the_owner_and_only_its_uid_releases_the_vf(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    owner = ObjectRef(namespace="team-a", name="web", uid="0a1b-owner")
    binder.bind_to_vfio(VF, owner)
    assert [(r.address, r.owner) for r in binder.records()] == [(VF, owner)]
    assert binder.held_by(owner.uid) == [VF] and binder.held_by("another-uid") == []

    binder.release(VF, "another-uid")  # a VM that merely names this VF in its status
    assert driver(gen4, VF) == "vfio-pci"
    binder.release(VF, owner.uid)
    assert driver(gen4, VF) is None
    assert binder.records() == []


def test_a_vf_recorded_for_one_vm_is_refused_to_another_before_any_write(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    owner = ObjectRef(namespace="team-a", name="web", uid="0a1b-owner")
    other = ObjectRef(namespace="team-b", name="thief", uid="9f8e-other")
    binder.bind_to_vfio(VF, owner)
    with pytest.raises(HeldByAnotherError, match="still held by VM team-a/web \\(uid 0a1b-owner\\)"):
        binder.bind_to_vfio(VF, other)
    assert [r.owner for r in binder.records()] == [owner]
    binder.bind_to_vfio(VF, owner)  # its own owner again: nothing changes
    assert driver(gen4, VF) == "vfio-pci"


def test_a_record_without_an_owner_is_adopted_by_the_next_bind(gen4: Sysfs, tmp_path: Path) -> None:
    binder = VfBinder(gen4, tmp_path / "state")
    binder.bind_to_vfio(VF)  # as a tool, or an agent before owners were recorded
    owner = ObjectRef(namespace="team-a", name="web", uid="0a1b-owner")
    binder.bind_to_vfio(VF, owner)
    [record] = binder.records()
    assert (record.owner, record.previous_driver) == (owner, None)
