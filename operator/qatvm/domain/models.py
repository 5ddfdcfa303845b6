"""Typed models of the part of libvirt's domain XML that qatvm writes and reads back.

Two pydantic-xml traps shape this module:
- `skip_empty=True` drops every element with no attributes, text or children, recursively, so
  `<acpi/>` and `<readonly/>` (presence-only flags) would vanish and with them ACPI shutdown and
  read-only disks. Instead, `Domain` always serializes with `exclude_none=True`: unset optional
  fields are left out, and flags that are set stay.
- Parsing uses `search_mode="unordered"`: libvirt returns elements in its own order and adds many
  we do not model (aliases, guest PCI addresses, controllers), which must be skipped, not refused.
"""

from __future__ import annotations

from uuid import UUID

from pydantic_xml import BaseXmlModel, attr, element
from pydantic_xml.element.native import etree

QATVM_XMLNS = "https://qatvm.io/xmlns/domain/v1"


class _Xml(BaseXmlModel, search_mode="unordered"):
    pass


class Flag(_Xml):
    """An element whose presence is its meaning, such as `<acpi/>`."""


class VmOwner(_Xml, tag="vm", ns="qatvm", nsmap={"qatvm": QATVM_XMLNS}):
    """qatvm's entry in `<metadata>`: which Kubernetes object the domain belongs to."""

    namespace: str = element()
    name: str = element()
    uid: str = element()


class Metadata(_Xml, tag="metadata"):
    owner: VmOwner | None = None


class Memory(_Xml):
    unit: str = attr(default="KiB")
    value: int


class HugepageSize(_Xml, tag="page"):
    size: int = attr()
    unit: str = attr(default="KiB")


class Hugepages(_Xml, tag="hugepages"):
    pages: list[HugepageSize] = element(default_factory=list)


class MemoryBacking(_Xml, tag="memoryBacking"):
    hugepages: Hugepages | None = None


class VcpuPin(_Xml, tag="vcpupin"):
    vcpu: int = attr()
    cpuset: str = attr()


class EmulatorPin(_Xml, tag="emulatorpin"):
    cpuset: str = attr()


class CpuTune(_Xml, tag="cputune"):
    vcpupins: list[VcpuPin] = element(default_factory=list)
    emulatorpin: EmulatorPin | None = None


class NumaMemory(_Xml, tag="memory"):
    # strict: allocation fails rather than leave the nodeset; preferred: falls back to others.
    mode: str = attr()
    nodeset: str = attr()


class NumaTune(_Xml, tag="numatune"):
    memory: NumaMemory


class NumaCell(_Xml, tag="cell"):
    id: int = attr()
    cpus: str = attr()
    memory: int = attr()
    unit: str = attr(default="KiB")


class GuestNuma(_Xml, tag="numa"):
    cells: list[NumaCell] = element(default_factory=list)


class Vcpu(_Xml, tag="vcpu"):
    placement: str | None = attr(default=None)
    count: int


class OsType(_Xml, tag="type"):
    arch: str | None = attr(default=None)
    machine: str | None = attr(default=None)
    value: str = "hvm"


class Boot(_Xml, tag="boot"):
    dev: str = attr()


class Os(_Xml, tag="os"):
    type: OsType
    boot: list[Boot] = element(default_factory=list)


class Features(_Xml, tag="features"):
    acpi: Flag | None = element(tag="acpi", default=None)
    apic: Flag | None = element(tag="apic", default=None)


class Cpu(_Xml, tag="cpu"):
    mode: str = attr()
    numa: GuestNuma | None = None


class DiskDriver(_Xml, tag="driver"):
    name: str = attr(default="qemu")
    type: str = attr()


class DiskSource(_Xml, tag="source"):
    file: str = attr()


class DiskTarget(_Xml, tag="target"):
    dev: str = attr()
    bus: str = attr()


