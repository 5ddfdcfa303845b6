"""The project's libvirt layer against a real libvirtd and QEMU inside the guest: a domain with a
VF as a managed='no' hostdev starts, a second domain on the same VF is refused, and a VF still
on its host driver is refused too."""

from __future__ import annotations

import pytest
from guest_node import Node

pytestmark = pytest.mark.realkernel

# A domain that needs nothing but the VF: an empty qcow2 disk, so the nested QEMU (software
# emulation inside software emulation) only has to reach its firmware.
DOMAINS = """
import json, os, subprocess
from pathlib import Path
from qatvm.api.base import ObjectRef
from qatvm.domain import CpuMode, DomainSpec, VirtType, build_domain
from qatvm.hypervisor import HypervisorError, open_hypervisor
from qatvm.node.binding import VfBinder
from qatvm.node.sysfs import HostSysfs
binder = VfBinder(HostSysfs(), Path("/run/qatvm-binding"))
def spec(name, vf):
    disk = Path(f"/var/lib/libvirt/images/{name}.qcow2")
    disk.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    return DomainSpec(owner=ObjectRef(namespace="realkernel", name=name, uid=f"uid-{name}"), vcpus=1,
                      memory_bytes=64 << 20, disk=disk, hostdevs=(vf,), virt_type=VirtType.QEMU,
                      cpu_mode=CpuMode.MAXIMUM)
def start_error(hv, name):
    try:
        hv.start(name)
    except HypervisorError as error:
        return {"type": type(error).__name__, "message": str(error)}
    return None
"""


def test_domain_with_a_vf_starts_and_a_second_on_the_same_vf_is_refused(node: Node, libvirtd: str) -> None:
    vf = node.vfs[0]
    seen = node.json(
        DOMAINS
        + f"""
vf = {vf!r}
group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{{vf}}/iommu_group"))
first, second = spec("first", vf), spec("second", vf)
seen = {{}}
binder.bind_to_vfio(vf)
hv = open_hypervisor({libvirtd!r})
try:
    hv.define(build_domain(first))
    hv.start(first.name)
    seen["first"] = hv.state(first.name).value
    seen["hostdevs"] = [{{k: int(v, 16) for k, v in h.source.address.model_dump().items()}}
                        for h in hv.domain(first.name).devices.hostdevs]
    pid = int(Path(f"/run/libvirt/qemu/{{first.name}}.pid").read_text())
    seen["qemu_holds_group"] = any(os.readlink(f"/proc/{{pid}}/fd/{{fd}}") == f"/dev/vfio/{{group}}"
                                   for fd in os.listdir(f"/proc/{{pid}}/fd"))
    hv.define(build_domain(second))
    seen["second_error"] = start_error(hv, second.name)
    seen["second"] = hv.state(second.name).value
    seen["first_after"] = hv.state(first.name).value
    hv.destroy(first.name)
    seen["destroyed"] = hv.state(first.name).value
    seen["vf_after_destroy"] = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{{vf}}/driver"))
finally:
    for s in (first, second):
        hv.destroy(s.name)
        hv.undefine(s.name)
    hv.close()
    binder.release(vf)
seen["left"] = [d.name for d in open_hypervisor({libvirtd!r}).owned_domains()]
seen["vf_released"] = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{{vf}}/driver"))
print(json.dumps(seen))
""",
        timeout=180,
    )
    assert seen["first"] == "running"
    bus, slot, function = (int(part, 16) for part in vf.replace(".", ":").split(":")[1:])
    assert seen["hostdevs"] == [{"domain": 0, "bus": bus, "slot": slot, "function": function}]
    assert seen["qemu_holds_group"]
    assert seen["second_error"] is not None, "libvirt started a second domain on a VF in use"
    assert "in use" in seen["second_error"]["message"], seen["second_error"]
    assert seen["second"] == "shutoff"
    assert seen["first_after"] == "running"
    assert seen["destroyed"] == "shutoff"
    # managed='no': libvirt leaves the VF on vfio-pci; giving it back is the agent's job.
    assert seen["vf_after_destroy"] == "vfio-pci"
    assert seen["left"] == []
    assert seen["vf_released"] == "nvme"


def test_a_vf_still_on_its_host_driver_is_refused(node: Node, libvirtd: str) -> None:
    vf = node.vfs[1]
    seen = node.json(
        DOMAINS
        + f"""
vm = spec("unbound", {vf!r})
hv = open_hypervisor({libvirtd!r})
try:
    hv.define(build_domain(vm))
    seen = {{"error": start_error(hv, vm.name), "state": hv.state(vm.name).value}}
finally:
    hv.destroy(vm.name)
    hv.undefine(vm.name)
seen["driver"] = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{vf}/driver"))
print(json.dumps(seen))
""",
        timeout=120,
    )
    assert seen["error"] is not None, "libvirt started a domain with a VF that is not on vfio-pci"
    assert "must be manually detached" in seen["error"]["message"], seen["error"]
    assert seen["state"] == "shutoff"
    assert seen["driver"] == "nvme"


def test_a_domain_bound_to_numa_node_1_starts_pinned_there(node: Node, libvirtd: str) -> None:
    """What the agent defines for `qat.numa: require` with dedicated CPUs, on the guest's two NUMA nodes."""
    vf = node.vfs[0]
    seen = node.json(
        DOMAINS
        + f"""
from qatvm.domain.spec import HostPlacement
vf = {vf!r}
vm = DomainSpec.model_validate({{**dict(spec("pinned", vf)),
                                 "placement": HostPlacement(host_node=1, strict=True, dedicated_cpus=(1,))}})
binder.bind_to_vfio(vf)
hv = open_hypervisor({libvirtd!r})
seen = {{}}
try:
    hv.define(build_domain(vm))
    hv.start(vm.name)
    seen["state"] = hv.state(vm.name).value
    live = hv.domain(vm.name)
    seen["vcpupin"] = [(p.vcpu, p.cpuset) for p in live.cputune.vcpupins]
    seen["numatune"] = [live.numatune.memory.mode, live.numatune.memory.nodeset]
    pid = int(Path(f"/run/libvirt/qemu/{{vm.name}}.pid").read_text())
    tasks = os.listdir(f"/proc/{{pid}}/task")
    status = {{t: dict(line.split(":\\t", 1) for line in open(f"/proc/{{pid}}/task/{{t}}/status").read().splitlines() if ":\\t" in line)
              for t in tasks}}
    seen["cpus_allowed"] = sorted({{s["Cpus_allowed_list"].strip() for s in status.values()}})
    seen["mems_allowed"] = sorted({{s["Mems_allowed_list"].strip() for s in status.values()}})
    seen["numa_maps_bind"] = any("bind:1" in line for line in open(f"/proc/{{pid}}/numa_maps"))
finally:
    hv.destroy(vm.name)
    hv.undefine(vm.name)
    hv.close()
    binder.release(vf)
print(json.dumps(seen))
""",
        timeout=180,
    )
    assert seen["state"] == "running"
    assert seen["vcpupin"] == [[0, "1"]]
    assert seen["numatune"] == ["strict", "1"]
    # Every QEMU thread (the vCPU and, with no shared CPUs given, the emulator) runs on CPU 1 only,
    # and its memory may come from NUMA node 1 only (a cpuset or a bind policy, as libvirt can).
    assert seen["cpus_allowed"] == ["1"], seen
    assert seen["mems_allowed"] == ["1"] or seen["numa_maps_bind"], seen
