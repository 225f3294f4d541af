"""Fixtures of the dry-run tests: scenario files written into ``tmp_path`` and the Typer app with
``dry-run`` registered (constants and helpers are in ``sim_helpers``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML
from sim_helpers import BASE_SCENARIO, merged

from autoscaler.simulate.commands import register


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """``write_scenario(name="s.yaml", **changes)``: BASE_SCENARIO with changes, written as YAML."""

    def write(name: str = "scenario.yaml", **changes: Any) -> Path:
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as handle:
            YAML(typ="safe", pure=True).dump(merged(BASE_SCENARIO, changes), handle)
        return path

    return write


@pytest.fixture
def cli_app() -> typer.Typer:
    """A Typer app with only ``dry-run`` registered, as the main CLI registers it."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app
