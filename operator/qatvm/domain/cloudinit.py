"""The NoCloud seed a guest's cloud-init reads: an ISO 9660 image labelled `cidata`.

cloud-init finds it by that filesystem label on any block device, and reads `user-data` and
`meta-data` from its root. `instance-id` is the VM's UID, so cloud-init runs its once-per-instance
steps once per VM object, and again for a re-created VM of the same name.

The seed carries the user's secrets (passwords, keys): it is written owner-only from its first
byte (libvirt's dynamic ownership hands it to QEMU's user while the domain runs).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pycdlib
import yaml

from qatvm.domain.disks import PRIVATE_FILE_MODE

VOLUME_ID = "cidata"
# A hostname is one DNS label (RFC 1123): letters, digits and `-`, at most 63 characters.
MAX_HOSTNAME = 63


def hostname_for(vm_name: str) -> str:
    """The guest's hostname from the VM's name, a DNS subdomain of up to 253 characters.

    Dots become dashes (a hostname is one label), and a long name is cut to 63 characters;
    the result starts and ends with a letter or digit because the name's labels do."""
    label = re.sub(r"[^a-z0-9-]", "-", vm_name.lower())[:MAX_HOSTNAME].strip("-")
    return label or "vm"


def write_nocloud_iso(path: Path, *, instance_id: str, hostname: str, user_data: str) -> None:
    """Write the seed to `path`, replacing any earlier one whole (never a half-written image)."""
    meta_data = yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)
    iso = pycdlib.PyCdlib()
    # Rock Ridge and Joliet carry the real names (`user-data` is not a valid ISO 9660 level 1 name),
    # and Linux and Windows read those; the ISO 9660 names are only the fallback.
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    partial = path.with_name(path.name + ".partial")
    try:
        for name, iso_name, content in (
            ("user-data", "USERDATA.;1", user_data),
            ("meta-data", "METADATA.;1", meta_data),
        ):
            data = content.encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            # A partial file left by an older agent keeps its mode on open: narrow it first.
            os.fchmod(out.fileno(), PRIVATE_FILE_MODE)
            iso.write_fp(out)
    finally:
        iso.close()
    os.replace(partial, path)
