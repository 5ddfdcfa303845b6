"""The images a real node of the local cluster loads: the pod sandbox (`pause`) and qatvm itself.

There is no registry here: both are OCI archives in the machine-wide cache, imported into each
node's containerd before its kubelet starts. `pause` is a static binary built from
tools/pause/pause.c and packed here; the qatvm image is what tools/image builds from the
Containerfile.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from qatvm.paths import cache_dir, project_root

PAUSE_IMAGE = "localhost/qatvm-pause:1"
QATVM_IMAGE = "docker.io/library/qatvm"


class ImageError(RuntimeError):
    """An image could not be built; the message says which step and why."""


def _blob(layout: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add(layout: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))


def pause_archive() -> Path:
    """The pause image as an OCI archive, built once per source version."""
    source = project_root() / "tools" / "pause" / "pause.c"
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    archive = cache_dir() / "images" / f"pause-{key}.oci.tar"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    binary = archive.with_suffix(".bin")
    built = subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)], capture_output=True, text=True
    )
    if built.returncode != 0:
        raise ImageError(f"building pause failed (needs gcc and libc6-dev):\n{built.stderr[-2000:]}")

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as layer:
        info = layer.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with open(binary, "rb") as handle:
            layer.addfile(info, handle)
    binary.unlink()
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    compressed = gzip.compress(layer_tar.getvalue(), mtime=0)

    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, mode="w") as layout:
        layer = _blob(layout, compressed)
        config = _blob(
            layout,
            _json(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                }
            ),
        )
        manifest = _blob(
            layout,
            _json(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
                }
            ),
        )
        _add(layout, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest,
                    "annotations": {"io.containerd.image.name": PAUSE_IMAGE, "org.opencontainers.image.ref.name": "1"},
                }
            ],
        }
        _add(layout, "index.json", _json(index))
    partial.rename(archive)
    return archive


def qatvm_archive(tag: str = "latest") -> Path:
    """The qatvm image as an OCI archive: tools/image builds it, or finds it in its cache."""
    built = subprocess.run(
        [str(project_root() / "tools" / "image"), "--tag", tag], stdout=subprocess.PIPE, stderr=sys.stderr, text=True
    )
    if built.returncode != 0:
        raise ImageError(f"tools/image failed (exit {built.returncode}); its output is above")
    return Path(built.stdout.strip().splitlines()[-1])
