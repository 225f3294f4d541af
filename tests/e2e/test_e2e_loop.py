"""The whole loop on one machine: real Prometheus, real nginx, local simulated GPU nodes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.controller import TickOutcome
from autoscaler.domain import LaunchSpec, Lifecycle
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.providers.local import LocalProvider
from autoscaler.store import SqlStore
from autoscaler.testing import wait_until
from autoscaler.testing.controller_rig import POLICY, make_rig
from autoscaler.testing.embedded_fixtures import require_binary
from autoscaler.wiring import Runtime, build_runtime

POLICY_TEMPLATE = """
pool: e2e
provider: {{kind: local, state_dir: "{fleet}", load_delay: 2s}}
launch:
  model_version: fun-asr-nano-2512
  image: {{id: local}}
  instance_types: [{{name: local-gpu, streams: 4, price_per_hour: 0.6}}]
balancer: {{kind: nginx, upstream: fun_asr_backend, upstream_file: "{upstream}", nginx_conf: "{conf}",
           nginx_prefix: "{prefix}", max_fails: 2, fail_timeout: 30s}}
metrics: {{url: "{prometheus}", file_sd_path: "{targets}", staleness: 30s, timeout: 2s}}
health: {{boot_timeout: 60s, timeout: 1s}}
drain: {{timeout: 90s}}
scaling:
  min_nodes: 1
  max_nodes: 3
  tick: 1s
  checks:
    - name: streams-per-node
      type: target_tracking
      query: >-
        (sum(asr_active_streams{{pool="e2e"}}) + sum(asr_queued_streams{{pool="e2e"}}))
        / count(asr_model_loaded{{pool="e2e"}} == 1)
      target: 3
  behavior:
    scale_in: {{stabilization: 0s}}
"""


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Runtime, EmbeddedNginx, LocalProvider]]:
    """A controller on a local fleet, with its own nginx and Prometheus; everything stops afterwards."""
    require_binary("nginx")
    require_binary("prometheus")
    with (
        EmbeddedPrometheus(tmp_path / "prom", scrape_interval_s=1.0) as prometheus,
        EmbeddedNginx(tmp_path / "nginx") as nginx,
    ):
        policy_file = tmp_path / "e2e.yaml"
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
            fleet.stop_all("e2e")
            runtime.close()


def _upstream_ids(nginx: EmbeddedNginx) -> set[str]:
    return {b.instance_id for b in parse_upstream(nginx.upstream_file.read_text())}


def _tick_until(
    runtime: Runtime,
    nginx: EmbeddedNginx,
    done: Callable[[TickOutcome], bool],
    *,
    timeout_s: float,
    seen: list[TickOutcome],
) -> TickOutcome:
    """Tick once a second until ``done``; after every tick, check the balancer admits only healthy nodes."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = runtime.controller.tick()
        seen.append(outcome)
        assert outcome.ok, outcome.errors
        for instance_id in _upstream_ids(nginx):
            assert outcome.nodes.get(instance_id) == "serving", (instance_id, outcome.nodes)
        for instance_id, state in outcome.nodes.items():
            if state == "booting":
                assert instance_id not in _upstream_ids(nginx), "a booting node joined the upstream"
        if done(outcome):
            return outcome
        assert time.monotonic() < deadline, (
            f"timed out; last: {outcome.decision and outcome.decision.summary()}"
        )
        time.sleep(1.0)


def _transcribe(client: httpx.Client, url: str, audio_s: float) -> int:
    return client.post(f"{url}/api/predict/", json={"data": [audio_s, [], "zh", True]}).status_code


