"""Turns a `DomainSpec` into the libvirt domain model qatvm defines."""

from __future__ import annotations

from qatvm.domain.models import (
    Boot,
    CharTarget,
    Console,
    Cpu,
    Devices,
    Disk,
    DiskDriver,
    DiskSource,
    DiskTarget,
    Domain,
    Features,
    Flag,
    Hostdev,
    HostdevDriver,
    HostdevSource,
    HostPciAddress,
    Interface,
    InterfaceModel,
    InterfaceSource,
    Memory,
    Metadata,
    Os,
    OsType,
    Serial,
    Vcpu,
    VmOwner,
)
from qatvm.domain.spec import DomainSpec, NetworkKind, NetworkSpec, split_pci_address


def build_domain(spec: DomainSpec) -> Domain:
    memory = Memory(value=(spec.memory_bytes + 1023) // 1024)  # rounded up: never less than asked
    return Domain(
        type=spec.virt_type.value,
        name=spec.name,
        uuid=spec.uuid,
        metadata=Metadata(owner=VmOwner(namespace=spec.owner.namespace, name=spec.owner.name, uid=spec.owner.uid)),
        memory=memory,
        current_memory=memory,
        vcpu=Vcpu(placement="static", count=spec.vcpus),
        os=Os(type=OsType(arch=spec.arch, machine=spec.machine), boot=[Boot(dev="hd")]),
        # Without ACPI a guest never sees the power button, so a graceful stop could only time out.
        features=Features(acpi=Flag(), apic=Flag()),
        cpu=Cpu(mode=spec.cpu_mode.value),
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
