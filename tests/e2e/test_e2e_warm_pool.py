"""The warm pool end to end on one machine: real Prometheus, real nginx, local nodes stopped and started."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.controller import TickOutcome
from autoscaler.domain import CloudState, Lifecycle
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.providers.local import LocalProvider
from autoscaler.testing import read_metric, wait_until
from autoscaler.testing.embedded_fixtures import require_binary
from autoscaler.wiring import Runtime, build_runtime

#: Cold nodes load for 8 s; a node started after a stop loads from its disk in a tenth of that.
POLICY_TEMPLATE = """
pool: e2e-warm
provider: {{kind: local, state_dir: "{fleet}", load_delay: 8s, cached_load_fraction: 0.1}}
launch:
  model_version: fun-asr-nano-2512
  image: {{id: local}}
  instance_types: [{{name: local-gpu, streams: 4, price_per_hour: 0.6}}]
balancer: {{kind: nginx, upstream: fun_asr_backend, upstream_file: "{upstream}", nginx_conf: "{conf}",
           nginx_prefix: "{prefix}", max_fails: 2, fail_timeout: 30s}}
metrics: {{url: "{prometheus}", file_sd_path: "{targets}", staleness: 30s, timeout: 2s}}
health: {{boot_timeout: 90s, timeout: 1s}}
drain: {{timeout: 90s}}
scaling:
  min_nodes: 1
  max_nodes: 3
  tick: 1s
  checks:
    - name: streams-per-node
      type: target_tracking
      query: >-
        (sum(asr_active_streams{{pool="e2e-warm"}}) + sum(asr_queued_streams{{pool="e2e-warm"}}))
        / count(asr_model_loaded{{pool="e2e-warm"}} == 1)
      target: 3
  behavior:
    scale_in: {{stabilization: 0s}}
warm_pool:
  size: 2
  max_prepared: 3          # warm + in service: the pool empties as the fleet grows, refills as it shrinks
  start_timeout: 60s
"""

Loop = tuple[Runtime, EmbeddedNginx, LocalProvider]


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    """A controller with a warm pool on a local fleet, its own nginx and Prometheus; all stopped after."""
    require_binary("nginx")
    require_binary("prometheus")
    with (
        EmbeddedPrometheus(tmp_path / "prom", scrape_interval_s=1.0) as prometheus,
        EmbeddedNginx(tmp_path / "nginx") as nginx,
    ):
        policy_file = tmp_path / "e2e-warm.yaml"
        policy_file.write_text(
            POLICY_TEMPLATE.format(
                fleet=tmp_path / "fleet",
                upstream=nginx.upstream_file,
                conf=nginx.conf_path,
                prefix=f"{nginx.root}/",
                prometheus=prometheus.url,
                targets=prometheus.targets_file,
            )
        )
        runtime = build_runtime(policy_file, f"sqlite:///{tmp_path / 'store.db'}")
        fleet = LocalProvider.for_policy(runtime.watcher.current())
        try:
            yield runtime, nginx, fleet
        finally:
            fleet.stop_all("e2e-warm")
            runtime.close()


def _upstream_ids(nginx: EmbeddedNginx) -> set[str]:
    return {b.instance_id for b in parse_upstream(nginx.upstream_file.read_text())}


def _tick_until(
    runtime: Runtime,
    nginx: EmbeddedNginx,
    fleet: LocalProvider,
    done: Callable[[TickOutcome], bool],
    *,
    timeout_s: float,
    seen: list[tuple[float, TickOutcome]],
) -> TickOutcome:
    """Tick once a second until ``done``. After every tick: only serving nodes are in nginx's upstream,
    and no stopped, stopping or preparing instance ever is."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = runtime.controller.tick()
        seen.append((time.monotonic(), outcome))
        assert outcome.ok, outcome.errors
        upstream = _upstream_ids(nginx)
        for instance_id in upstream:
            assert outcome.nodes.get(instance_id) == "serving", (instance_id, outcome.nodes)
        down = {
            i.id
            for i in fleet.list_instances("e2e-warm")
            if i.state in (CloudState.STOPPED, CloudState.STOPPING)
        }
        warm = {i for i, state in outcome.nodes.items() if state in ("stopped", "preparing")}
        assert not (down | warm) & upstream, "a stopped or preparing instance is in the upstream"
        if done(outcome):
            return outcome
        assert time.monotonic() < deadline, (
            f"timed out; last: {outcome.decision and outcome.decision.summary()}"
        )
        time.sleep(1.0)


def _count(outcome: TickOutcome, state: str) -> int:
    return sum(s == state for s in outcome.nodes.values())