def test_scale_out_join_after_health_then_drain_first_scale_in(
    loop: tuple[Runtime, EmbeddedNginx, LocalProvider],
) -> None:
    """Load rises → nodes launch and join nginx only once healthy → load falls → a victim leaves the
    upstream, its long in-flight request completes with 200, and only then is it terminated."""
    runtime, nginx, fleet = loop
    seen: list[TickOutcome] = []
    serving = lambda o: sum(s == "serving" for s in o.nodes.values())  # noqa: E731
    _tick_until(runtime, nginx, lambda o: serving(o) == 1, timeout_s=40, seen=seen)
    store = runtime.store
    assert isinstance(store, SqlStore)

    # No keep-alive: a connection kept from before a reload would still be served by an old nginx
    # worker with the old (empty) upstream.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=120, limits=no_keepalive) as client, ThreadPoolExecutor(max_workers=16) as pool:
        # nginx's old workers answer from the previous (empty) upstream for a moment after a reload:
        # wait until every reload so far has retired its old workers, then probe through nginx.
        nginx.wait_reloaded(nginx.settled_reload_count(), timeout_s=30)
        deadline = time.monotonic() + 10
        while [_transcribe(client, nginx.url, 0.01) for _ in range(3)] != [200, 200, 200]:
            assert time.monotonic() < deadline, "nginx never routed to the first node"
            time.sleep(0.2)
        # Load rises: 10 transcriptions of 12 s on one node of 4 streams → 4 active + 6 queued.
        burst: list[Future[int]] = [pool.submit(_transcribe, client, nginx.url, 12.0) for _ in range(10)]
        (first,) = fleet.list_instances("e2e")
        probe = runtime.controller.adapters.probe
        wait_until(
            lambda: any(f.done() for f in burst) or (probe.active_streams(first) or 0) > 0,
            timeout_s=20,
            message="the burst reaching the node",
        )
        early = [f.result() for f in burst if f.done()]
        assert early == [], f"transcriptions answered before any could run: {early}"
        _tick_until(runtime, nginx, lambda o: serving(o) == 3, timeout_s=60, seen=seen)
        launched = [i for o in seen for i in o.launched]
        assert len(launched) == 3, launched  # the first node, then two for the burst (max 3)
        for instance_id in launched[1:]:
            history = [e["state"] for e in store.instance_history("e2e", instance_id)]
            assert history[:3] == ["launching", "booting", "serving"], history
        assert [f.result() for f in burst] == [200] * 10

        # Load falls to two long transcriptions: least_conn puts them on two different nodes.
        long_requests = [pool.submit(_transcribe, client, nginx.url, 25.0) for _ in range(2)]
        drained = _tick_until(runtime, nginx, lambda o: bool(o.drained), timeout_s=30, seen=seen).drained
        assert len(drained) == 2, drained  # 2 streams / target 3 → 1 node
        for victim in drained:
            assert victim not in _upstream_ids(nginx)
        busy = [
            v
            for v in drained
            if (
                runtime.controller.adapters.probe.active_streams(
                    next(i for i in fleet.list_instances("e2e") if i.id == v)
                )
                or 0
            )
            > 0
        ]
        assert len(busy) == 1, "one victim still carries a long request"
        (busy_victim,) = busy

        _tick_until(runtime, nginx, lambda o: busy_victim in o.terminated, timeout_s=60, seen=seen)
        assert all(f.done() for f in long_requests), "the busy victim was terminated mid-request"
        assert [f.result() for f in long_requests] == [200, 200]

    reasons = {i: why for o in seen for i, why in o.terminated.items()}
    assert set(reasons) == set(drained)
    assert all(why.startswith("drained") for why in reasons.values()), reasons
    wait_until(lambda: {i.id for i in fleet.list_instances("e2e")}.isdisjoint(drained), timeout_s=15)
    assert store.lifecycles("e2e")[busy_victim][0] == Lifecycle.TERMINATED


def test_no_scale_in_while_prometheus_is_empty_or_down(tmp_path: Path) -> None:
    """Three idle serving nodes are kept while Prometheus returns nothing, and while it is down."""
    require_binary("prometheus")
    with EmbeddedPrometheus(tmp_path / "prom", scrape_interval_s=1.0) as prometheus:
        source = PrometheusSource(prometheus.source_config(timeout=1))
        policy = POLICY.replace(
            "query: streams_per_node", """query: 'sum(asr_active_streams{pool="unit"})'"""
        )
        rig = make_rig(source, policy)
        spec = LaunchSpec(pool="unit", image="img-v2", model_version="v2", instance_types=("gpu",))
        rig.provider.launch(spec, 3, "seed")  # three nodes, admitted to the balancer by a real tick
        rig.running()
        rig.serve(*(i.id for i in rig.provider.list_instances("unit")))
        rig.controller.tick()
        assert len(rig.balancer.current()) == 3
        for _ in range(4):  # Prometheus up, but the query has no series: no data, not zero
            rig.clock.advance(15)
            outcome = rig.controller.tick()
            assert outcome.drained == [] and outcome.terminated == {}, outcome.decision
        prometheus.stop()
        for _ in range(4):  # Prometheus down
            rig.clock.advance(15)
            started = time.monotonic()
            outcome = rig.controller.tick()
            assert time.monotonic() - started < 5, "a down Prometheus must fail fast"
            assert outcome.drained == [] and outcome.terminated == {}, outcome.decision
        assert len(rig.balancer.current()) == 3
        source.close()
