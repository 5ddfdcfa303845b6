"""What a test needs installed, and what it does when it is not.

A part that an install step provides (a Debian package that tools/setup installs) is never a
reason for CI to pass quietly: under `CI=true` its absence fails the test and names the package,
because a skip there would hide a missing line in tools/debian-packages.txt. Elsewhere (a
developer's machine set up by hand) the test skips with the same words.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_install(what: str, packages: Iterable[str]) -> None:
    """Stop the test: a failure under CI, a skip elsewhere; the message says what to install."""
    names = " ".join(sorted(set(packages)))
    message = f"{what} (Debian: {names}; `tools/setup` installs it)"
    if in_ci():
        pytest.fail(f"not installed on this CI machine: {message}", pytrace=False)
    pytest.skip(message)


def require_commands(commands: Mapping[str, str]) -> None:
    """Each command (mapped to the Debian package that ships it) must be on PATH."""
    missing = {command: package for command, package in commands.items() if shutil.which(command) is None}
    if missing:
        missing_install(f"{', '.join(missing)} not found", missing.values())


def require_paths(paths: Mapping[str, str]) -> None:
    """Each file or directory (mapped to the Debian package that creates it) must exist."""
    missing = {path: package for path, package in paths.items() if not Path(path).exists()}
    if missing:
        missing_install(f"{', '.join(missing)} missing", missing.values())
