"""Values a signal cannot physically take (negative, absurdly large, NaN, ±Inf) served by a real
Prometheus are *no data* with a reason, for many ticks: no node removed, no runaway scale-out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import structlog

from autoscaler.balancers.fake import FakeBalancer
from autoscaler.clock import SystemClock
from autoscaler.controller import Adapters, Controller
from autoscaler.domain import LaunchSpec, Sample
from autoscaler.embedded import EmbeddedPrometheus
from autoscaler.metrics.file_sd import write_target_groups
from autoscaler.metrics.plausible import IMPLAUSIBLE, bounds_for, plausible, plausible_streams
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.policy.load import parse_policy
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import POLICY, FakeProbe
from autoscaler.testing.embedded_fixtures import StaticExporter, wait_for_series

QUERY = "max(asr_streams_per_node)"


def _same(seen: float, want: float) -> bool:
    return (math.isnan(seen) and math.isnan(want)) or seen == want


def test_plausibility_bounds() -> None:
    """Negative, NaN, ±Inf and beyond-the-ceiling values become missing samples naming the value."""
    low, high = bounds_for("streams_per_node")
    assert (low, high) == (0.0, 1e6)
    assert bounds_for("gpu_memory_utilization")[1] == 100.0
    assert bounds_for(None, -1.0, 5.0) == (-1.0, 5.0)
    for value in (-5.0, -1e-9, 1e300, 1e6 + 1, math.nan, math.inf, -math.inf):
        refused = plausible(Sample(value), low, high)
        assert refused.value is None and refused.error and refused.error.startswith(IMPLAUSIBLE), value
    for value in (0.0, 7.0, 1e6):
        assert plausible(Sample(value), low, high) == Sample(value)
    assert plausible(Sample.missing("down"), low, high).error == "down"
    streams = [plausible_streams(v, 10) for v in (-1.0, math.nan, 1e300, 3.0, None)]
    assert streams == [None, None, None, 3.0, None]


@pytest.mark.integration
def test_absurd_prometheus_values_never_drain_nor_run_away(
    embedded_prometheus: EmbeddedPrometheus, start_exporter: Callable[[], StaticExporter],
) -> None:
    """Four serving nodes; Prometheus serves -5, 1e300, NaN, +Inf, -Inf and then nothing, eight
    ticks each: zero nodes drained or terminated, zero launched, and every tick says which check
    had no data and why (tick log, the check_no_data metric)."""
    exporter = start_exporter()
    exporter.set("asr_streams_per_node", 7.0)
    write_target_groups(embedded_prometheus.targets_file,
                        [{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"job": "exp"}}])
    wait_for_series(embedded_prometheus.url, QUERY, timeout_s=30.0)
    policy = parse_policy(POLICY.replace("query: streams_per_node", f"query: '{QUERY}'").encode(), "p.yaml")
    clock = SystemClock()
    provider, balancer, store, probe = FakeProvider(clock=clock), FakeBalancer(), MemoryStore(), FakeProbe()
    source = PrometheusSource(embedded_prometheus.source_config(timeout=2))
    controller = Controller(lambda: policy, Adapters(provider=provider, balancer=balancer, metrics=source,
                                                     store=store, probe=probe, clock=clock))
    spec = LaunchSpec(pool="unit", image="img-v2", model_version="v2", instance_types=("gpu",))
    for instance in provider.launch(spec, 4, "seed").instances:
        provider.set_state(instance.id, instance.state.RUNNING)
        provider.set_address(instance.id, "10.0.0.1", 7860)
        probe.health[instance.id], probe.streams[instance.id] = True, 7.0
    controller.tick()
    controller.tick()
    assert len(balancer.current()) == 4

    phases: list[tuple[str, float | None]] = [("-5", -5.0), ("1e300", 1e300), ("NaN", math.nan),
                                              ("+Inf", math.inf), ("-Inf", -math.inf), ("empty", None)]
    ticks = 0
    with structlog.testing.capture_logs() as logs:
        for label, value in phases:
            if value is None:
                exporter.remove("asr_streams_per_node")
                wait_for_series(embedded_prometheus.url, f"absent({QUERY})", timeout_s=30.0)
            else:
                exporter.set("asr_streams_per_node", value)
                wait_for_series(embedded_prometheus.url, QUERY, timeout_s=30.0,
                                predicate=lambda r, want=value: _same(float(r[0]["value"][1]), want))
            for _ in range(8):
                outcome = controller.tick()
                ticks += 1
                assert outcome.drained == [] and outcome.terminated == {} and outcome.launched == [], (
                    label, outcome.decision.summary() if outcome.decision else outcome.errors)
                sample = store.ticks[-1]["inputs"]["samples"]["streams"]
                assert sample["value"] is None and sample["error"], (label, sample)
                if label in ("-5", "1e300"):
                    assert sample["error"].startswith(IMPLAUSIBLE), sample
    assert ticks == 48 and len(provider.list_instances("unit")) == 4 and len(balancer.current()) == 4
    no_data = [e for e in logs if e["event"] == "check_no_data"]
    assert len(no_data) == ticks and all(e["check"] == "streams" and e["reason"] for e in no_data)
    registry = controller.telemetry.registry
    implausible = registry.get_sample_value("autoscaler_check_no_data_total",
                                            {"pool": "unit", "check": "streams", "kind": "implausible"})
    assert implausible is not None and implausible >= 16
    source.close()
