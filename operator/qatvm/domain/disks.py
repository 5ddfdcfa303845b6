"""A VM's own disk: a qcow2 overlay whose backing file is the shared base image.

The base is never written, so any number of VMs boot from one image and each VM's changes live in
its overlay only. Creating the overlay is idempotent: an agent restarted after a crash finds the
overlay it made before and keeps it (it holds the guest's data), unless it is not an overlay of
this base, which is refused rather than silently replaced.

The base's format is given, never probed here, and written into the overlay (`-F`), so QEMU
never guesses it later. Every qemu-img call has a timeout: a file that never answers (a hung
network mount) fails the VM with a message instead of blocking the agent.

A new overlay holds nothing but its header and empty tables, and qemu-img writes the same bytes
for the same base, format and size (no name, time or random id in a qcow2 file). So qemu-img
creates the first overlay of a base and later ones are written from its bytes: a burst of VMs on
one image costs one qemu-img process instead of one each (9-11 ms of CPU apiece).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Overlays hold the guest's data: owner only (libvirt's dynamic ownership hands them to QEMU's
# user while the domain runs). qemu-img creates files under this umask, so they are never wider.
PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
QEMU_IMG_TIMEOUT = 60.0
EMPTY_OVERLAYS_KEPT = 64


class DiskError(Exception):
    pass


class ImageInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    format: str
    virtual_size: int = Field(alias="virtual-size")
    backing_filename: str | None = Field(default=None, alias="backing-filename")
    # The backing file as QEMU will open it (a relative name joined to the image's directory).
    full_backing_filename: str | None = Field(default=None, alias="full-backing-filename")
    backing_format: str | None = Field(default=None, alias="backing-filename-format")
    format_specific: dict[str, Any] = Field(default_factory=dict, alias="format-specific")

    @property
    def data_file(self) -> str | None:
        """A qcow2 image's external data file: another file QEMU opens for this image."""
        data = self.format_specific.get("data") or {}
        return data.get("data-file") if isinstance(data, dict) else None


def image_info(path: Path, fmt: str | None = None, timeout: float = QEMU_IMG_TIMEOUT) -> ImageInfo:
    """What qemu-img reads in `path`'s header; only this file is opened, never its backing files."""
    pinned = ["-f", fmt] if fmt else []
    # --force-share: the overlay of a running VM is locked by QEMU, and reading it is still safe.
    return ImageInfo.model_validate_json(_qemu_img("info", "--force-share", "--output=json", *pinned, str(path), timeout=timeout))


def file_identity(path: Path) -> tuple[object, ...]:
    """`path` with its identity and times: a file rewritten, resized or replaced gets a new one."""
    seen = os.stat(path)
    return (str(path), seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)


class Overlays:
    """Creates VMs' overlays, remembering the bytes of a new, empty overlay of each base."""

    def __init__(self) -> None:
        self._empty: dict[tuple[object, ...], bytes] = {}

    def ensure(self, base: Path, base_format: str, overlay: Path) -> None:
        """`overlay` backed by `base` in `base_format`; the caller has admitted the base."""
        if overlay.exists():
            info = image_info(overlay, "qcow2")
            if info.backing_filename != str(base) or info.backing_format != base_format:
                raise DiskError(
                    f"{overlay} exists but is not a qcow2 overlay of {base} ({base_format}) "
                    f"(backing file {info.backing_filename}, format {info.backing_format}); "
                    "it may hold another VM's data, so it is left alone"
                )
            # Overlays written by an older agent were world-readable.
            os.chmod(overlay, PRIVATE_FILE_MODE)
            return
        partial = overlay.with_name(overlay.name + ".partial")
        # Taken before qemu-img reads the base: a base changed meanwhile is never filed under
        # the identity it has now, only under one no later stat returns.
        key = (*file_identity(base), base_format)
        empty = self._empty.get(key)
        if empty is None:
            _qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(partial))
            if len(self._empty) >= EMPTY_OVERLAYS_KEPT:
                self._empty.clear()
            self._empty[key] = partial.read_bytes()
        else:
            # A crash may have left a partial file behind, and O_EXCL makes the mode this one.
            partial.unlink(missing_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                out.write(empty)
        # Renamed only once complete, so a crash never leaves an overlay that looks finished.
        os.replace(partial, overlay)


def _qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, check=False,
            timeout=timeout, umask=PRIVATE_UMASK,
        )
    except FileNotFoundError as error:
        raise DiskError("qemu-img is not installed (Debian package qemu-utils)") from error
    except subprocess.TimeoutExpired as error:
        raise DiskError(
            f"qemu-img {args[0]} {args[-1]} did not finish in {timeout:g}s; "
            "is the file on a storage that stopped answering?"
        ) from error
    if done.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout
