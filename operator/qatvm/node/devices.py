"""Intel QAT PCI IDs per generation, as the in-tree drivers and vfio-pci know them."""

from __future__ import annotations

from dataclasses import dataclass

INTEL = "8086"
VFIO_PCI = "vfio-pci"


@dataclass(frozen=True)
class Generation:
    """One QAT generation: its PCI device IDs and the drivers the kernel binds to them."""

    name: str
    pf_device: str
    vf_devices: tuple[str, ...]
    pf_driver: str
    # None where no in-tree driver claims the VF by ID (gen4+ VFs only bind through
    # driver_override), so a VF's driver name never identifies its generation.
    vf_driver: str | None
    # gen4+ PFs expose qat/state and qat/cfg_services; earlier ones have fixed services.
    services: tuple[str, ...] | None = None

    @property
    def configurable_services(self) -> bool:
        return self.services is not None


_GEN4_SERVICES = ("sym", "asym", "dc", "dcc")

GENERATIONS: tuple[Generation, ...] = (
    Generation("dh895xcc", "0435", ("0443", "0442"), "dh895xcc", "dh895xccvf"),
    Generation("c62x", "37c8", ("37c9",), "c6xx", "c6xxvf"),
    Generation("c3xxx", "19e2", ("19e3",), "c3xxx", "c3xxxvf"),
    Generation("d15xx", "6f54", ("6f55",), "d15xx", "d15xxvf"),
    Generation("c4xxx", "18a0", ("18a1",), "c4xxx", "c4xxxvf"),
    Generation("200xx", "18ee", ("18ef",), "200xx", None),
    Generation("4xxx", "4940", ("4941",), "4xxx", None, _GEN4_SERVICES),
    Generation("401xx", "4942", ("4943",), "4xxx", None, _GEN4_SERVICES),
    Generation("402xx", "4944", ("4945",), "4xxx", None, _GEN4_SERVICES),
    Generation("420xx", "4946", ("4947",), "420xx", None, _GEN4_SERVICES),
    Generation("6xxx", "4948", ("4949",), "6xxx", None, (*_GEN4_SERVICES, "decomp")),
)

BY_NAME: dict[str, Generation] = {g.name: g for g in GENERATIONS}
BY_PF_DEVICE: dict[str, Generation] = {g.pf_device: g for g in GENERATIONS}
BY_VF_DEVICE: dict[str, Generation] = {vf: g for g in GENERATIONS for vf in g.vf_devices}

# vfio-pci's own denylist (vfio_pci_dev_in_denylist): Intel device IDs only, and 0x0442 is
# not on it. The module parameter disable_denylist=1 lifts it.
VFIO_DENYLIST: frozenset[str] = frozenset({"0435", "0443", "37c8", "37c9", "19e2", "19e3"})
# Relative to the sysfs root; reads Y or N. Kernels without the denylist lack it.
VFIO_DENYLIST_PARAM = "module/vfio_pci/parameters/disable_denylist"


def vfio_denylisted(vendor: str, device: str) -> bool:
    return vendor == INTEL and device in VFIO_DENYLIST


@dataclass(frozen=True)
class ExtraVfId:
    """A VF device ID added by configuration: a future QAT part or an emulated SR-IOV device."""

    vendor: str
    device: str
    generation: str = "custom"

    @classmethod
    def parse(cls, text: str) -> ExtraVfId:
        """Parse `vvvv:dddd` or `vvvv:dddd=name` (the name is reported as the generation)."""
        ident, _, name = text.strip().partition("=")
        vendor, sep, device = ident.strip().lower().partition(":")
        if not sep or not _is_hex4(vendor) or not _is_hex4(device):
            raise ValueError(f"{text!r} is not a PCI ID: expected vvvv:dddd or vvvv:dddd=name")
        return cls(vendor, device, name.strip() or "custom")

    @classmethod
    def parse_list(cls, text: str) -> list[ExtraVfId]:
        return [cls.parse(item) for item in text.split(",") if item.strip()]


def _is_hex4(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdef" for c in text)
