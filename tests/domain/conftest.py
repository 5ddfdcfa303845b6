"""Validation against libvirt's own RelaxNG schema, as `virt-xml-validate FILE domain` does it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

DOMAIN_SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


def _schema_errors(documents: list[str]) -> dict[int, str]:
    """Validate many documents in one xmllint run; return {index: xmllint's complaint} for failures.

    virt-xml-validate is a shell script around exactly `xmllint --noout --relaxng SCHEMA FILE`;
    one xmllint run per batch saves loading the large schema once per document.
    """
    with tempfile.TemporaryDirectory() as workdir:
        paths = []
        for index, document in enumerate(documents):
            path = Path(workdir) / f"domain-{index}.xml"
            path.write_text(document)
            paths.append(path)
        done = subprocess.run(
            ["xmllint", "--noout", "--relaxng", str(DOMAIN_SCHEMA), *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
        )
    return {
        index: "\n".join(line for line in done.stderr.splitlines() if line.startswith(str(path)))
        for index, path in enumerate(paths)
        if f"{path} validates" not in done.stderr
    }


@pytest.fixture(scope="session")
def schema_errors() -> Callable[[list[str]], dict[int, str]]:
    if shutil.which("xmllint") is None or not DOMAIN_SCHEMA.exists():
        pytest.fail("xmllint and libvirt's schemas are required: apt-get install libxml2-utils libvirt-clients")
    return _schema_errors
