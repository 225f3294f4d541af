"""The live forecast against a real Prometheus whose TSDB was backfilled with promtool: range queries
counted by Prometheus itself, too little history, NaN and gaps, forecast_only and forecast_and_scale."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.testing.controller_rig import POLICY, Rig, make_rig
from autoscaler.testing.embedded_fixtures import backfill, require_binary

pytestmark = pytest.mark.integration

DEMAND = 'sum(asr_demand{pool="fc"})'
SHORT = 'sum(asr_demand_short{pool="fc"})'
GAPPY = 'sum(asr_demand_gappy{pool="fc"})'
#: Demand after the controller's clock: a surge that has not happened yet, and must not be forecast.
SURGE = 300


def business(t: int) -> int:
    """Streams at epoch second ``t``: 80 from 09:00 to 17:00 UTC, 20 otherwise."""
    return 80 if 9 <= datetime.fromtimestamp(t, UTC).hour < 17 else 20


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPrometheus, datetime]]:
    """A Prometheus holding 3.5 days of demand a minute apart, and the morning of day 4 (08:50 UTC)."""
    require_binary("prometheus")
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
    morning = day0 + timedelta(days=3, hours=8, minutes=50)
    start, end = int(day0.timestamp()), int((day0 + timedelta(days=3, hours=12)).timestamp())
    short_from = int((day0 + timedelta(days=3)).timestamp())
    lines = ["# TYPE asr_demand gauge"]
    for t in range(start, end, 60):
        value = business(t) if t <= morning.timestamp() else SURGE
        lines.append(f'asr_demand{{pool="fc"}} {value} {t}')
    lines.append("# TYPE asr_demand_short gauge")
    lines += [f'asr_demand_short{{pool="fc"}} {business(t)} {t}' for t in range(short_from, end, 60)]
    lines.append("# TYPE asr_demand_gappy gauge")
    for i, t in enumerate(range(start, end, 60)):
        if 6 <= datetime.fromtimestamp(t, UTC).hour < 9:
            continue  # no data from 06:00 to 09:00, every day
        lines.append(f'asr_demand_gappy{{pool="fc"}} {"NaN" if i % 7 == 0 else business(t)} {t}')
    lines.append("# EOF")
    root = tmp_path_factory.mktemp("prometheus")
    server = EmbeddedPrometheus(root, scrape_interval_s=15.0, retention="30d")
    backfill("\n".join(lines) + "\n", server.data_dir)
    with server:
        yield server, morning


def range_requests(server: EmbeddedPrometheus) -> int:
    """Range queries Prometheus has answered so far (its own counter)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    return int(sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "prometheus_http_requests_total"
        and sample.labels.get("handler") == "/api/v1/query_range"
    ))


def rig_on(server: EmbeddedPrometheus, at: datetime, mode: str = "forecast_and_scale",
           query: str | None = None) -> Rig:
    """The rig's pool sized by a per-pool demand check on the real Prometheus, a forecast with lead 15 min."""
    forecast = f"{{mode: {mode}, check: demand, lead: 15m, refresh: 30m"
    forecast += f", query: '{query}'}}" if query else "}"
    text = POLICY.replace(
        "    - {name: streams, type: target_tracking, query: streams_per_node, target: 7}\n",
        f"    - {{name: demand, type: target_tracking, per: pool, query: '{DEMAND}', target: 10}}\n"
        f"  forecast: {forecast}\n",
    ).replace("max_nodes: 5", "max_nodes: 40")
    rig = make_rig(metrics=PrometheusSource(server.source_config()), policy_text=text)
    rig.clock.at = at
    return rig


def last_forecast(rig: Rig) -> tuple[str, dict[str, object]]:
    """The last tick's forecast reason message and its recorded forecast."""
    tick = rig.store.recent_ticks("unit", limit=1)[0]
    message = next(r["message"] for r in tick["decision"]["reasons"] if r["kind"] == "forecast")
    return message, tick["inputs"]["forecast"]


def test_one_range_query_per_refresh_not_per_tick(prometheus: tuple[EmbeddedPrometheus, datetime]) -> None:
    """Twenty ticks a minute apart cost Prometheus one range query; the refresh 30 min later one more."""
    server, morning = prometheus
    rig = rig_on(server, morning - timedelta(minutes=20))
    before = range_requests(server)
    for _ in range(20):
        outcome = rig.controller.tick()
        assert outcome.ok, outcome.errors
        rig.serve(*(i.id for i in rig.running()))
        rig.clock.advance(60)
    assert range_requests(server) - before == 1
    rig.clock.advance(10 * 60)
    rig.controller.tick()
    assert range_requests(server) - before == 2


