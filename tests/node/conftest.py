"""Fixtures for the simulated node: in-process nodes on ephemeral ports, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from autoscaler.node import BackgroundNode, NodeConfig


@pytest.fixture
def start_node() -> Iterator[Callable[..., BackgroundNode]]:
    """Start nodes with ``NodeConfig`` overrides as keywords (no load delay unless given)."""
    running: list[BackgroundNode] = []

    def start(**overrides: Any) -> BackgroundNode:
        settings: dict[str, Any] = {
            "instance_id": "node-test-1", "pool": "asr-test", "model_version": "fun-asr-nano-2512",
            "load_delay_s": 0.0,
        }
        node = BackgroundNode(NodeConfig(**(settings | overrides)))
        running.append(node)
        return node

    yield start
    for node in running:
        node.stop()
