from __future__ import annotations

import io
import re
import stat
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from qatvm.domain.cloudinit import hostname_for, write_nocloud_iso
from qatvm.testing.installed import require_commands

USER_DATA = "#cloud-config\nusers:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 AAAA ops@example]\n"


def read_back(iso_path: Path, name: str, tree: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **{f"{tree}_path": f"/{name}"})
        return out.getvalue().decode()
    finally:
        iso.close()


def test_blkid_sees_the_label_cloud_init_looks_for(tmp_path: Path) -> None:
    require_commands({"blkid": "util-linux"})
    iso = tmp_path / "seed.iso"
    write_nocloud_iso(iso, instance_id="uid-1", hostname="vm-1", user_data=USER_DATA)
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(iso)], capture_output=True, text=True, check=True)
    fields = dict(line.split("=", 1) for line in probe.stdout.splitlines())
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == "cidata"


@pytest.mark.parametrize("tree", ["rr", "joliet"])
def test_user_data_and_meta_data_under_their_real_names(tmp_path: Path, tree: str) -> None:
    iso = tmp_path / "seed.iso"
    write_nocloud_iso(iso, instance_id="5f0c2b1e-uid", hostname="crypto-1", user_data=USER_DATA)
    assert read_back(iso, "user-data", tree) == USER_DATA
    meta = yaml.safe_load(read_back(iso, "meta-data", tree))
    assert meta == {"instance-id": "5f0c2b1e-uid", "local-hostname": "crypto-1"}


def test_writing_again_replaces_the_seed_whole(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_nocloud_iso(iso, instance_id="a", hostname="vm", user_data="#cloud-config\n{}\n")
    write_nocloud_iso(iso, instance_id="b", hostname="vm", user_data=USER_DATA)
    assert yaml.safe_load(read_back(iso, "meta-data", "rr"))["instance-id"] == "b"
    assert read_back(iso, "user-data", "rr") == USER_DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_the_seed_is_readable_by_its_owner_only_from_the_first_byte(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    # A partial seed an older agent left world-readable does not keep its mode.
    (tmp_path / "seed.iso.partial").write_bytes(b"old")
    (tmp_path / "seed.iso.partial").chmod(0o644)
    write_nocloud_iso(iso, instance_id="a", hostname="vm", user_data="#cloud-config\npassword: secret\n")
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("name", "hostname"),
    [
        ("crypto-1", "crypto-1"),
        ("web.prod.example", "web-prod-example"),
        ("a" * 63, "a" * 63),
        ("a" * 62 + ".b", "a" * 62),  # cut at 63 it would end in "-": dropped
        ("x" * 253, "x" * 63),
    ],
)
def test_hostname_is_one_dns_label_of_at_most_63_characters(name: str, hostname: str) -> None:
    assert hostname_for(name) == hostname
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", hostname_for(name))
