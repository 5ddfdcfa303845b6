"""VmReconciler on a simulated node: real sysfs tree, real qemu-img, libvirt's test driver on a file.

Each test builds a node the way the local cluster does (`host_root/sys`, `host_root/var/lib/qatvm`,
`host_root/hypervisor.xml`) and VMs carrying the allocation the controller would have written.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from qatvm.agent.reconciler import AllocationMissing, ForeignDeviceError
from qatvm.api.vm import AllocatedDevice, Phase, QatVirtualMachine
from qatvm.domain.builder import build_domain
from qatvm.domain.disks import image_info
from qatvm.domain.naming import domain_name, domain_uuid
from qatvm.hypervisor import DomainState, Hypervisor
from qatvm.node.binding import BindingError, DenylistedError, HeldByAnotherError, IommuOffError
from simnode import BASE, C62X_A, C62X_B, GEN4_A, GEN4_B, GEN4_C, NODE, Node


def hostdev_bdfs(hypervisor: Hypervisor, name: str) -> list[str]:
    return [h.source.address.bdf for h in hypervisor.domain(name).devices.hostdevs]


def iso_file(path: Path, name: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue().decode()
    finally:
        iso.close()


# --- apply ------------------------------------------------------------------------------------


def test_apply_binds_every_vf_builds_the_disks_and_runs_the_domain(node: Node) -> None:
    agent = node.agent()
    assert node.driver(GEN4_A) is None and node.driver(C62X_A) == "c6xxvf"
    vm = node.vm("web", [GEN4_A, C62X_A], user_data="#cloud-config\nhostname: web\n")
    name = domain_name("team-a", "web")

    outcome = agent.apply(vm)

    assert node.driver(GEN4_A) == "vfio-pci"
    assert node.driver(C62X_A) == "vfio-pci"
    # The neighbours nobody asked for are untouched.
    assert node.driver(GEN4_B) is None and node.driver(C62X_B) == "c6xxvf"
    assert (node.root / "dev/vfio" / str(node.vfs[GEN4_A].iommu_group)).exists()

    files = node.config.state_dir / "vms" / vm.ref.uid
    overlay = image_info(files / "overlay.qcow2")
    assert overlay.format == "qcow2"
    assert overlay.backing_filename == str(node.root / BASE.lstrip("/"))
    assert iso_file(files / "cidata.iso", "user-data") == "#cloud-config\nhostname: web\n"
    assert f"instance-id: {vm.ref.uid}" in iso_file(files / "cidata.iso", "meta-data")

    hypervisor = agent.hypervisor
    assert hypervisor.state(name) is DomainState.RUNNING
    assert hostdev_bdfs(hypervisor, name) == [GEN4_A, C62X_A]
    sources = {d.source.file for d in hypervisor.domain(name).devices.disks}
    assert sources == {str(files / "overlay.qcow2"), str(files / "cidata.iso")}
    [owned] = hypervisor.owned_domains()
    assert (owned.name, owned.uuid, owned.owner.uid) == (name, domain_uuid(vm.ref.uid), vm.ref.uid)

    assert outcome.phase is Phase.RUNNING
    assert outcome.domain.name == name
    assert outcome.domain.uuid == str(domain_uuid(vm.ref.uid))
    assert outcome.domain.state == DomainState.RUNNING.value
    assert GEN4_A in outcome.message and C62X_A in outcome.message


def test_apply_without_user_data_writes_no_seed(node: Node) -> None:
    agent = node.agent()
    vm = node.vm("plain", [GEN4_A])
    name = domain_name("team-a", "plain")
    assert agent.apply(vm).phase is Phase.RUNNING
    files = node.config.state_dir / "vms" / vm.ref.uid
    assert (files / "overlay.qcow2").exists()
    assert not (files / "cidata.iso").exists()
    assert [d.source.file for d in agent.hypervisor.domain(name).devices.disks] == [str(files / "overlay.qcow2")]


def test_running_false_defines_a_stopped_domain_and_keeps_the_vfs_on_vfio(node: Node) -> None:
    agent = node.agent()
    name = domain_name("team-a", "web")
    vm = node.vm("web", [GEN4_A, GEN4_B])

    assert agent.apply(vm).phase is Phase.RUNNING
    stopped = agent.apply(node.vm("web", [GEN4_A, GEN4_B], running=False, uid=vm.ref.uid))

    assert stopped.phase is Phase.STOPPED
    assert stopped.domain.state == DomainState.SHUTOFF.value
    assert agent.hypervisor.state(name) is DomainState.SHUTOFF
    assert hostdev_bdfs(agent.hypervisor, name) == [GEN4_A, GEN4_B]
    assert node.driver(GEN4_A) == node.driver(GEN4_B) == "vfio-pci"

    # And back on.
    assert agent.apply(vm).phase is Phase.RUNNING
    assert agent.hypervisor.state(name) is DomainState.RUNNING


def test_a_vm_created_stopped_is_defined_but_never_started(node: Node) -> None:
    agent = node.agent()
    outcome = agent.apply(node.vm("cold", [C62X_A], running=False))
    assert outcome.phase is Phase.STOPPED
    assert agent.hypervisor.state(domain_name("team-a", "cold")) is DomainState.SHUTOFF
    assert node.driver(C62X_A) == "vfio-pci"


def test_apply_twice_changes_nothing(node: Node) -> None:
    agent = node.agent()
    name = domain_name("team-a", "web")
    vm = node.vm("web", [GEN4_A, C62X_A], user_data="#cloud-config\n")
    first = agent.apply(vm)
    domain_id = agent.hypervisor.domain(name).id
    overlay = node.config.state_dir / "vms" / vm.ref.uid / "overlay.qcow2"
    overlay_inode = overlay.stat().st_ino

    second = agent.apply(vm)

    assert second == first
    # Not restarted (a restart gives the test driver's domain a new id), disk not recreated.
    assert agent.hypervisor.domain(name).id == domain_id
    assert overlay.stat().st_ino == overlay_inode
    assert [d.name for d in agent.hypervisor.owned_domains()] == [name]
    assert node.driver(GEN4_A) == node.driver(C62X_A) == "vfio-pci"


def test_a_restarted_agent_adopts_the_running_domain(node: Node) -> None:
    name = domain_name("team-a", "web")
    vm = node.vm("web", [GEN4_A, C62X_A])
    first = node.agent().apply(vm)
    overlay = node.config.state_dir / "vms" / vm.ref.uid / "overlay.qcow2"
    overlay_inode = overlay.stat().st_ino

    restarted = node.agent()  # closes the first connection: a new process on the same node
    assert restarted.hypervisor.state(name) is DomainState.RUNNING
    domain_id = restarted.hypervisor.domain(name).id
    again = restarted.apply(vm)

    assert again.phase is Phase.RUNNING
    assert again.domain.uuid == first.domain.uuid
    assert restarted.hypervisor.domain(name).id == domain_id  # left running, not destroyed and restarted
    assert overlay.stat().st_ino == overlay_inode  # the guest's disk kept
    assert [(d.name, str(d.uuid)) for d in restarted.hypervisor.owned_domains()] == [(name, first.domain.uuid)]
    assert hostdev_bdfs(restarted.hypervisor, name) == [GEN4_A, C62X_A]
    # The binding records survived too, so a later remove still knows c6xxvf was the driver.
    assert restarted.binder.held() == sorted([GEN4_A, C62X_A])
    restarted.remove(vm.ref.uid)
    assert node.driver(C62X_A) == "c6xxvf" and node.driver(GEN4_A) is None


def test_an_agent_killed_between_define_and_start_finishes_on_restart(node: Node) -> None:
    vm = node.vm("web", [GEN4_A, C62X_A], user_data="#cloud-config\n")
    name = domain_name("team-a", "web")
    dying = node.agent()
    # What the killed agent had done: both VFs bound, a half-written overlay, the domain defined.
    dying.binder.bind_to_vfio(GEN4_A)
    dying.binder.bind_to_vfio(C62X_A)
    files = node.config.state_dir / "vms" / vm.ref.uid
    files.mkdir(parents=True)
    (files / "overlay.qcow2.partial").write_bytes(b"half a qcow2 header")
    dying.hypervisor.define(build_domain(dying.domain_spec(vm)))
    assert dying.hypervisor.state(name) is DomainState.SHUTOFF

    restarted = node.agent()
    outcome = restarted.apply(vm)

    assert outcome.phase is Phase.RUNNING
    assert restarted.hypervisor.state(name) is DomainState.RUNNING
    assert image_info(files / "overlay.qcow2").backing_filename == str(node.root / BASE.lstrip("/"))
    assert not (files / "overlay.qcow2.partial").exists()
    assert hostdev_bdfs(restarted.hypervisor, name) == [GEN4_A, C62X_A]
    # The binding records still name the drivers from before the first bind.
    restarted.remove(vm.ref.uid)
    assert node.driver(GEN4_A) is None and node.driver(C62X_A) == "c6xxvf"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"node": None}, id="no-node"),
        pytest.param({"node": "node-2"}, id="other-node"),
        pytest.param({"addresses": []}, id="no-devices"),
    ],
)
def test_apply_without_an_allocation_on_this_node_touches_nothing(node: Node, change: dict[str, Any]) -> None:
    agent = node.agent()
    args: dict[str, Any] = {"addresses": [GEN4_A], "node": NODE, **change}
    vm = node.vm("early", args.pop("addresses"), **args)
    with pytest.raises(AllocationMissing):
        agent.apply(vm)
    assert node.driver(GEN4_A) is None
    assert agent.hypervisor.owned_domains() == []
    assert agent.binder.held() == []
    assert not (node.config.state_dir / "vms").exists()


def test_a_binding_failure_raises_it_and_defines_no_domain(make_node: Callable[..., Node]) -> None:
    node = make_node({"iommu": False, "pfs": [{"generation": "4xxx", "vfs": 2}]})
    agent = node.agent()
    vm = node.vm("web", [GEN4_A, GEN4_B])
    with pytest.raises(IommuOffError, match="intel_iommu=on"):
        agent.apply(vm)
    assert agent.hypervisor.state(domain_name("team-a", "web")) is None
    assert agent.hypervisor.owned_domains() == []
    assert node.driver(GEN4_A) is None and node.driver(GEN4_B) is None
    assert agent.binder.held() == []


def test_a_failure_on_the_second_vf_leaves_nothing_remove_cannot_undo(make_node: Callable[..., Node]) -> None:
    # c62x VFs are denylisted by vfio-pci without disable_denylist: the first VF binds, the second cannot.
    node = make_node({"pfs": [{"generation": "4xxx", "vfs": 1}, {"generation": "c62x", "vfs": 1}]})
    agent = node.agent()
    vm = node.vm("web", [GEN4_A, C62X_A])
    with pytest.raises(DenylistedError) as failure:
        agent.apply(vm)
    assert isinstance(failure.value, BindingError) and failure.value.address == C62X_A
    assert agent.hypervisor.owned_domains() == []
    assert node.driver(C62X_A) == "c6xxvf"
    # The first VF is on vfio-pci, but recorded and held by this VM: deleting the VM gives it back.
    assert agent.binder.held() == [GEN4_A]
    agent.remove(vm.ref.uid)
    assert node.driver(GEN4_A) is None and node.driver(C62X_A) == "c6xxvf"
    assert agent.binder.held() == []


# --- remove -----------------------------------------------------------------------------------


def test_remove_destroys_undefines_gives_vfs_back_and_deletes_files(node: Node) -> None:
    agent = node.agent()
    name = domain_name("team-a", "web")
    vm = node.vm("web", [GEN4_A, C62X_A], user_data="#cloud-config\n")
    other = node.vm("db", [GEN4_B])
    agent.apply(vm)
    agent.apply(other)

    agent.remove(vm.ref.uid)

    assert agent.hypervisor.state(name) is None
    assert node.driver(GEN4_A) is None  # gen4 VFs had no driver
    assert node.driver(C62X_A) == "c6xxvf"  # c62x back on its in-tree driver
    assert not (node.root / "dev/vfio" / str(node.vfs[GEN4_A].iommu_group)).exists()
    assert not (node.config.state_dir / "vms" / vm.ref.uid).exists()
    assert agent.binder.held() == [GEN4_B]
    # The other VM is untouched.
    assert agent.hypervisor.state(domain_name("team-a", "db")) is DomainState.RUNNING
    assert node.driver(GEN4_B) == "vfio-pci"

    agent.remove(vm.ref.uid)  # again: nothing left, no error
    assert agent.hypervisor.state(name) is None
    assert node.driver(C62X_A) == "c6xxvf"

    # A restarted agent sees the removal too (it was persisted, not only in this connection).
    restarted = node.agent()
    assert [d.name for d in restarted.hypervisor.owned_domains()] == [domain_name("team-a", "db")]
    restarted.remove(vm.ref.uid)


def test_remove_of_a_stopped_vm_and_of_one_never_applied(node: Node) -> None:
    agent = node.agent()
    stopped = node.vm("cold", [GEN4_A], running=False)
    agent.apply(stopped)
    agent.remove(stopped.ref.uid)
    assert agent.hypervisor.state(domain_name("team-a", "cold")) is None
    assert node.driver(GEN4_A) is None

    never = node.vm("never", [C62X_A])
    agent.remove(never.ref.uid)
    assert node.driver(C62X_A) == "c6xxvf"  # not ours: left where it was


# --- ownership by UID -------------------------------------------------------------------------


def test_binding_records_name_the_vm_and_removal_gives_back_only_its_own(node: Node) -> None:
    agent = node.agent()
    web = node.vm("web", [GEN4_A, C62X_A])
    db = node.vm("db", [GEN4_B], namespace="team-b")
    agent.apply(web)
    agent.apply(db)
    owners = {r.address: r.owner for r in agent.binder.records()}
    assert owners == {GEN4_A: web.ref, C62X_A: web.ref, GEN4_B: db.ref}

    # A VM whose status names another VM's VF (a relabel, a forged status) removes nothing of it.
    forged = node.vm("forged", [GEN4_B], namespace="team-c")
    assert agent.remove(forged.ref.uid) == []
    assert node.driver(GEN4_B) == "vfio-pci"
    assert agent.hypervisor.state(domain_name("team-b", "db")) is DomainState.RUNNING

    removed = agent.remove(web.ref.uid)
    assert removed == [
        f"domain {domain_name('team-a', 'web')}", f"VF {GEN4_A}", f"VF {C62X_A}",
        f"files in {node.config.state_dir / 'vms' / web.ref.uid}",
    ]
    assert node.driver(GEN4_A) is None and node.driver(C62X_A) == "c6xxvf"
    assert node.driver(GEN4_B) == "vfio-pci"
    assert agent.binder.held() == [GEN4_B]


def test_a_vf_recorded_for_another_vm_is_never_bound_again(node: Node) -> None:
    agent = node.agent()
    holder = node.vm("holder", [GEN4_A])
    agent.apply(holder)
    thief = node.vm("thief", [GEN4_A], namespace="team-b")
    with pytest.raises(HeldByAnotherError, match=f"still held by VM team-a/holder \\(uid {holder.ref.uid}\\)"):
        agent.apply(thief)
    assert agent.hypervisor.state(domain_name("team-b", "thief")) is None
    assert {r.owner for r in agent.binder.records()} == {holder.ref}
    # Once the holder is gone, the VF may go to the next VM.
    agent.remove(holder.ref.uid)
    assert agent.apply(thief).phase is Phase.RUNNING
    assert {r.owner for r in agent.binder.records()} == {thief.ref}


@pytest.mark.parametrize(
    ("address", "says"),
    [
        pytest.param("0000:10:00.0", "not a QAT VF on node node-1 \\(it is another kind of device\\)", id="the-pf"),
        pytest.param("0000:af:00.1", "not a QAT VF on node node-1 \\(no such device here", id="another-nodes-address"),
    ],
)
def test_an_allocation_of_anything_but_this_nodes_vfs_is_refused_untouched(node: Node, address: str, says: str) -> None:
    agent = node.agent()
    vm = node.vm("web", [GEN4_A])
    forged = vm.model_copy(
        update={"status": vm.status.model_copy(update={"devices": [AllocatedDevice(pci_address=address)]})}
    )
    before = {a: node.driver(a) for a in node.sysfs.listdir("bus/pci/devices")}
    with pytest.raises(ForeignDeviceError, match=says) as refused:
        agent.apply(forged)
    assert address in str(refused.value) and "Delete the VM" in str(refused.value)
    assert {a: node.driver(a) for a in node.sysfs.listdir("bus/pci/devices")} == before
    assert agent.binder.held() == []
    assert agent.hypervisor.owned_domains() == []
    assert not (node.config.state_dir / "vms").exists()


def test_holdings_name_every_uid_with_a_domain_a_binding_or_files(node: Node) -> None:
    agent = node.agent()
    web = node.vm("web", [GEN4_A])
    agent.apply(web)
    # An agent killed after binding for a VM, before making its files or domain.
    half = node.vm("half", [GEN4_B])
    agent.binder.bind_to_vfio(GEN4_B, half.ref)
    # Files of a VM whose domain was never defined.
    (node.config.state_dir / "vms" / "0b5f0b0e-files-only").mkdir(parents=True)
    # A record from before owners were recorded.
    agent.binder.bind_to_vfio(GEN4_C)

    holdings = agent.holdings()
    assert holdings.refs == {web.ref.uid: web.ref, half.ref.uid: half.ref, "0b5f0b0e-files-only": None}
    assert holdings.unowned == (GEN4_C,)

    assert agent.remove(half.ref.uid) == [f"VF {GEN4_B}"]
    assert agent.remove("0b5f0b0e-files-only") == [f"files in {node.config.state_dir / 'vms' / '0b5f0b0e-files-only'}"]
    # An unowned record is given back only when no VM placed here names its VF.
    assert agent.release_unowned(holdings.unowned, in_use={GEN4_C}) == []
    assert node.driver(GEN4_C) == "vfio-pci"
    assert agent.release_unowned(holdings.unowned, in_use=set()) == [f"VF {GEN4_C}"]
    assert node.driver(GEN4_C) is None
    assert set(agent.holdings().refs) == {web.ref.uid}
    assert agent.hypervisor.state(domain_name("team-a", "web")) is DomainState.RUNNING


def test_a_recreated_vm_of_the_same_name_replaces_the_old_ones_domain_and_keeps_nothing_of_it(node: Node) -> None:
    agent = node.agent()
    old = node.vm("web", [GEN4_A], user_data="#cloud-config\nold\n")
    agent.apply(old)
    (node.config.state_dir / "vms" / old.ref.uid / "overlay.qcow2").write_bytes(b"the old guest's data")
    # Same namespace and name, a new object (new UID), given another VF: the old one is gone.
    new = node.vm("web", [GEN4_B])
    outcome = agent.apply(new)
    assert outcome.domain.uuid == str(domain_uuid(new.ref.uid))
    assert [d.owner.uid for d in agent.hypervisor.owned_domains()] == [new.ref.uid]
    assert not (node.config.state_dir / "vms" / old.ref.uid).exists()
    assert node.driver(GEN4_A) is None
    assert image_info(node.config.state_dir / "vms" / new.ref.uid / "overlay.qcow2").backing_filename == str(node.root / BASE.lstrip("/"))
    # The old VM's late removal takes nothing of the new one's.
    assert agent.remove(old.ref.uid) == []
    assert agent.hypervisor.state(domain_name("team-a", "web")) is DomainState.RUNNING
    assert node.driver(GEN4_B) == "vfio-pci"


# --- placement on the host's CPUs and memory ------------------------------------------------


def _placed(vm: QatVirtualMachine, vcpus: int, spec: dict[str, Any], **resources: Any) -> QatVirtualMachine:
    body = vm.model_dump(by_alias=True, mode="json")
    body["spec"].update(vcpus=vcpus, **spec)
    body["status"]["resources"] = {"vcpus": vcpus, "memory": body["spec"]["memory"], **resources}
    return QatVirtualMachine.model_validate(body)


def test_the_domain_applies_the_controllers_dedicated_cpus_and_numa_node(node: Node) -> None:
    agent = node.agent()
    vm = _placed(node.vm("pinned", [GEN4_A]), 2, {"memory": "1Gi", "hugepages": {"pageSize": "1Gi"}, "dedicatedCpus": True},
                 hugepageSize="1Gi", numaNode=0, cpus="14-15", dedicated=True, strict=True)
    # Another VM on the node holds CPU 13 as dedicated: neither VM's QEMU threads may go there.
    agent.apply(vm, dedicated=frozenset({13, 14, 15}))
    domain = agent.hypervisor.domain(domain_name("team-a", "pinned"))
    assert domain.cputune is not None
    assert [(p.vcpu, p.cpuset) for p in domain.cputune.vcpupins] == [(0, "14"), (1, "15")]
    # NUMA node 0 of the default layout is CPUs 0-15; the agent keeps CPU 0 for the host.
    assert domain.cputune.emulatorpin is not None and domain.cputune.emulatorpin.cpuset == "1-12"
    assert domain.numatune is not None and (domain.numatune.memory.mode, domain.numatune.memory.nodeset) == ("strict", "0")
    assert domain.memory_backing is not None and domain.memory_backing.hugepages is not None
    assert [p.size for p in domain.memory_backing.hugepages.pages] == [1048576]


def test_a_shared_vm_bound_to_a_numa_node_floats_over_its_undedicated_cpus(node: Node) -> None:
    agent = node.agent()
    vm = _placed(node.vm("shared", [GEN4_A]), 3, {}, numaNode=1)
    agent.apply(vm, dedicated=frozenset({30, 31}))
    domain = agent.hypervisor.domain(domain_name("team-a", "shared"))
    assert domain.cputune is not None
    assert {p.cpuset for p in domain.cputune.vcpupins} == {"17-29"}
    assert domain.numatune is not None and domain.numatune.memory.mode == "preferred"
    assert domain.cpu is not None and domain.cpu.numa is not None and domain.cpu.numa.cells[0].cpus == "0-2"


def test_a_vm_bound_to_no_numa_node_is_not_pinned(node: Node) -> None:
    agent = node.agent()
    agent.apply(_placed(node.vm("floating", [GEN4_A]), 1, {}))
    domain = agent.hypervisor.domain(domain_name("team-a", "floating"))
    assert domain.cputune is None and domain.numatune is None
