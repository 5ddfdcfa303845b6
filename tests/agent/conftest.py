"""Simulated nodes for the agent's tests (see simnode.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simnode import PROFILE, Node


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(profile: dict[str, Any] = PROFILE, name: str = "node") -> Node:
        nodes.append(Node(tmp_path / name, profile))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    return make_node()