def test_forecast_and_scale_raises_ahead_by_the_lead_from_the_past_only(
    prometheus: tuple[EmbeddedPrometheus, datetime],
) -> None:
    """At 08:40 (window to 08:55) the floor is the night's 2; at 08:50 the 09:00 rise, learned from three
    earlier days, raises 2 to 8 while the demand check still reads 20. The surge recorded after 08:50 is
    never read: the forecast's peak is 80, not 300."""
    server, morning = prometheus
    early = rig_on(server, morning - timedelta(minutes=10))
    outcome = early.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 2
    assert last_forecast(early)[0] == "forecast: 20.0 within 900s needs 2 nodes (2 already meets it)"
    rig = rig_on(server, morning)
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 8
    message, record = last_forecast(rig)
    assert message == "forecast: 80.0 within 900s needs 8 nodes; raises 2 to 8"
    values = [v for v in record["values"] if v is not None]  # type: ignore[union-attr]
    assert max(values) == 80.0
    assert record["history_s"] == pytest.approx(3 * 86400 + 8 * 3600 + 50 * 60, abs=600)


def test_forecast_only_records_but_does_not_change_the_count(
    prometheus: tuple[EmbeddedPrometheus, datetime],
) -> None:
    """forecast_only at 08:50: the floor of 8 is recorded and exported; the pool gets the check's 2."""
    server, morning = prometheus
    rig = rig_on(server, morning, mode="forecast_only")
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 2
    assert last_forecast(rig)[0] == "forecast: 80.0 within 900s needs 8 nodes (forecast_only: not applied)"
    registry = rig.controller.telemetry.registry
    assert registry.get_sample_value("autoscaler_forecast_floor_nodes", {"pool": "unit"}) == 8


def test_under_a_day_of_history_says_so_and_does_not_act(
    prometheus: tuple[EmbeddedPrometheus, datetime],
) -> None:
    """8.8 hours of history: the reason says how much, and the count is the check's alone."""
    server, morning = prometheus
    rig = rig_on(server, morning, query=SHORT)
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 2
    message, record = last_forecast(rig)
    assert message == ("no forecast floor: 8.8 h of history; the forecast needs at least 24 h before it acts")
    assert record["problem"] == message.removeprefix("no forecast floor: ")


def test_nan_and_gaps_in_history(prometheus: tuple[EmbeddedPrometheus, datetime]) -> None:
    """History with NaN samples and no data from 06:00 to 09:00 every day: at 07:50 the floor says it has
    no history for that time of day (not a zero); at 08:50 the 09:00 rise still raises the count."""
    server, morning = prometheus
    rig = rig_on(server, morning - timedelta(hours=1), query=GAPPY)
    outcome = rig.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 2
    message, record = last_forecast(rig)
    assert message == "no forecast floor: no history for this time of day"
    assert any("steps without data" in n for n in record["notes"])  # type: ignore[union-attr]
    values = record["values"]
    assert isinstance(values, list) and None in values
    assert all(v is None or math.isfinite(v) for v in values)
    later = rig_on(server, morning, query=GAPPY)
    outcome = later.controller.tick()
    assert outcome.ok and outcome.decision is not None and outcome.decision.desired == 8


def test_unreachable_prometheus_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    """No Prometheus at the address: the tick runs on, and the forecast step says it could not connect."""
    from autoscaler.embedded._process import free_port
    from autoscaler.policy.model import PrometheusConfig

    config = PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", timeout=timedelta(seconds=1))
    source = PrometheusSource(config)
    text = POLICY.replace(
        "    - {name: streams, type: target_tracking, query: streams_per_node, target: 7}\n",
        f"    - {{name: demand, type: target_tracking, per: pool, query: '{DEMAND}', target: 10}}\n"
        "  forecast: {mode: forecast_and_scale, check: demand}\n",
    )
    rig = make_rig(metrics=source, policy_text=text)
    outcome = rig.controller.tick()
    assert outcome.ok, outcome.errors
    message, _ = last_forecast(rig)
    assert message.startswith("no forecast floor: history unavailable: range query")
    assert message.endswith("cannot connect (is Prometheus running at that address?)")