def _first(seen: list[tuple[float, TickOutcome]], test: Callable[[TickOutcome], bool]) -> float:
    return next(at for at, o in seen if test(o))


def _transcribe(client: httpx.Client, url: str, audio_s: float) -> int:
    return client.post(f"{url}/api/predict/", json={"data": [audio_s, [], "zh", True]}).status_code


def test_burst_absorbed_by_warm_starts_then_scale_in_refills_the_pool(loop: Loop) -> None:
    """The pool prepares two warm instances (cold launch, healthy, stopped, never in nginx); a burst
    starts both, and they serve from their disks sooner than the cold node did; when load falls the
    drained victims are stopped back into the warm pool instead of terminated."""
    runtime, nginx, fleet = loop
    seen: list[tuple[float, TickOutcome]] = []
    ready = _tick_until(
        runtime,
        nginx,
        fleet,
        lambda o: _count(o, "serving") == 1 and _count(o, "stopped") == 2,
        timeout_s=90,
        seen=seen,
    )
    cold_id = next(i for i, s in ready.nodes.items() if s == "serving")
    cold_s = _first(seen, lambda o: cold_id in o.joined) - _first(seen, lambda o: cold_id in o.launched)
    warm = sorted(i for i, s in ready.nodes.items() if s == "stopped")
    wait_until(
        lambda: (
            {i.id for i in fleet.list_instances("e2e-warm") if i.state == CloudState.STOPPED} == set(warm)
        ),
        timeout_s=20,
        message="prepared instances stopped",
    )
    store = runtime.store
    for instance_id in warm:
        history = [e["state"] for e in store.instance_history("e2e-warm", instance_id)]
        assert history == ["preparing", "stopped"], history

    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=120, limits=no_keepalive) as client, ThreadPoolExecutor(max_workers=16) as pool:
        nginx.wait_reloaded(nginx.settled_reload_count(), timeout_s=30)
        deadline = time.monotonic() + 10
        while [_transcribe(client, nginx.url, 0.01) for _ in range(3)] != [200, 200, 200]:
            assert time.monotonic() < deadline, "nginx never routed to the first node"
            time.sleep(0.2)
        # A burst: 10 transcriptions of 15 s on one node of 4 streams → 4 active + 6 queued.
        burst: list[Future[int]] = [pool.submit(_transcribe, client, nginx.url, 15.0) for _ in range(10)]
        probe = runtime.controller.adapters.probe
        (first,) = (i for i in fleet.list_instances("e2e-warm") if i.id == cold_id)
        wait_until(lambda: (probe.active_streams(first) or 0) > 0, timeout_s=20, message="the burst arriving")
        mark = len(seen)
        _tick_until(runtime, nginx, fleet, lambda o: _count(o, "serving") == 3, timeout_s=60, seen=seen)
        burst_ticks = seen[mark:]
        started = [i for _, o in burst_ticks for i in o.started]
        assert sorted(started) == warm, "the burst is absorbed by the two warm instances"
        assert [i for _, o in burst_ticks for i in o.launched] == [], "no cold launch while warm ones exist"
        warm_s = max(
            _first(burst_ticks, lambda o, i=i: i in o.joined)
            - _first(burst_ticks, lambda o, i=i: i in o.started)
            for i in warm
        )
        print(f"cold launch to serving {cold_s:.1f} s; warm start to serving {warm_s:.1f} s")
        assert warm_s < cold_s, (warm_s, cold_s)
        for instance in fleet.list_instances("e2e-warm"):
            if instance.id in warm:
                url = f"http://{instance.endpoint}"
                assert read_metric(url, "asr_model_from_cache") == 1
                assert read_metric(url, "asr_model_load_seconds") == pytest.approx(0.8)
        assert [f.result() for f in burst] == [200] * 10

        # Load falls to nothing: two victims drain, then go back into the pool (max_prepared 3 − 1 serving).
        mark = len(seen)
        _tick_until(
            runtime,
            nginx,
            fleet,
            lambda o: _count(o, "serving") == 1 and _count(o, "stopped") == 2,
            timeout_s=90,
            seen=seen,
        )
    after = seen[mark:]
    drained = [i for _, o in after for i in o.drained]
    reused = [i for _, o in after for i in o.stopped]
    assert len(drained) == 2 and sorted(reused) == sorted(drained)
    assert [i for _, o in after for i in o.terminated] == []
    wait_until(
        lambda: (
            {i.id for i in fleet.list_instances("e2e-warm") if i.state == CloudState.STOPPED} == set(drained)
        ),
        timeout_s=20,
        message="victims stopped",
    )
    for victim in drained:
        assert store.lifecycles("e2e-warm")[victim][0] == Lifecycle.STOPPED
        assert victim not in _upstream_ids(nginx)
