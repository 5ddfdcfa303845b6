"""The NoCloud seed a guest's cloud-init reads: an ISO 9660 image labelled `cidata`.

cloud-init finds it by that filesystem label on any block device, and reads `user-data` and
`meta-data` from its root. `instance-id` is the VM's UID, so cloud-init runs its once-per-instance
steps once per VM object, and again for a re-created VM of the same name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pycdlib
import yaml

VOLUME_ID = "cidata"


def write_nocloud_iso(path: Path, *, instance_id: str, hostname: str, user_data: str) -> None:
    """Write the seed to `path`, replacing any earlier one whole (never a half-written image)."""
    meta_data = yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)
    iso = pycdlib.PyCdlib()
    # Rock Ridge and Joliet carry the real names (`user-data` is not a valid ISO 9660 level 1 name),
    # and Linux and Windows read those; the ISO 9660 names are only the fallback.
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    try:
        for name, iso_name, content in (
            ("user-data", "USERDATA.;1", user_data),
            ("meta-data", "METADATA.;1", meta_data),
        ):
            data = content.encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
        partial = path.with_name(path.name + ".partial")
        iso.write(str(partial))
    finally:
        iso.close()
    os.replace(partial, path)
