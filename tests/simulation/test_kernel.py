"""The simulated kernel reacts to sysfs writes, and fails, the way Linux does."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable

import pytest

from qatvm.node.sysfs import Sysfs
from qatvm.simulation import SimulatedSysfs

MakeNode = Callable[..., Sysfs]
PF = "0000:10:00.0"  # first gen4 PF of a profile
VF = "0000:10:00.1"
OLD_PF = "0000:11:00.0"  # first pre-gen4 PF (behind its root port)
OLD_VF = "0000:11:01.0"


def dev(address: str, attr: str = "") -> str:
    return f"bus/pci/devices/{address}" + (f"/{attr}" if attr else "")


def errno_of(sysfs: Sysfs, rel: str, value: str) -> int:
    with pytest.raises(OSError) as err:
        sysfs.write(rel, value)
    assert err.value.errno is not None
    return err.value.errno


def driver_links(sysfs: Sysfs, driver: str) -> list[str]:
    return [n for n in sysfs.listdir(f"bus/pci/drivers/{driver}") if n.startswith("0000:")]


@pytest.fixture
def gen4(make_node: MakeNode) -> Sysfs:
    return make_node({"pfs": [{"generation": "4xxx", "vfs": 4}]}, name="gen4")


@pytest.fixture
def d15xx(make_node: MakeNode) -> Sysfs:
    return make_node({"pfs": [{"generation": "d15xx", "vfs": 2}]}, name="d15xx")


def test_unbind_moves_both_links(d15xx: Sysfs) -> None:
    assert driver_links(d15xx, "d15xxvf") == [OLD_VF, "0000:11:01.1"]
    d15xx.write("bus/pci/drivers/d15xxvf/unbind", OLD_VF)
    assert d15xx.readlink(dev(OLD_VF, "driver")) is None
    assert driver_links(d15xx, "d15xxvf") == ["0000:11:01.1"]


def test_unbind_through_the_device_driver_link(d15xx: Sysfs) -> None:
    d15xx.write(dev(OLD_VF, "driver/unbind"), OLD_VF)
    assert d15xx.readlink(dev(OLD_VF, "driver")) is None


def test_unbind_from_a_driver_that_does_not_hold_it_is_enodev(d15xx: Sysfs) -> None:
    assert errno_of(d15xx, "bus/pci/drivers/vfio-pci/unbind", OLD_VF) == errno.ENODEV
    assert errno_of(d15xx, "bus/pci/drivers/d15xxvf/unbind", "0000:99:00.0") == errno.ENODEV
    assert d15xx.readlink(dev(OLD_VF, "driver")) == "d15xxvf"


def test_bind_to_a_bound_device_is_ebusy(d15xx: Sysfs) -> None:
    d15xx.write(dev(OLD_VF, "driver_override"), "d15xxvf")
    assert errno_of(d15xx, "bus/pci/drivers/d15xxvf/bind", OLD_VF) == errno.EBUSY


def test_bind_needs_a_match(gen4: Sysfs) -> None:
    # vfio-pci has no ID table: without driver_override or new_id it matches nothing.
    assert errno_of(gen4, "bus/pci/drivers/vfio-pci/bind", VF) == errno.ENODEV
    assert errno_of(gen4, "bus/pci/drivers/vfio-pci/bind", "0000:99:00.0") == errno.ENODEV
    gen4.write(dev(VF, "driver_override"), "vfio-pci")
    gen4.write("bus/pci/drivers/vfio-pci/bind", VF)
    assert gen4.readlink(dev(VF, "driver")) == "vfio-pci"
    assert (gen4.dev_root / "vfio" / gen4.readlink(dev(VF, "iommu_group"))).exists()


def test_driver_override_reads_null_and_clears_with_a_newline(gen4: Sysfs) -> None:
    rel = dev(VF, "driver_override")
    assert gen4.read(rel) == "(null)"
    gen4.write(rel, "vfio-pci\n")
    assert gen4.read(rel) == "vfio-pci"
    gen4.write(rel, "\n")
    assert gen4.read(rel) == "(null)"
    assert errno_of(gen4, rel, "x" * 5000) == errno.EINVAL


def test_driver_override_length_limit_and_nul(gen4: Sysfs) -> None:
    rel = dev(VF, "driver_override")
    # PAGE_SIZE - 1 bytes and up are refused, the newline included.
    assert errno_of(gen4, rel, "x" * 4095) == errno.EINVAL
    assert errno_of(gen4, rel, "x" * 4094 + "\n") == errno.EINVAL
    gen4.write(rel, "x" * 4094)
    assert gen4.read(rel) == "x" * 4094
    gen4.write(rel, "vfio-pci\0junk")  # the kernel stops at the NUL
    assert gen4.read(rel) == "vfio-pci"
    gen4.write(rel, "\0")
    assert gen4.read(rel) == "(null)"


def test_zero_length_write_reaches_no_store_method(gen4: Sysfs) -> None:
    rel = dev(VF, "driver_override")
    gen4.write(rel, "vfio-pci")
    gen4.write(rel, "")
    assert gen4.read(rel) == "vfio-pci"
    gen4.write(dev(PF, "sriov_numvfs"), "")  # not even parsed
    assert gen4.read(dev(PF, "sriov_numvfs")) == "4"
    # Opening is still checked.
    assert errno_of(gen4, dev(VF, "vendor"), "") == errno.EACCES
    assert errno_of(gen4, dev(VF, "no_such_attr"), "") == errno.ENOENT


def test_override_excludes_every_other_driver(d15xx: Sysfs) -> None:
    d15xx.write("bus/pci/drivers/d15xxvf/unbind", OLD_VF)
    d15xx.write(dev(OLD_VF, "driver_override"), "vfio-pci")
    assert errno_of(d15xx, "bus/pci/drivers/d15xxvf/bind", OLD_VF) == errno.ENODEV
    d15xx.write("bus/pci/drivers_probe", OLD_VF)
    assert d15xx.readlink(dev(OLD_VF, "driver")) == "vfio-pci"


def test_drivers_probe_picks_the_id_table_driver_or_nothing(d15xx: Sysfs, gen4: Sysfs) -> None:
    d15xx.write("bus/pci/drivers/d15xxvf/unbind", OLD_VF)
    d15xx.write("bus/pci/drivers_probe", OLD_VF)
    assert d15xx.readlink(dev(OLD_VF, "driver")) == "d15xxvf"
    d15xx.write("bus/pci/drivers_probe", OLD_VF)  # bound already: nothing happens
    assert d15xx.readlink(dev(OLD_VF, "driver")) == "d15xxvf"
    gen4.write("bus/pci/drivers_probe", VF)  # no in-tree driver for 4xxx VFs
    assert gen4.readlink(dev(VF, "driver")) is None
    assert errno_of(gen4, "bus/pci/drivers_probe", "0000:99:00.0") == errno.ENODEV


def test_vfio_pci_refuses_denylisted_parts(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "c62x", "vfs": 1}]})
    sysfs.write("bus/pci/drivers/c6xxvf/unbind", OLD_VF)
    sysfs.write(dev(OLD_VF, "driver_override"), "vfio-pci")
    assert errno_of(sysfs, "bus/pci/drivers/vfio-pci/bind", OLD_VF) == errno.EINVAL
    # drivers_probe swallows the probe error: the write succeeds, the device stays unbound.
    sysfs.write("bus/pci/drivers_probe", OLD_VF)
    assert sysfs.readlink(dev(OLD_VF, "driver")) is None


def test_disable_denylist_lets_vfio_pci_take_them(make_node: MakeNode) -> None:
    sysfs = make_node({"disable_denylist": True, "pfs": [{"generation": "dh895xcc", "vfs": 1}]})
    sysfs.write("bus/pci/drivers/dh895xccvf/unbind", OLD_VF)
    sysfs.write(dev(OLD_VF, "driver_override"), "vfio-pci")
    sysfs.write("bus/pci/drivers/vfio-pci/bind", OLD_VF)
    assert sysfs.readlink(dev(OLD_VF, "driver")) == "vfio-pci"


def test_dh895xcc_0442_is_not_on_the_denylist(make_node: MakeNode) -> None:
    sysfs = make_node({"devices": [{"device": "0442"}]})
    address = "0000:11:00.0"
    sysfs.write(dev(address, "driver_override"), "vfio-pci")
    sysfs.write("bus/pci/drivers/vfio-pci/bind", address)
    assert sysfs.readlink(dev(address, "driver")) == "vfio-pci"


def test_vfio_pci_without_an_iommu_group_is_einval(make_node: MakeNode) -> None:
    sysfs = make_node({"iommu": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})
    sysfs.write(dev(VF, "driver_override"), "vfio-pci")
    assert errno_of(sysfs, "bus/pci/drivers/vfio-pci/bind", VF) == errno.EINVAL
    assert sysfs.readlink(dev(VF, "driver")) is None


def test_vfio_pci_not_loaded_has_no_bind_file(make_node: MakeNode) -> None:
    sysfs = make_node({"vfio_pci": False, "pfs": [{"generation": "4xxx", "vfs": 1}]})
    assert errno_of(sysfs, "bus/pci/drivers/vfio-pci/bind", VF) == errno.ENOENT


def test_group_device_stays_while_any_member_is_on_vfio(make_node: MakeNode) -> None:
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 2, "shared_iommu_group": True}]})
    group = sysfs.readlink(dev(VF, "iommu_group"))
    for vf in (VF, "0000:10:00.2"):
        sysfs.write(dev(vf, "driver_override"), "vfio-pci")
        sysfs.write("bus/pci/drivers/vfio-pci/bind", vf)
    node = sysfs.dev_root / "vfio" / str(group)
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", VF)
    assert node.exists()
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", "0000:10:00.2")
    assert not node.exists()


def test_sriov_numvfs_rules(gen4: Sysfs) -> None:
    numvfs = dev(PF, "sriov_numvfs")
    assert errno_of(gen4, numvfs, "6") == errno.EBUSY  # must go through 0
    assert errno_of(gen4, numvfs, "17") == errno.ERANGE
    assert errno_of(gen4, numvfs, "many") == errno.EINVAL
    gen4.write(numvfs, "4")  # unchanged: accepted, nothing happens
    assert gen4.read(numvfs) == "4"


def test_disabling_sriov_removes_vfs_with_their_drivers_and_groups(gen4: Sysfs) -> None:
    gen4.write(dev(VF, "driver_override"), "vfio-pci")
    gen4.write("bus/pci/drivers/vfio-pci/bind", VF)
    group = gen4.readlink(dev(VF, "iommu_group"))
    gen4.write(dev(PF, "sriov_numvfs"), "0")
    assert gen4.listdir("bus/pci/devices") == [PF]
    assert not [n for n in gen4.listdir(dev(PF)) if n.startswith("virtfn")]
    assert driver_links(gen4, "vfio-pci") == []
    assert not gen4.exists(f"kernel/iommu_groups/{group}")
    assert not (gen4.dev_root / "vfio" / str(group)).exists()
    assert os.listdir(gen4.root / "devices" / "pci0000:10") == [PF]


def test_enabling_sriov_creates_probed_vfs(d15xx: Sysfs) -> None:
    d15xx.write(dev(OLD_PF, "sriov_numvfs"), "0")
    d15xx.write(dev(OLD_PF, "sriov_numvfs"), "3")
    vfs = [d15xx.readlink(dev(OLD_PF, f"virtfn{i}")) for i in range(3)]
    assert vfs == ["0000:11:01.0", "0000:11:01.1", "0000:11:01.2"]
    for vf in vfs:
        assert d15xx.readlink(dev(vf, "physfn")) == OLD_PF
        assert d15xx.readlink(dev(vf, "driver")) == "d15xxvf"
        assert d15xx.read(dev(vf, "numa_node")) == d15xx.read(dev(OLD_PF, "numa_node"))
        group = d15xx.readlink(dev(vf, "iommu_group"))
        assert d15xx.listdir(f"kernel/iommu_groups/{group}/devices") == [vf]


def test_sriov_drivers_autoprobe_off_leaves_new_vfs_unbound(d15xx: Sysfs) -> None:
    d15xx.write(dev(OLD_PF, "sriov_numvfs"), "0")
    d15xx.write(dev(OLD_PF, "sriov_drivers_autoprobe"), "0")
    d15xx.write(dev(OLD_PF, "sriov_numvfs"), "1")
    assert d15xx.readlink(dev(OLD_VF, "driver")) is None


def test_sriov_needs_the_pf_driver(gen4: Sysfs) -> None:
    gen4.write("bus/pci/drivers/4xxx/unbind", PF)
    # The QAT driver's remove() disables SR-IOV and takes its qat/ attributes and debugfs along.
    assert gen4.read(dev(PF, "sriov_numvfs")) == "0"
    assert not gen4.exists(dev(PF, "qat"))
    assert not gen4.exists(f"kernel/debug/qat_4xxx_{PF}")
    assert errno_of(gen4, dev(PF, "sriov_numvfs"), "2") == errno.ENOENT
    gen4.write("bus/pci/drivers_probe", PF)
    assert gen4.read(dev(PF, "qat/state")) == "up"
    assert gen4.read(f"kernel/debug/qat_4xxx_{PF}/heartbeat/status") == "0"
    gen4.write(dev(PF, "sriov_numvfs"), "2")
    assert gen4.read(dev(VF, "device")) == "0x4941"


def test_remove_makes_a_vf_vanish(gen4: Sysfs) -> None:
    group = gen4.readlink(dev(VF, "iommu_group"))
    gen4.write(dev(VF, "remove"), "1")
    assert not gen4.exists(dev(VF))
    assert not gen4.exists(f"kernel/iommu_groups/{group}")
    assert "0000:10:00.1" not in [gen4.readlink(dev(PF, n)) for n in gen4.listdir(dev(PF)) if n.startswith("virtfn")]
    assert errno_of(gen4, "bus/pci/drivers_probe", VF) == errno.ENODEV
    assert errno_of(gen4, dev(VF, "driver_override"), "vfio-pci") == errno.ENOENT


def test_removing_a_pf_removes_its_vfs(gen4: Sysfs) -> None:
    gen4.write(dev(PF, "remove"), "1")
    assert gen4.listdir("bus/pci/devices") == []
    assert driver_links(gen4, "4xxx") == []


def test_qat_services_change_only_while_down(gen4: Sysfs) -> None:
    state, services = dev(PF, "qat/state"), dev(PF, "qat/cfg_services")
    assert errno_of(gen4, services, "dc") == errno.EINVAL
    assert errno_of(gen4, state, "up") == errno.EINVAL  # already up
    assert errno_of(gen4, state, "sideways") == errno.EINVAL
    gen4.write(state, "down")
    assert errno_of(gen4, services, "decomp") == errno.EINVAL  # 6xxx only
    assert errno_of(gen4, services, "sym;sym") == errno.EINVAL
    gen4.write(services, "asym;dc")
    gen4.write(state, "up")
    assert (gen4.read(state), gen4.read(services)) == ("up", "asym;dc")


def test_read_only_and_missing_attributes(gen4: Sysfs) -> None:
    assert errno_of(gen4, dev(VF, "vendor"), "0x1234") == errno.EACCES
    assert errno_of(gen4, f"kernel/debug/qat_4xxx_{PF}/heartbeat/status", "0") == errno.EACCES
    assert errno_of(gen4, dev(VF, "sriov_numvfs"), "1") == errno.ENOENT
    assert errno_of(gen4, dev(VF, "no_such_attr"), "1") == errno.ENOENT
    assert gen4.read(dev(VF, "vendor")) == "0x8086"


@pytest.mark.parametrize(
    "rel", ["bus/pci/drivers_probe", "bus/pci/drivers/vfio-pci/bind", "bus/pci/drivers/4xxx/new_id", dev(PF, "remove")]
)
def test_write_only_attributes_refuse_reads_even_to_root(gen4: Sysfs, rel: str) -> None:
    with pytest.raises(OSError) as err:
        gen4.read(rel)
    assert err.value.errno == errno.EACCES


def test_sriov_vf_device_is_unpadded_but_the_vf_device_is_not(make_node: MakeNode) -> None:
    nic = {"vendor": "1b36", "device": "0010", "driver": "nvme", "vfs": 1, "vf_device": "0010", "vf_driver": "nvme"}
    sysfs = make_node({"nics": [nic]})
    pf = next(d for d in sysfs.listdir("bus/pci/devices") if sysfs.exists(dev(d, "sriov_vf_device")))
    assert sysfs.read(dev(pf, "sriov_vf_device")) == "10"
    assert sysfs.read(dev(str(sysfs.readlink(dev(pf, "virtfn0"))), "device")) == "0x0010"


def test_vfio_nodes_have_the_kernel_modes(gen4: Sysfs) -> None:
    gen4.write(dev(VF, "driver_override"), "vfio-pci")
    gen4.write("bus/pci/drivers/vfio-pci/bind", VF)
    group = gen4.dev_root / "vfio" / str(gen4.readlink(dev(VF, "iommu_group")))
    assert stat.S_IMODE(group.stat().st_mode) == 0o600
    assert stat.S_IMODE((gen4.dev_root / "vfio" / "vfio").stat().st_mode) == 0o666


def test_heartbeat_error_injection(gen4: Sysfs) -> None:
    gen4.write(f"kernel/debug/qat_4xxx_{PF}/heartbeat/inject_error", "1")
    assert gen4.read(f"kernel/debug/qat_4xxx_{PF}/heartbeat/status") == "-1"


def test_new_id_binds_matching_devices_and_survives_a_restart(gen4: Sysfs) -> None:
    gen4.write("bus/pci/drivers/vfio-pci/new_id", "8086 4941")
    assert driver_links(gen4, "vfio-pci") == ["0000:10:00.1", "0000:10:00.2", "0000:10:00.3", "0000:10:00.4"]
    assert errno_of(gen4, "bus/pci/drivers/vfio-pci/new_id", "8086 4941") == errno.EEXIST
    # A new process opening the same tree finds the dynamic ID still there.
    again = SimulatedSysfs(gen4.root)
    again.write("bus/pci/drivers/vfio-pci/unbind", VF)
    again.write("bus/pci/drivers_probe", VF)
    assert again.readlink(dev(VF, "driver")) == "vfio-pci"
    again.write("bus/pci/drivers/vfio-pci/remove_id", "8086 4941")
    assert errno_of(again, "bus/pci/drivers/vfio-pci/remove_id", "8086 4941") == errno.ENODEV
    again.write("bus/pci/drivers/vfio-pci/unbind", VF)
    again.write("bus/pci/drivers_probe", VF)
    assert again.readlink(dev(VF, "driver")) is None


def test_concurrent_writers_are_serialised(make_node: MakeNode) -> None:
    # Without the kernel's lock, two PFs enabling SR-IOV at once would hand out one IOMMU
    # group number twice.
    sysfs = make_node({"pfs": [{"generation": "4xxx", "vfs": 0}] * 6}, name="many")
    pfs = sysfs.listdir("bus/pci/devices")
    threads = [
        threading.Thread(target=SimulatedSysfs(sysfs.root).write, args=(dev(pf, "sriov_numvfs"), "16")) for pf in pfs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vfs = [a for a in sysfs.listdir("bus/pci/devices") if a not in pfs]
    assert len(vfs) == 6 * 16
    groups = [sysfs.readlink(dev(vf, "iommu_group")) for vf in vfs]
    assert len(set(groups)) == len(vfs)
    for group in set(groups):
        assert len(sysfs.listdir(f"kernel/iommu_groups/{group}/devices")) == 1
