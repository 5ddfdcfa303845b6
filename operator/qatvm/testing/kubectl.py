"""Drive the real kubectl binary the way a user does, and read its answers."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        self.result = result


@dataclass(frozen=True)
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(
        self,
        *args: str,
        input: str | dict[str, Any] | list[dict[str, Any]] | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        if isinstance(input, dict):
            input = yaml.safe_dump(input)
        elif isinstance(input, list):
            input = yaml.safe_dump_all(input)
        argv = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any], extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", *extra, input=list(objects))

    def exists(self, *args: str) -> bool:
        return self.run("get", *args, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""

    def with_kubeconfig(self, kubeconfig: Path) -> Kubectl:
        return Kubectl(self.binary, kubeconfig)
