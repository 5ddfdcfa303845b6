from __future__ import annotations

import os
import stat
import subprocess
import time
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
def test_overlay_is_backed_by_the_base_in_the_given_format(tmp_path: Path, base_format: str) -> None:
    base = tmp_path / f"base.{base_format}"
    qemu_img("create", "-f", base_format, str(base), "64M")
    overlay = tmp_path / "vm-1" / "disk.qcow2"
    overlay.parent.mkdir()
    ensure_overlay(base, base_format, overlay)
    info = image_info(overlay)
    assert (info.format, info.backing_filename, info.backing_format) == ("qcow2", str(base), base_format)
    assert info.virtual_size == 64 * 1024**2
    assert not list(overlay.parent.glob("*.partial"))


def test_the_overlay_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "16M")
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(base, "raw", overlay)
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600
    # An overlay an older agent left world-readable is narrowed on the next pass.
    overlay.chmod(0o644)
    ensure_overlay(base, "raw", overlay)
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600


def test_again_keeps_the_guest_data(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "16M")
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(base, "raw", overlay)
    qemu_io(overlay, "write -P 0xab 0 64k")
    ensure_overlay(base, "raw", overlay)
    assert "pattern verification failed" not in qemu_io(overlay, "read -P 0xab 0 64k")
    # The guest's writes went to the overlay; the shared base is untouched.
    assert base.read_bytes()[:4] == b"\0\0\0\0"


def test_an_overlay_of_another_base_or_format_is_refused(tmp_path: Path) -> None:
    for name in ("a.raw", "b.raw"):
        qemu_img("create", "-f", "raw", str(tmp_path / name), "16M")
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(tmp_path / "a.raw", "raw", overlay)
    with pytest.raises(DiskError, match="not a qcow2 overlay of .*b.raw"):
        ensure_overlay(tmp_path / "b.raw", "raw", overlay)
    with pytest.raises(DiskError, match=r"not a qcow2 overlay of .*a.raw \(qcow2\)"):
        ensure_overlay(tmp_path / "a.raw", "qcow2", overlay)
    assert image_info(overlay).backing_filename == str(tmp_path / "a.raw")


def test_the_pinned_format_wins_over_what_the_content_looks_like(tmp_path: Path) -> None:
    """A raw image whose bytes look like a qcow2 header pointing at another file stays raw."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:hash\n" * 100)
    crafted = tmp_path / "crafted.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(crafted), "1M")
    base = tmp_path / "base.raw"
    base.write_bytes(crafted.read_bytes().ljust(1024**2, b"\0"))
    overlay = tmp_path / "disk.qcow2"
    ensure_overlay(base, "raw", overlay)
    assert image_info(overlay).backing_format == "raw"
    assert image_info(base, "raw").full_backing_filename is None


def test_a_file_that_never_answers_times_out_with_a_message(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(DiskError, match=r"qemu-img info .*fifo did not finish in 1s"):
        image_info(fifo, "raw", timeout=1)
    assert time.monotonic() - started < 10
