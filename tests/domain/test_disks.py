from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from qatvm.domain.disks import DiskError, Overlays, image_info


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
    Overlays().ensure(base, base_format, overlay)
    info = image_info(overlay)
    assert (info.format, info.backing_filename, info.backing_format) == ("qcow2", str(base), base_format)
    assert info.virtual_size == 64 * 1024**2
    assert not list(overlay.parent.glob("*.partial"))


def test_the_overlay_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "16M")
    overlay = tmp_path / "disk.qcow2"
    Overlays().ensure(base, "raw", overlay)
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600
    # An overlay an older agent left world-readable is narrowed on the next pass.
    overlay.chmod(0o644)
    Overlays().ensure(base, "raw", overlay)
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600


def test_again_keeps_the_guest_data(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", str(base), "16M")
    overlay = tmp_path / "disk.qcow2"
    Overlays().ensure(base, "raw", overlay)
    qemu_io(overlay, "write -P 0xab 0 64k")
    Overlays().ensure(base, "raw", overlay)
    assert "pattern verification failed" not in qemu_io(overlay, "read -P 0xab 0 64k")
    # The guest's writes went to the overlay; the shared base is untouched.
    assert base.read_bytes()[:4] == b"\0\0\0\0"


def test_later_overlays_of_a_base_are_what_qemu_img_writes_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "64M")
    overlays = Overlays()
    first, second = tmp_path / "first.qcow2", tmp_path / "second.qcow2"
    overlays.ensure(base, "qcow2", first)
    fresh = tmp_path / "fresh.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(fresh))
    # Without qemu-img on the PATH the second overlay can only come from the first one's bytes.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    second.with_name(second.name + ".partial").write_bytes(b"left by a crash" * 100_000)
    overlays.ensure(base, "qcow2", second)
    monkeypatch.undo()
    assert second.read_bytes() == fresh.read_bytes()
    assert stat.S_IMODE(second.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.partial"))
    subprocess.run(["qemu-img", "check", "-q", str(second)], check=True)
    # Each overlay holds its own guest's writes.
    qemu_io(first, "write -P 0xab 0 64k")
    assert "pattern verification failed" not in qemu_io(second, "read -P 0 0 64k")


def test_a_base_that_changed_gets_overlays_of_what_it_is_now(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "64M")
    overlays = Overlays()
    overlays.ensure(base, "qcow2", tmp_path / "before.qcow2")
    qemu_img("resize", "-f", "qcow2", str(base), "128M")
    overlays.ensure(base, "qcow2", tmp_path / "after.qcow2")
    assert image_info(tmp_path / "before.qcow2").virtual_size == 64 * 1024**2
    assert image_info(tmp_path / "after.qcow2").virtual_size == 128 * 1024**2


def test_an_overlay_of_another_base_or_format_is_refused(tmp_path: Path) -> None:
    for name in ("a.raw", "b.raw"):
        qemu_img("create", "-f", "raw", str(tmp_path / name), "16M")
    overlay = tmp_path / "disk.qcow2"
    Overlays().ensure(tmp_path / "a.raw", "raw", overlay)
    with pytest.raises(DiskError, match="not a qcow2 overlay of .*b.raw"):
        Overlays().ensure(tmp_path / "b.raw", "raw", overlay)
    with pytest.raises(DiskError, match=r"not a qcow2 overlay of .*a.raw \(qcow2\)"):
        Overlays().ensure(tmp_path / "a.raw", "qcow2", overlay)
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
    Overlays().ensure(base, "raw", overlay)
    assert image_info(overlay).backing_format == "raw"
    assert image_info(base, "raw").full_backing_filename is None


def test_a_file_that_never_answers_times_out_with_a_message(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(DiskError, match=r"qemu-img info .*fifo did not finish in 1s"):
        image_info(fifo, "raw", timeout=1)
    assert time.monotonic() - started < 10
