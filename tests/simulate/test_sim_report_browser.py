"""The dry-run report in a real headless Chromium (driven over DevTools on loopback): it renders,
the screenshot is not blank, and the browser reports no script error, console error or failed load.
Skipped when Chromium is absent locally; a failure in CI (``CI`` set), where the install script puts it."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from autoscaler.simulate.report import write_outputs
from autoscaler.simulate.run import dry_run
from autoscaler.simulate.scenario import load_scenario
from autoscaler.testing.browser import check_page, find_chromium


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; skip (locally) or fail (in CI) without one."""
    path = find_chromium()
    if path is None:
        message = "chromium is not installed (scripts/install-system-packages.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _not_blank(png: bytes) -> tuple[tuple[int, int], int]:
    """The screenshot's size and how many distinct colours it has (a blank page has one)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    return image.size, (len(colours) if colours is not None else 1 << 16)


def test_report_renders_in_headless_chromium_without_errors(
    chromium: str, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """A rendered report loads in Chromium with no JS/console error or failed load, and is not blank."""
    scenario = write_scenario(demand={"duration": "2h"})
    out = tmp_path / "out"
    write_outputs(dry_run(load_scenario(scenario)), out)
    check = check_page(out / "report.html", chromium=chromium, width=1280, height=1600)
    assert check.problems == []
    size, colours = _not_blank(check.screenshot)
    assert size == (1280, 1600)
    # Text, tables and the figures' lines: far more than a blank or an error page's few colours.
    assert colours > 200, colours


def test_the_browser_check_sees_script_errors_and_failed_loads(chromium: str, tmp_path: Path) -> None:
    """The same check reports an uncaught exception, a console error and a missing image (it can fail)."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><p>broken</p><img src="missing.png">'
        '<script>console.error("boom"); notDefined();</script></body></html>',
        encoding="utf-8",
    )
    check = check_page(page, chromium=chromium, width=400, height=300)
    assert any("notDefined" in e for e in check.exceptions)
    assert check.console_errors == ["boom"]
    assert any("ERR_FILE_NOT_FOUND" in f for f in check.failed_loads)
    size, colours = _not_blank(check.screenshot)
    assert size == (400, 300) and colours > 1
