"""What can go wrong talking to libvirt, as exceptions an agent can act on."""

from __future__ import annotations

import libvirt


class HypervisorError(Exception):
    """A libvirt call failed. `code` is libvirt's error number (libvirt.VIR_ERR_*), if it gave one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ConnectionFailed(HypervisorError):
    pass


class DomainNotFound(HypervisorError):
    pass


class DomainConflict(HypervisorError):
    """Another domain already has this name or this UUID."""


class DomainActive(HypervisorError):
    """The domain runs, and the call would leave it running with no definition or owner."""


class PassthroughUnsupported(HypervisorError):
    """The host cannot give PCI devices to a VM: no IOMMU, or VFIO is missing."""


_PASSTHROUGH_HELP = (
    "the host cannot pass PCI devices through to VMs: enable VT-d in the firmware, boot the "
    "kernel with intel_iommu=on iommu=pt (so /sys/kernel/iommu_groups is not empty), and load "
    "vfio-pci (so /dev/vfio/vfio exists)"
)


def translate(error: libvirt.libvirtError, doing: str) -> HypervisorError:
    """The qatvm exception for a libvirt error raised while `doing` something (said in the message)."""
    code = error.get_error_code()
    text = error.get_error_message() or str(error)
    message = f"{doing}: {text}"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, code=code)
    # libvirt has no error code of its own for this one, only the QEMU driver's sentence.
    if code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED and "VFIO" in text:
        return PassthroughUnsupported(f"{message}; {_PASSTHROUGH_HELP}", code=code)
    if code == libvirt.VIR_ERR_OPERATION_FAILED and ("already exists" in text or "already defined" in text):
        return DomainConflict(message, code=code)
    return HypervisorError(message, code=code)
