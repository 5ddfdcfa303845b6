"""tools/benchmark.py under pytest, for `pytest -m bench -s`: it prints figures and asserts none."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from qatvm.paths import project_root


@pytest.mark.bench
@pytest.mark.timeout(7200)
def test_benchmark_runs_to_the_end() -> None:
    spec = importlib.util.spec_from_file_location("benchmark", project_root() / "tools" / "benchmark.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = benchmark  # its dataclasses look their module up
    spec.loader.exec_module(benchmark)
    assert benchmark.main([]) == 0
