"""Where qatvm finds its checkout's tools and keeps machine-wide caches."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout holding `tools/` and `crds/` (the package lives in `operator/qatvm`)."""
    override = os.environ.get("QATVM_PROJECT_ROOT")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Machine-wide cache shared by every clone: Go builds and guest images, keyed by version."""
    override = os.environ.get("QATVM_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "qatvm"
