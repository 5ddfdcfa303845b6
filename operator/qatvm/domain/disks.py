"""A VM's own disk: a qcow2 overlay whose backing file is the shared base image.

The base is never written, so any number of VMs boot from one image and each VM's changes live in
its overlay only. Creating the overlay is idempotent: an agent restarted after a crash finds the
overlay it made before and keeps it (it holds the guest's data), unless it is not an overlay of
this base, which is refused rather than silently replaced.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class DiskError(Exception):
    pass


class ImageInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    format: str
    virtual_size: int = Field(alias="virtual-size")
    backing_filename: str | None = Field(default=None, alias="backing-filename")
    backing_format: str | None = Field(default=None, alias="backing-filename-format")


def image_info(path: Path) -> ImageInfo:
    # --force-share: the overlay of a running VM is locked by QEMU, and reading it is still safe.
    return ImageInfo.model_validate_json(_qemu_img("info", "--force-share", "--output=json", str(path)))


def ensure_overlay(base: Path, overlay: Path) -> None:
    base = base.absolute()
    if not base.is_file():
        raise DiskError(f"the base image {base} does not exist")
    if overlay.exists():
        info = image_info(overlay)
        if info.format != "qcow2" or info.backing_filename != str(base):
            raise DiskError(
                f"{overlay} exists but is not a qcow2 overlay of {base} "
                f"(format {info.format}, backing file {info.backing_filename}); "
                "it may hold another VM's data, so it is left alone"
            )
        return
    base_format = image_info(base).format
    partial = overlay.with_name(overlay.name + ".partial")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(partial))
    # Renamed only once complete, so a crash never leaves an overlay that looks finished.
    os.replace(partial, overlay)


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise DiskError("qemu-img is not installed (Debian package qemu-utils)") from error
    if done.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout
