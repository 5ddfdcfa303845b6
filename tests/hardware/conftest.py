from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qatvm.hardware import HardwareProfile, generate
from qatvm.node.sysfs import Sysfs, open_sysfs


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., Sysfs]:
    """Generate a simulated node from a profile (a dict is validated) and open its sysfs."""

    def make(profile: dict[str, Any] | HardwareProfile, name: str = "node") -> Sysfs:
        root = tmp_path / name / "sys"
        generate(HardwareProfile.model_validate(profile), root)
        return open_sysfs(root)

    return make
