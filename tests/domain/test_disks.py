from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qatvm.domain.disks import DiskError, ensure_overlay, image_info


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(image: Path, command: str) -> str:
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)], check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.mark.parametrize("base_format", ["raw", "qcow2"])
def test_overlay_is_backed_by_the_base_in_its_detected_format(tmp_path: Path, base_format: str) -> None:
    base = tmp_path / f"base.{base_format}"
    qemu_img("create", "-f", base_format, str(base), "64M")
    overlay = tmp_path / "vms" / "vm-1" / "disk.qcow2"
    ensure_overlay(base, overlay)
    info = image_info(overlay)
    assert (info.format, info.backing_filename, info.backing_format) == ("qcow2", str(base), base_format)
    assert info.virtual_size == 64 * 1024**2
    assert not list(overlay.parent.glob("*.partial"))


def test_again_keeps_the_guest_data(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "16M")
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(base, overlay)
    qemu_io(overlay, "write -P 0xab 0 64k")
    ensure_overlay(base, overlay)
    assert "pattern verification failed" not in qemu_io(overlay, "read -P 0xab 0 64k")
    # The guest's writes went to the overlay; the shared base is untouched.
    assert base.read_bytes()[:4] == b"\0\0\0\0"


def test_an_overlay_of_another_base_is_refused(tmp_path: Path) -> None:
    for name in ("a.raw", "b.raw"):
        qemu_img("create", "-f", "raw", str(tmp_path / name), "16M")
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(tmp_path / "a.raw", overlay)
    with pytest.raises(DiskError, match="not a qcow2 overlay of .*b.raw"):
        ensure_overlay(tmp_path / "b.raw", overlay)
    assert image_info(overlay).backing_filename == str(tmp_path / "a.raw")


def test_a_missing_base_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="base image .*missing.raw does not exist"):
        ensure_overlay(tmp_path / "missing.raw", tmp_path / "disk.qcow2")
    assert not (tmp_path / "disk.qcow2").exists()
