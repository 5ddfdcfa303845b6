"""kstatus as Flux and kpt compute it: the `kstatus` tool built from sigs.k8s.io/cli-utils."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from qatvm.controlplane.binaries import binary


@dataclass(frozen=True)
class KStatus:
    status: str
    message: str


def kstatus(*objects: dict[str, Any]) -> list[KStatus]:
    document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    result = subprocess.run([binary("kstatus")], input=json.dumps(document), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"kstatus failed: {result.stderr.strip()}")
    return [KStatus(r["status"], r["message"]) for r in map(json.loads, result.stdout.splitlines())]
