"""A VM's files on its node: its overlay on an admitted base image, and its cloud-init seed.

Slow and blocking (qemu-img, ISO writing), and touching only this VM's own directory, so it
runs outside any node-wide lock; each qemu-img call has a timeout.

Who may read them: the directory is 0711 and the files 0600, owned by root. QEMU does not run as
root (Debian: libvirt-qemu), and libvirt's dynamic ownership (its default, which QEMU already
needs to write a root-created overlay) hands the files to QEMU's user while the domain runs; the
directory's execute bit lets QEMU reach them by name without listing other VMs. A 0750
directory with QEMU's group would need that group's id, which a container does not know.
"""

from __future__ import annotations

import os
from pathlib import Path

from qatvm.api.vm import QatVirtualMachine
from qatvm.domain.cloudinit import hostname_for, write_nocloud_iso
from qatvm.domain.disks import Overlays
from qatvm.node.images import ImagePolicy

DIR_MODE = 0o711


def prepare_disks(images: ImagePolicy, overlays: Overlays, vm: QatVirtualMachine, disk: Path, seed: Path | None) -> None:
    """Create (or keep) `disk` and write `seed`; raises ImageRefused for an image the VM may not use."""
    image = images.admit(vm.spec.image.path)
    for directory in (disk.parent.parent, disk.parent):
        directory.mkdir(parents=True, exist_ok=True)
        # mkdir's mode is cut by the umask, and a directory from an older agent was 0755.
        os.chmod(directory, DIR_MODE)
    overlays.ensure(image.host_path, image.format, disk)
    user_data = vm.spec.cloud_init.user_data if vm.spec.cloud_init else None
    if seed is not None and user_data:
        write_nocloud_iso(seed, instance_id=vm.ref.uid, hostname=hostname_for(vm.ref.name), user_data=user_data)
