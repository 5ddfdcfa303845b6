"""A booted test guest as the real-kernel tests use it (own module: `conftest` is not importable
by name when several test folders have one)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qatvm.testbed.guest import Guest


@dataclass(frozen=True)
class Node:
    """A booted guest and its SR-IOV layout: the NVMe PF and its VFs (on nvme)."""

    guest: Guest
    pf: str
    vfs: list[str]

    def py(self, code: str, timeout: float = 60.0) -> str:
        """Run a snippet in the guest; fail the test with its traceback if it fails."""
        done = self.guest.python(code, timeout=timeout)
        assert done.returncode == 0, f"guest snippet failed ({done.returncode}):\n{done.stderr}"
        return done.stdout

    def json(self, code: str, timeout: float = 60.0) -> Any:
        """Run a snippet whose last output line is JSON, and return that value."""
        return json.loads(self.py(code, timeout).splitlines()[-1])
