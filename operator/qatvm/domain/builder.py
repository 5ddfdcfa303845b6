"""Turns a `DomainSpec` into the libvirt domain model qatvm defines."""

from __future__ import annotations

from qatvm.api.cpulist import format_cpulist
from qatvm.domain.models import (
    Boot,
    CharTarget,
    Console,
    Cpu,
    CpuTune,
    Devices,
    Disk,
    DiskDriver,
    DiskSource,
    DiskTarget,
    Domain,
    EmulatorPin,
    Features,
    Flag,
    GuestNuma,
    Hostdev,
    HostdevDriver,
    HostdevSource,
    HostPciAddress,
    Hugepages,
    HugepageSize,
    Interface,
    InterfaceModel,
    InterfaceSource,
    Memory,
    MemoryBacking,
    Metadata,
    NumaCell,
    NumaMemory,
    NumaTune,
    Os,
    OsType,
    Serial,
    Vcpu,
    VcpuPin,
    VmOwner,
)
from qatvm.domain.spec import DomainSpec, NetworkKind, NetworkSpec, HostPlacement, split_pci_address


def build_domain(spec: DomainSpec) -> Domain:
    # Rounded up, to whole huge pages when backed by them: never less than asked.
    unit = spec.hugepage_size.bytes if spec.hugepage_size else 1024
    memory = Memory(value=-(-spec.memory_bytes // unit) * unit // 1024)
    return Domain(
        type=spec.virt_type.value,
        name=spec.name,
        uuid=spec.uuid,
        metadata=Metadata(owner=VmOwner(namespace=spec.owner.namespace, name=spec.owner.name, uid=spec.owner.uid)),
        memory=memory,
        current_memory=memory,
        memory_backing=(
            MemoryBacking(hugepages=Hugepages(pages=[HugepageSize(size=spec.hugepage_size.kib)]))
            if spec.hugepage_size else None
        ),
        vcpu=Vcpu(placement="static", count=spec.vcpus),
        cputune=_cputune(spec.vcpus, spec.placement) if spec.placement else None,
        numatune=_numatune(spec.placement),
        os=Os(type=OsType(arch=spec.arch, machine=spec.machine), boot=[Boot(dev="hd")]),
        # Without ACPI a guest never sees the power button, so a graceful stop could only time out.
        features=Features(acpi=Flag(), apic=Flag()),
        cpu=Cpu(
            mode=spec.cpu_mode.value,
            # One guest NUMA node holding every vCPU and all memory: the guest's kernel and QAT
            # driver then see the VFs, CPUs and memory as local to each other, as they are.
            numa=(
                GuestNuma(cells=[NumaCell(id=0, cpus=f"0-{spec.vcpus - 1}", memory=memory.value)])
                if _numatune(spec.placement) else None
            ),
        ),
        on_poweroff="destroy",
        on_reboot="restart",
        # A crashed guest stays down and visible as such, rather than looping in restarts.
        on_crash="destroy",
        devices=Devices(
            disks=_disks(spec),
            interfaces=[_interface(spec.network)],
            serials=[Serial(type="pty", target=CharTarget(port=0))],
            consoles=[Console(type="pty", target=CharTarget(type="serial", port=0))],
            hostdevs=[_hostdev(address) for address in spec.hostdevs],
        ),
    )


def _numatune(placement: HostPlacement | None) -> NumaTune | None:
    if placement is None or placement.host_node is None:
        return None
    mode = "strict" if placement.strict else "preferred"
    return NumaTune(memory=NumaMemory(mode=mode, nodeset=str(placement.host_node)))


def _cputune(vcpus: int, numa: HostPlacement) -> CpuTune:
    if numa.dedicated_cpus:
        pins = [VcpuPin(vcpu=i, cpuset=str(cpu)) for i, cpu in enumerate(numa.dedicated_cpus)]
        # QEMU's own threads go to the shared CPUs, so the dedicated ones run nothing but vCPUs.
        emulator = numa.shared_cpus or frozenset(numa.dedicated_cpus)
    else:
        pins = [VcpuPin(vcpu=i, cpuset=format_cpulist(numa.shared_cpus)) for i in range(vcpus)]
        emulator = numa.shared_cpus
    return CpuTune(vcpupins=pins, emulatorpin=EmulatorPin(cpuset=format_cpulist(emulator)))


def _disks(spec: DomainSpec) -> list[Disk]:
    disks = [
        Disk(
            driver=DiskDriver(type="qcow2"),
            source=DiskSource(file=str(spec.disk)),
            target=DiskTarget(dev="vda", bus="virtio"),
        )
    ]
    if spec.cloud_init_iso is not None:
        # A read-only virtio disk rather than a CD-ROM: NoCloud finds its data by the filesystem
        # label on any block device, and virtio needs no IDE/SATA controller on either machine type.
        disks.append(
            Disk(
                driver=DiskDriver(type="raw"),
                source=DiskSource(file=str(spec.cloud_init_iso)),
                target=DiskTarget(dev="vdb", bus="virtio"),
                readonly=Flag(),
            )
        )
    return disks


def _interface(network: NetworkSpec) -> Interface:
    match network.kind:
        case NetworkKind.USER:
            source = None
        case NetworkKind.NETWORK:
            source = InterfaceSource(network=network.source)
        case NetworkKind.BRIDGE:
            source = InterfaceSource(bridge=network.source)
    return Interface(type=network.kind.value, source=source, model=InterfaceModel(type="virtio"))


def _hostdev(address: str) -> Hostdev:
    return Hostdev(
        mode="subsystem",
        type="pci",
        managed="no",
        driver=HostdevDriver(name="vfio"),
        source=HostdevSource(address=HostPciAddress.from_parts(*split_pci_address(address))),
    )
