"""Fixtures for the fault and hostile-input tests: real nginx, real Prometheus, tiny backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autoscaler.testing.controller_rig import Rig, make_rig, serving_pool_of
from autoscaler.testing.embedded_fixtures import (  # noqa: F401 - pytest finds fixtures by name
    embedded_nginx,
    embedded_prometheus,
    start_exporter,
    start_http_backend,
)


@pytest.fixture
def rig() -> Rig:
    """A controller on fakes, with one policy and a movable clock."""
    return make_rig()


@pytest.fixture
def serving_pool(rig: Rig) -> Callable[[int], list[str]]:
    """Bring the pool to ``n`` serving nodes through real ticks; return their ids."""
    return serving_pool_of(rig)
