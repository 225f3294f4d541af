"""The dry-run report's risk figures: per-request waits rebuilt from the replay's queue, per day and
hour of day, drain cuts, measured risk options, the policy's currency and distinct compare lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML
from sim_helpers import TRACKING_AWS

from autoscaler.policy.model import PoolPolicy
from autoscaler.simulate.plots import COLORS, DASHES, style
from autoscaler.simulate.recommend import recommend
from autoscaler.simulate.report import render_html
from autoscaler.simulate.risk import assess, fifo_waits
from autoscaler.simulate.run import dry_run
from autoscaler.simulate.scenario import load_scenario


def test_fifo_waits_follow_the_queue_first_in_first_out() -> None:
    """Each rise of the queue starts a wait, each fall ends the oldest; the waits sum to the queue's area."""
    unmet = np.array([0, 2, 3, 1, 0, 0, 1, 1], dtype=np.int64)
    waits = fifo_waits(unmet)
    # Two start at 1 and one at 2; falls at 3 (two) and 4 (one); the one from 6 is still waiting at 8.
    assert waits.starts.tolist() == [1, 1, 2, 6]
    assert waits.waits.tolist() == [2, 2, 2, 2]
    assert waits.still_waiting == 1
    rng = np.random.default_rng(3)
    queue = np.maximum(0, np.cumsum(rng.integers(-3, 4, 5000))).astype(np.int64)
    assert int(fifo_waits(queue).waits.sum()) == int(queue.sum())


def test_currency_is_an_iso_code_and_defaults_to_usd() -> None:
    """launch.currency takes three capital letters (ISO 4217 form), USD when absent."""
    data = YAML(typ="safe", pure=True).load(TRACKING_AWS.read_text())
    assert PoolPolicy.model_validate(data).launch.currency == "USD"
    data["launch"]["currency"] = "EUR"
    assert PoolPolicy.model_validate(data).launch.currency == "EUR"
    for bad in ("eur", "EURO", "€"):
        data["launch"]["currency"] = bad
        with pytest.raises(ValidationError, match="currency"):
            PoolPolicy.model_validate(data)


def test_compare_styles_differ_in_colour_and_dash() -> None:
    """The first eight schedules get eight different colours and eight different dash styles."""
    styles = [style(i) for i in range(8)]
    assert len({str(s["color"]) for s in styles}) == 8 == len(COLORS)
    assert len({str(s["linestyle"]) for s in styles}) == 8 == len(DASHES)


def test_a_day_that_waited_gets_risk_options_not_no_floor_needed(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    """Over a whole day that waited, the report weighs measured options and never says no floor is
    needed; its per-day and per-hour figures add up to the whole window's; money carries the currency."""
    data = YAML(typ="safe", pure=True).load(TRACKING_AWS.read_text())
    data["launch"]["currency"] = "EUR"
    policy = tmp_path / "eur.yaml"
    with policy.open("w") as handle:
        YAML(typ="safe", pure=True).dump(data, handle)
    # A whole day at 60 s ticks (1,440 ticks a replay) keeps the five replays quick.
    scenario = write_scenario(policy=str(policy), demand={"start": "2h", "duration": "1d"}, tick_seconds=60,
                              pool={"min_nodes": 1, "max_nodes": 20})
    result = dry_run(load_scenario(scenario))
    run = result.runs[0]
    risk = assess(run.replay, result.demand.replay_at)
    assert risk.total.violation_seconds >= 60, "the scenario must wait for the check to mean anything"
    assert sum(d.unmet_stream_seconds for d in risk.days) == risk.total.unmet_stream_seconds == int(
        run.replay.unmet.sum())
    assert sum(h.requests_waited for h in risk.hours) == risk.total.requests_waited
    assert sum(d.drain_cuts for d in risk.days) == risk.total.drain_cuts == run.replay.cut_streams
    assert max(h.wait_max_s for h in risk.hours) == risk.total.wait_max_s
    recs = recommend(result, {run.label: risk})
    text = " ".join(recs.lines)
    assert "No daily floor" not in text and "requests waited" in text
    assert recs.options, "a day that waited gets measured options"
    names = {o.name for o in recs.options}
    assert {"more headroom", "bigger warm pool"} <= names
    for option in recs.options:
        assert option.extra_cost == pytest.approx(option.cost - run.summary["cost"])
        # Replayed, not copied: a changed policy changes the bill.
        assert option.cost != run.summary["cost"]
    if risk.total.drain_cuts:
        assert f"{risk.total.drain_cuts:,} transcriptions were cut" in text
    assert "EUR" in text and "USD" not in text
    html = render_html(result, recs)
    assert "cost (EUR)" in html and "USD" not in html
    assert "The worst day" in html and "The worst hour" in html and "Per hour of day" in html
