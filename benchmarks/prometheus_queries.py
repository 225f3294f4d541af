"""How many Prometheus queries one controller tick makes, for pools of 10, 50 and 200 nodes.

Run from the repository root::

    .venv/bin/python benchmarks/prometheus_queries.py                 # pools of 10, 50, 200; 5 ticks each
    .venv/bin/python benchmarks/prometheus_queries.py --sizes 10,200,400 --ticks 10

A real Prometheus (``autoscaler.embedded.prometheus``, 1 s scrapes) finds the pool's nodes in the
file_sd target file the controller writes, and scrapes them: every node is one loopback port of one
small exporter process (``autoscaler.testing.many_nodes``) serving what a node agent exports. The
controller runs the shipped ``policies/asr-local.yaml`` (four checks), pinned to the pool's size
(min = max = nodes, so it never launches an instance Prometheus could not reach), with the other
adapters fakes. For each pool size it waits until Prometheus has scraped every node, then ticks and
counts the HTTP queries Prometheus itself served during each tick (its own
``prometheus_http_requests_total`` by handler: ``/api/v1/query`` and ``/api/v1/query_range``).

The claim (issue 13): queries per tick do not grow with the node count. Exit status 1 when they
differ between pool sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "asr-local.yaml"
HANDLERS = ("/api/v1/query", "/api/v1/query_range")


def served(prometheus_url: str) -> dict[str, float]:
    """Requests Prometheus has served so far per query handler (from its own ``/metrics``)."""
    text = httpx.get(f"{prometheus_url}/metrics", timeout=5.0).text
    counts = dict.fromkeys(HANDLERS, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name != "prometheus_http_requests":
            continue
        for sample in family.samples:
            handler = sample.labels.get("handler")
            if sample.name.endswith("_total") and handler in counts:
                counts[handler] += sample.value
    return counts


def scraped_nodes(prometheus_url: str, pool: str) -> int:
    """How many of the pool's nodes Prometheus has a fresh ``asr_model_loaded`` from."""
    response = httpx.get(
        f"{prometheus_url}/api/v1/query",
        params={"query": f'count(asr_model_loaded{{pool="{pool}"}} == 1)'},
        timeout=5.0,
    )
    result = response.json()["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def main() -> int:
    """Run the pools and print queries per tick for each; exit status 1 when they differ."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,50,200", help="pool sizes, comma-separated")
    parser.add_argument("--ticks", type=int, default=5, help="ticks counted per pool size")
    parser.add_argument("--policy", type=Path, default=POLICY, help="policy file (its queries are run)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )

    from autoscaler.balancers.fake import FakeBalancer
    from autoscaler.clock import SystemClock
    from autoscaler.controller import Adapters, Controller
    from autoscaler.domain import Backend, CloudState, Instance, Lifecycle
    from autoscaler.embedded.prometheus import EmbeddedPrometheus
    from autoscaler.metrics.file_sd import write_targets
    from autoscaler.metrics.prometheus import PrometheusSource
    from autoscaler.policy.load import load_policy
    from autoscaler.providers.fake import FakeProvider
    from autoscaler.store import MemoryStore
    from autoscaler.testing.controller_rig import FakeProbe
    from autoscaler.testing.many_nodes import ManyNodes

    base = load_policy(args.policy)
    pool = base.pool
    per_size: dict[int, list[dict[str, float]]] = {}
    with ManyNodes(max(sizes)) as exporter, EmbeddedPrometheus(scrape_interval_s=1.0) as prometheus:
        print(f"exporter: {len(exporter.ports)} nodes on loopback ports; prometheus at {prometheus.url}")
        for size in sizes:
            policy = base.model_copy(
                update={"scaling": base.scaling.model_copy(update={"min_nodes": size, "max_nodes": size})}
            )
            clock = SystemClock()
            provider, probe, store = FakeProvider(clock=clock), FakeProbe(), MemoryStore()
            backends = []
            for index, port in enumerate(exporter.ports[:size]):
                instance = Instance(
                    id=f"node-{index:04d}", pool=pool, instance_type=policy.launch.instance_types[0].name,
                    model_version=policy.launch.model_version, launch_token="bench",
                    launched_at=clock.now(), state=CloudState.RUNNING, address="127.0.0.1", port=port,
                    image=policy.launch.image.id,
                )
                provider.add_instance(instance)
                store.record_lifecycle(pool, instance.id, Lifecycle.SERVING, clock.now())
                probe.health[instance.id] = True
                probe.streams[instance.id] = 5.0
                backends.append(Backend(address="127.0.0.1", port=port, instance_id=instance.id))
            source = PrometheusSource(prometheus.source_config())
            controller = Controller(
                lambda policy=policy: policy,  # type: ignore[misc]
                Adapters(
                    provider=provider, balancer=FakeBalancer(backends), metrics=source, store=store,
                    probe=probe, clock=clock, history=source,
                    write_targets=partial(
                        write_targets, prometheus.targets_file, extra_labels={"pool": pool}
                    ),
                ),
            )
            controller.tick()  # writes the target file
            deadline = time.monotonic() + 60
            while (seen := scraped_nodes(prometheus.url, pool)) < size:
                if time.monotonic() > deadline:
                    print(f"only {seen} of {size} nodes scraped after 60 s", file=sys.stderr)
                    return 2
                time.sleep(0.5)
            up = sum(1 for t in prometheus.active_targets() if t.get("health") == "up")
            rows = []
            for _ in range(args.ticks):
                before = served(prometheus.url)
                started = time.perf_counter()
                outcome = controller.tick()
                seconds = time.perf_counter() - started
                after = served(prometheus.url)
                rows.append({**{h: after[h] - before[h] for h in HANDLERS}, "seconds": seconds,
                             "errors": float(len(outcome.errors))})
                time.sleep(1.0)
            source.close()
            per_size[size] = rows
            instant = [r["/api/v1/query"] for r in rows]
            ranged = [r["/api/v1/query_range"] for r in rows]
            print(
                f"{size:>4} nodes ({up} targets up): queries per tick {min(instant):.0f}-{max(instant):.0f} "
                f"instant + {min(ranged):.0f}-{max(ranged):.0f} range over {len(rows)} ticks; "
                f"tick median {statistics.median(r['seconds'] for r in rows) * 1000:.0f} ms; "
                f"errors {sum(r['errors'] for r in rows):.0f}",
                flush=True,
            )
    distinct = {(r["/api/v1/query"], r["/api/v1/query_range"]) for rows in per_size.values() for r in rows}
    verdict = "constant" if len(distinct) == 1 else f"NOT constant: {sorted(distinct)}"
    print(f"queries per tick across {', '.join(str(s) for s in sizes)} nodes: {verdict}")
    return 0 if len(distinct) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
