"""Fixtures for the local ECS endpoint's own tests: dummy env credentials, a started endpoint that
verifies signatures with them, and a real SDK client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from autoscaler.testing.ecs_endpoint import EcsEndpoint, dummy_credentials


@pytest.fixture
def credentials() -> Iterator[tuple[str, str]]:
    """Dummy access keys in the environment, where the SDK's default chain finds them."""
    with dummy_credentials() as pair:
        yield pair


@pytest.fixture
def ecs(credentials: tuple[str, str]) -> Iterator[EcsEndpoint]:
    """An endpoint on an ephemeral port that verifies every signature against the dummy keys."""
    key_id, secret = credentials
    with EcsEndpoint(credentials={key_id: secret}) as endpoint:
        yield endpoint


@pytest.fixture
def client(ecs: EcsEndpoint) -> Any:
    """The real SDK client for the endpoint."""
    return ecs.sdk_client()
