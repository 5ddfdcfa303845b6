"""Shared by tests/ and e2e/: tests marked `kubelet` need real nodes, so they run only in the
pass that has them (QATVM_E2E_KUBELET=1; tools/test runs that pass after the first)."""

from __future__ import annotations

import os

import pytest

from qatvm.testing.cluster import KUBELET_ENV


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get(KUBELET_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"needs real nodes: runs with {KUBELET_ENV}=1 (README, Testing)")
    for item in items:
        if item.get_closest_marker("kubelet"):
            item.add_marker(skip)
