"""Fixtures for provider tests: local providers in a temporary state dir, all nodes stopped after a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from autoscaler.domain import LaunchSpec
from autoscaler.policy.model import LocalProviderConfig
from autoscaler.providers.local import LocalProvider

LOCAL_POOL = "asr-local-test"
LOCAL_TYPES = ("local-gpu", "local-gpu-large")


@pytest.fixture
def local_config(tmp_path: Path) -> LocalProviderConfig:
    """A local fleet in a temporary state dir whose nodes load their model in 0.3 s."""
    return LocalProviderConfig(state_dir=str(tmp_path / "local-fleet"), load_delay=timedelta(seconds=0.3))


@pytest.fixture
def local_launch_spec() -> LaunchSpec:
    """A launch spec for the local test pool, with one custom tag."""
    return LaunchSpec(pool=LOCAL_POOL, image="local", model_version="fun-asr-nano-2512",
                      instance_types=LOCAL_TYPES, tags={"team": "asr"})


@pytest.fixture
def make_local_provider(local_config: LocalProviderConfig) -> Iterator[Callable[..., LocalProvider]]:
    """Build LocalProviders on the test's state dir (keywords as for LocalProvider; 1 s kill grace).

    After the test, every node of every pool in the state dir is stopped.
    """
    made: list[LocalProvider] = []

    def make(**options: Any) -> LocalProvider:
        provider = LocalProvider(local_config, LOCAL_POOL, **({"kill_grace_s": 1.0} | options))
        made.append(provider)
        return provider

    yield make
    cleaner = made[0] if made else LocalProvider(local_config, LOCAL_POOL, kill_grace_s=1.0)
    for pool in {LOCAL_POOL, *cleaner.known_pools()}:
        cleaner.stop_all(pool)


@pytest.fixture
def local_provider(make_local_provider: Callable[..., LocalProvider]) -> LocalProvider:
    """A LocalProvider giving the first instance type 4 streams."""
    return make_local_provider(streams_by_type={LOCAL_TYPES[0]: 4})