class Disk(_Xml, tag="disk"):
    type: str = attr(default="file")
    device: str = attr(default="disk")
    driver: DiskDriver
    source: DiskSource
    target: DiskTarget
    readonly: Flag | None = element(tag="readonly", default=None)


class InterfaceSource(_Xml, tag="source"):
    network: str | None = attr(default=None)
    bridge: str | None = attr(default=None)


class InterfaceModel(_Xml, tag="model"):
    type: str = attr()


class Interface(_Xml, tag="interface"):
    type: str = attr()
    source: InterfaceSource | None = None
    model: InterfaceModel | None = None


class CharTarget(_Xml, tag="target"):
    type: str | None = attr(default=None)
    port: int | None = attr(default=None)


class Serial(_Xml, tag="serial"):
    type: str = attr(default="pty")
    target: CharTarget | None = None


class Console(_Xml, tag="console"):
    type: str = attr(default="pty")
    target: CharTarget | None = None


class HostPciAddress(_Xml, tag="address"):
    """A host PCI address in libvirt's notation (hex with 0x, one attribute per part)."""

    domain: str = attr()
    bus: str = attr()
    slot: str = attr()
    function: str = attr()

    @classmethod
    def from_parts(cls, domain: int, bus: int, slot: int, function: int) -> HostPciAddress:
        return cls(domain=f"0x{domain:04x}", bus=f"0x{bus:02x}", slot=f"0x{slot:02x}", function=f"0x{function:x}")

    @property
    def bdf(self) -> str:
        """The sysfs spelling, `0000:3d:01.2`, which is how the rest of qatvm names a device."""
        return f"{int(self.domain, 16):04x}:{int(self.bus, 16):02x}:{int(self.slot, 16):02x}.{int(self.function, 16):x}"


class HostdevDriver(_Xml, tag="driver"):
    name: str = attr()


class HostdevSource(_Xml, tag="source"):
    address: HostPciAddress


class Hostdev(_Xml, tag="hostdev"):
    mode: str = attr(default="subsystem")
    type: str = attr(default="pci")
    # The agent binds VFs to vfio-pci itself, and must be the one to give them back.
    managed: str = attr(default="no")
    driver: HostdevDriver | None = None
    source: HostdevSource


class Devices(_Xml, tag="devices"):
    disks: list[Disk] = element(default_factory=list)
    interfaces: list[Interface] = element(default_factory=list)
    serials: list[Serial] = element(default_factory=list)
    consoles: list[Console] = element(default_factory=list)
    hostdevs: list[Hostdev] = element(default_factory=list)


class DomainIdentity(_Xml, tag="domain"):
    """Only who a domain is and who owns it: enough to read any domain, ours or not."""

    name: str = element()
    uuid: UUID = element()
    metadata: Metadata | None = None

    @property
    def owner(self) -> VmOwner | None:
        return self.metadata.owner if self.metadata else None


class Domain(DomainIdentity, tag="domain"):
    type: str = attr()
    id: int | None = attr(default=None)
    memory: Memory = element(tag="memory")
    current_memory: Memory | None = element(tag="currentMemory", default=None)
    memory_backing: MemoryBacking | None = None
    vcpu: Vcpu
    cputune: CpuTune | None = None
    numatune: NumaTune | None = None
    os: Os
    features: Features | None = None
    cpu: Cpu | None = None
    on_poweroff: str | None = element(default=None)
    on_reboot: str | None = element(default=None)
    on_crash: str | None = element(default=None)
    devices: Devices

    def to_xml_tree(
        self, *, skip_empty: bool = False, exclude_none: bool = True, exclude_unset: bool = False
    ) -> etree.Element:
        # Nones are always left out, whatever the caller passes (`to_xml` passes False): written
        # out, they become `machine=""` and `<on_crash/>`, which libvirt refuses.
        del exclude_none
        return super().to_xml_tree(skip_empty=skip_empty, exclude_none=True, exclude_unset=exclude_unset)

    def xml(self) -> str:
        return self.to_xml(encoding="unicode")  # type: ignore[return-value]
