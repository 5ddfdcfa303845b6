"""prepare_disks on a simulated node's files: what a VM gets, who may read it, what it may not use."""

from __future__ import annotations

import io
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from qatvm.agent.config import AgentConfig
from qatvm.agent.vm_files import prepare_disks
from qatvm.api.vm import QatVirtualMachine
from qatvm.domain.disks import Overlays, image_info
from qatvm.node.images import ImageRefused

BASE = "/var/lib/qatvm/images/base.qcow2"


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    image = tmp_path / BASE.lstrip("/")
    image.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/shadow").write_text("root:secret\n")
    return AgentConfig(node="node-1", host_root=tmp_path)


def vm(name: str, path: str = BASE, user_data: str | None = "#cloud-config\npassword: s3cret\n") -> QatVirtualMachine:
    body: dict[str, Any] = {
        "metadata": {"namespace": "team-a", "name": name, "uid": str(uuid.uuid4())},
        "spec": {"qat": {"count": 1}, "image": {"path": path}, "cloudInit": {"userData": user_data}},
    }
    return QatVirtualMachine.model_validate(body)


def files(config: AgentConfig, name: str) -> tuple[Path, Path]:
    directory = config.state_dir / "vms" / f"qatvm-team-a_{name}"
    return directory / "overlay.qcow2", directory / "cidata.iso"


def meta_data(seed: Path) -> dict[str, str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
        return yaml.safe_load(out.getvalue())  # type: ignore[no-any-return]
    finally:
        iso.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_vm_gets_its_overlay_and_seed_readable_only_by_root_and_qemu(config: AgentConfig) -> None:
    name = "web." + "x" * 80
    disk, seed = files(config, name)
    prepare_disks(config.images, Overlays(), vm(name), disk, seed)
    assert image_info(disk).backing_filename == str(config.host_root / BASE.lstrip("/"))
    assert image_info(disk).backing_format == "qcow2"
    assert (mode(disk), mode(seed)) == (0o600, 0o600)
    # Traversable (QEMU opens the files by name), never listable or readable by others.
    assert mode(disk.parent) == mode(disk.parent.parent) == 0o711
    assert meta_data(seed)["local-hostname"] == "web-" + "x" * 59


def test_a_refused_image_leaves_no_files(config: AgentConfig) -> None:
    disk, seed = files(config, "thief")
    for path in ("/etc/shadow", "/var/lib/qatvm/images/../../../../etc/shadow"):
        with pytest.raises(ImageRefused, match="outside the image directories /var/lib/qatvm/images; put the image there"):
            prepare_disks(config.images, Overlays(), vm("thief", path), disk, seed)
    assert not disk.parent.exists()


def test_another_vms_overlay_is_no_image(config: AgentConfig) -> None:
    victim_disk, victim_seed = files(config, "victim")
    prepare_disks(config.images, Overlays(), vm("victim"), victim_disk, victim_seed)
    disk, seed = files(config, "thief")
    for stolen in (victim_disk, victim_seed):
        node_path = "/" + str(stolen.relative_to(config.host_root))
        with pytest.raises(ImageRefused, match=f"image.path {node_path} is outside the image directories"):
            prepare_disks(config.images, Overlays(), vm("thief", node_path), disk, seed)
    assert not disk.exists()
