"""Helpers of the cloud ``once`` acceptance tests (issue 5): the policy copy, the CLI, load and nodes.

The tests drive the real command line (``python -m autoscaler.cli once``) in a subprocess against a
fake cloud that runs in the test process (a moto server, or the local ECS endpoint), a real nginx
and a real Prometheus. Everything here keeps traffic on loopback: the CLI's environment loses any
proxy or cloud setting of the developer's shell, and nodes listen on 127.x addresses only.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from ruamel.yaml import YAML

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.domain import Backend, Instance
from autoscaler.embedded import EmbeddedNginx
from autoscaler.metrics.file_sd import write_targets
from autoscaler.node.server import DURATION_BUCKETS, BackgroundNode, NodeConfig
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.store import SqlStore
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import StaticExporter, wait_for_series

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")

#: Environment variables the CLI subprocess never inherits: cloud settings of the developer's shell
#: (a profile or endpoint could send the test to a real account) and proxies (which would route the
#: node probes and SDK calls off this machine).
_SCRUBBED_PREFIXES = ("AWS_", "ALIBABA_CLOUD_", "ALICLOUD_", "MOTO_")
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"})

#: Longest a single CLI command may take before the test fails (a tick is seconds on loopback).
CLI_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------------- the policy copy
class PolicyCopy:
    """A copy of a shipped example policy, loaded at test time, with chosen values replaced.

    The example is read with ruamel.yaml's round-trip loader (its comments survive) and written to
    ``path`` by ``write``; nothing of the example is retyped, so a concurrent edit of the example's
    scaling section is what the test runs.
    """

    def __init__(self, example: Path, path: Path) -> None:
        self._yaml = YAML()
        self._yaml.indent(mapping=2, sequence=4, offset=2)  # the examples' own layout, for readable diffs
        self._yaml.width = 4096  # never re-wrap the examples' long lines
        self.example = example
        self.path = path
        self.document: Any = self._yaml.load(example.read_text(encoding="utf-8"))
        self.original: PoolPolicy = load_policy(example)

    def section(self, *keys: str) -> Any:
        """The mapping at ``keys`` (created empty where missing), for in-place edits."""
        node = self.document
        for key in keys:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        return node

    def point_balancer_at(self, nginx: EmbeddedNginx) -> None:
        """Replace the nginx file locations (environment-specific) with the embedded nginx's."""
        own = nginx.balancer_config()
        balancer = self.section("balancer")
        balancer["upstream_file"] = own.upstream_file
        balancer["nginx_conf"] = own.nginx_conf
        balancer["nginx_prefix"] = own.nginx_prefix

    def point_metrics_at(self, prometheus_url: str, file_sd_path: Path | None = None) -> None:
        """Replace the Prometheus URL and, when the example sets one, the target file's path."""
        metrics = self.section("metrics")
        metrics["url"] = prometheus_url
        if metrics.get("file_sd_path") is not None and file_sd_path is not None:
            metrics["file_sd_path"] = str(file_sd_path)

    def make_scale_in_immediate(self) -> None:
        """Scale-in without the stabilization window and rate limit (ticks here are seconds apart)."""
        scale_in = self.section("scaling", "behavior", "scale_in")
        scale_in["stabilization"] = "0s"
        scale_in.pop("policies", None)

    def drop_schedules(self) -> None:
        """Remove the scheduled floors/ceilings: they depend on the wall clock the test runs at."""
        self.section("scaling").pop("schedules", None)

    def drop_warm_pool(self) -> None:
        """Remove the warm pool: this sequence pins cold launches and drains (issue 5); warm pools have
        their own end-to-end test (tests/e2e/test_e2e_warm_pool.py)."""
        self.document.pop("warm_pool", None)

    def set_min_nodes(self, count: int) -> None:
        """Set ``scaling.min_nodes``."""
        self.section("scaling")["min_nodes"] = count

    def write(self) -> PoolPolicy:
        """Write the copy and return it validated by the policy loader the CLI uses."""
        buffer = io.StringIO()
        self._yaml.dump(self.document, buffer)
        self.path.write_text(buffer.getvalue(), encoding="utf-8")
        return load_policy(self.path)


# ------------------------------------------------------------------------------------------ the CLI
def cli_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without cloud or proxy settings, plus ``extra``."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key.lower() not in _PROXY_VARS
    }
    env.update(extra)
    return env


def run_cli(args: Iterable[str], *, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m autoscaler.cli ARGS`` with this interpreter; fails the test after ``CLI_TIMEOUT_S``."""
    return subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", *args],
        env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )


def run_once(policy: Path, store_url: str, *, env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``autoscaler once --json`` and return its outcome; the tick must succeed without errors."""
    done = run_cli(["once", "--policy", str(policy), "--store", store_url, "--json"], env=env, cwd=cwd)
    assert done.returncode == 0, (
        f"once exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    outcome: dict[str, Any] = json.loads(done.stdout)
    assert outcome["errors"] == [], outcome["errors"]
    print(f"once #{outcome['tick_id']}: launched={json.dumps(outcome['launched'])} "  # shown with -s
          f"drained={json.dumps(outcome['drained'])} terminated={json.dumps(outcome['terminated'])} "
          f"decision={outcome['decision']['summary']!r}")
    return outcome


def lower_count(count: int) -> int:
    """The lowered ``min_nodes`` for the scale-in step: two fewer, keeping at least one node."""
    if count < 2:
        pytest.fail(f"the example's min_nodes ({count}) leaves nothing to scale in")
    return max(1, count - 2)


def lifecycle(store_url: str, pool: str, instance_id: str) -> list[str]:
    """The lifecycle states the store recorded for one instance, oldest first."""
    store = SqlStore(store_url)
    try:
        return [event["state"] for event in store.instance_history(pool, instance_id)]
    finally:
        store.close()


def assert_loopback(addresses: Iterable[str | None]) -> None:
    """Every address is inside 127.0.0.0/8: the controller would probe it, so it must stay local."""
    for address in addresses:
        assert address is not None and ipaddress.ip_address(address) in LOOPBACK_NET, (
            f"instance address {address!r} is not a loopback address; refusing to let the CLI probe it"
        )


# -------------------------------------------------------------------------------------------- load
class LowLoad:
    """Light, steady traffic as the pool's exporters would report it, served by a ``StaticExporter``.

    One node's worth of series: a loaded model, one active stream, an empty queue, a quarter of the
    GPU memory in use, and a request-duration histogram whose counters grow (one 1.2 s request every
    ``interval_s``) so ``rate()`` and ``histogram_quantile()`` have data. Prometheus scrapes the
    exporter through its own target file with the label ``pool``; the controller's target file is
    elsewhere, so Prometheus never scrapes the nodes themselves.
    """

    def __init__(self, exporter: StaticExporter, pool: str, *, interval_s: float = 0.5) -> None:
        self.exporter = exporter
        self.pool = pool
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._requests = 0
        self._thread = threading.Thread(target=self._run, name="low-load", daemon=True)
        exporter.set("asr_model_loaded", 1)
        exporter.set("asr_active_streams", 1)
        exporter.set("asr_queued_streams", 0)
        exporter.set("DCGM_FI_DEV_FB_USED", 6144)
        exporter.set("DCGM_FI_DEV_FB_FREE", 18432)
        self._publish_histogram()

    def target(self) -> Instance:
        """The exporter as a scrape target of the pool."""
        return self.exporter.instance("low-load-exporter", pool=self.pool)

    def start(self) -> LowLoad:
        """Start the counters growing."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the counters (waits at most 5 s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._requests += 1
            self._publish_histogram()

    def _publish_histogram(self) -> None:
        seconds = 1.2
        for bound in (*DURATION_BUCKETS, float("inf")):
            count = self._requests if seconds <= bound else 0
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            self.exporter.set("asr_request_duration_seconds_bucket", count, {"le": le})


def serve_low_load(targets_file: Path, load: LowLoad) -> None:
    """Make Prometheus scrape ``load``'s exporter (its own target file, labelled with the pool)."""
    write_targets(targets_file, [load.target()])


def wait_for_checks(prometheus_url: str, policy: PoolPolicy, *, timeout_s: float = 30.0) -> None:
    """Wait until every check of ``policy`` has a finite answer in Prometheus (no data would hold)."""
    for check in policy.scaling.checks:
        wait_for_series(
            prometheus_url, check.query, timeout_s=timeout_s,
            predicate=lambda result: any(_finite(series) for series in result),
        )


def _finite(series: Mapping[str, Any]) -> bool:
    try:
        return math.isfinite(float(series["value"][1]))
    except (KeyError, IndexError, TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- nodes
class NodeFleet:
    """Simulated nodes standing in for the cloud's instances, each on the instance's own address."""

    def __init__(self) -> None:
        self.nodes: dict[str, BackgroundNode] = {}

    def start(self, instance_id: str, address: str, port: int, *, pool: str, model_version: str) -> None:
        """Serve a loaded node as ``instance_id`` on ``address:port`` (a loopback address only)."""
        assert_loopback([address])
        config = NodeConfig(instance_id=instance_id, pool=pool, model_version=model_version, load_delay_s=0.0)
        self.nodes[instance_id] = BackgroundNode(config, host=address, port=port)

    def active_streams(self, instance_id: str) -> int:
        """Streams the node is serving now."""
        return self.nodes[instance_id].node.active_streams

    def stop(self, instance_id: str) -> None:
        """Stop one node (its machine was terminated)."""
        node = self.nodes.pop(instance_id, None)
        if node is not None:
            node.stop()

    def stop_all(self) -> None:
        """Stop every node still running."""
        for instance_id in list(self.nodes):
            self.stop(instance_id)


class InFlightStreams:
    """One transcription of ``audio_s`` seconds in flight on each given node, sent straight to it."""

    def __init__(self, urls: Mapping[str, str], audio_s: float) -> None:
        self._client = httpx.Client(timeout=audio_s + 30.0, trust_env=False)
        self._pool = ThreadPoolExecutor(max_workers=max(len(urls), 1), thread_name_prefix="stream")
        self.futures: dict[str, Future[int]] = {
            instance_id: self._pool.submit(self._transcribe, url, audio_s)
            for instance_id, url in urls.items()
        }

    def _transcribe(self, url: str, audio_s: float) -> int:
        body = {"data": [audio_s, [], "auto", True]}
        return self._client.post(f"{url}/api/predict/", json=body).status_code

    def close(self) -> None:
        """Wait for the requests (bounded by the client timeout) and release the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def wait_for_streams(fleet: NodeFleet, instance_ids: Iterable[str], count: int, *, timeout_s: float) -> None:
    """Wait until each node serves exactly ``count`` streams."""
    ids = list(instance_ids)
    wait_until(lambda: all(fleet.active_streams(i) == count for i in ids), timeout_s=timeout_s,
               interval_s=0.1, message=f"{count} active stream(s) on {ids}")


# ---------------------------------------------------------------------------------------- scenario
class CloudView(Protocol):
    """What the scenario asks the fake cloud, the way an operator would look in its console."""

    def endpoints(self, instance_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """``(private address, serving port)`` of each instance."""
        ...

    def live(self, instance_ids: Iterable[str]) -> set[str]:
        """The ids among ``instance_ids`` the cloud still reports as pending or running."""
        ...


@dataclass
class OnceScenario:
    """The acceptance walk of issue 5 on one cloud, after the test checked the first launch.

    ``copy`` is the policy copy the CLI reads, ``policy`` its validated form, ``launched`` the
    instances the first ``once`` launched. Each step runs the real CLI and checks the outcome JSON,
    the nginx upstream, the cloud and the store.
    """

    copy: PolicyCopy
    policy: PoolPolicy
    store_url: str
    env: Mapping[str, str]
    cwd: Path
    nginx: EmbeddedNginx
    fleet: NodeFleet
    cloud: CloudView
    launched: list[str] = field(default_factory=list)
    ticks: int = 0
    #: Seconds of audio of the transcription in flight on every node when the count is lowered:
    #: long enough to outlast two CLI runs, so the drain visibly waits for it.
    drain_audio_s: float = 15.0

    def once(self) -> dict[str, Any]:
        """One ``autoscaler once --json`` with the copy and the store."""
        self.ticks += 1
        return run_once(self.copy.path, self.store_url, env=self.env, cwd=self.cwd)

    def upstream(self) -> list[Backend]:
        """The backends nginx's upstream file lists now."""
        return parse_upstream(self.nginx.upstream_file.read_text(encoding="utf-8"))

    def lifecycle(self, instance_id: str) -> list[str]:
        """The store's lifecycle of one instance."""
        return lifecycle(self.store_url, self.policy.pool, instance_id)

    def second_run_launches_nothing(self) -> None:
        """Nodes not answering yet: the run launches nothing, they stay booting and out of nginx."""
        outcome = self.once()
        assert outcome["launched"] == []
        assert outcome["decision"]["launch"] == 0
        assert outcome["terminated"] == {}
        assert outcome["nodes"] == dict.fromkeys(self.launched, "booting")
        assert self.upstream() == []
        assert self.cloud.live(self.launched) == set(self.launched)

    def nodes_join(self) -> None:
        """Nodes answer /healthz on their instance's address: the run launches nothing, all join nginx."""
        for instance_id, (address, port) in self.cloud.endpoints(self.launched).items():
            self.fleet.start(instance_id, address, port, pool=self.policy.pool,
                             model_version=self.policy.launch.model_version)
        outcome = self.once()
        assert outcome["launched"] == []
        assert outcome["decision"]["launch"] == 0
        assert sorted(outcome["joined"]) == sorted(self.launched)
        assert outcome["nodes"] == dict.fromkeys(self.launched, "serving")
        backends = self.upstream()
        assert sorted(b.instance_id for b in backends) == sorted(self.launched)
        assert sum(b.backup for b in backends) == min(getattr(self.policy.balancer, "backup_nodes", 0),
                                                      len(backends) - 1)
        # A transcription through nginx reaches a node of the pool's model version.
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            def transcribed() -> str | None:
                reply = client.post(f"{self.nginx.url}/api/predict/", json={"data": [0.2, [], "auto", True]})
                return str(reply.json()["data"][0]) if reply.status_code == 200 else None

            text = wait_until(transcribed, timeout_s=15.0, interval_s=0.2,
                              message="a transcription through nginx")
        assert text is not None and self.policy.launch.model_version in text

    def lower_count_drains_then_terminates(self, lower: int) -> list[str]:
        """With ``min_nodes`` lowered and light load, victims leave nginx, wait for their in-flight
        stream, and are terminated on a later run; the survivors keep serving. Returns the victims."""
        expected_victims = len(self.launched) - lower
        self.copy.set_min_nodes(lower)
        self.policy = self.copy.write()
        urls = {i: self.fleet.nodes[i].url for i in self.launched}
        streams = InFlightStreams(urls, self.drain_audio_s)
        try:
            wait_for_streams(self.fleet, self.launched, 1, timeout_s=15.0)

            drain = self.once()
            victims = sorted(drain["drained"])
            survivors = sorted(set(self.launched) - set(victims))
            assert len(victims) == expected_victims, drain
            assert drain["decision"]["desired"] == lower
            assert drain["launched"] == []
            assert drain["terminated"] == {}, "a victim must leave the balancer before it is terminated"
            assert sorted(b.instance_id for b in self.upstream()) == survivors
            assert all(self.lifecycle(v)[-1] == "draining" for v in victims)
            assert self.cloud.live(victims) == set(victims)

            waiting = self.once()
            # The victims' streams are still in flight after this run, so it saw them in flight.
            assert all(self.fleet.active_streams(v) == 1 for v in victims), (
                f"the {self.drain_audio_s:g} s transcriptions ended before the second drain run finished"
            )
            assert waiting["terminated"] == {}, "a node with a stream in flight was terminated"
            assert waiting["drained"] == []
            assert all(waiting["nodes"][v] == "draining" for v in victims)
            assert self.cloud.live(victims) == set(victims)

            wait_for_streams(self.fleet, victims, 0, timeout_s=self.drain_audio_s + 30.0)
            assert all(streams.futures[v].result(timeout=30.0) == 200 for v in victims), (
                "an in-flight transcription on a draining node did not finish"
            )
            finish = self.once()
            assert sorted(finish["terminated"]) == victims
            assert set(finish["terminated"].values()) == {"drained: no stream in flight"}
            assert finish["launched"] == []
            wait_until(lambda: not self.cloud.live(victims), timeout_s=15.0, interval_s=0.2,
                       message="the cloud shows the victims terminated")
            assert self.cloud.live(survivors) == set(survivors)
        finally:
            streams.close()
        for victim in victims:
            self.fleet.stop(victim)  # the machine is gone

        steady = self.once()
        assert (steady["launched"], steady["drained"], steady["terminated"]) == ([], [], {})
        assert steady["decision"]["desired"] == lower
        assert steady["nodes"] == dict.fromkeys(survivors, "serving")
        assert sorted(b.instance_id for b in self.upstream()) == survivors
        return victims

    def check_store(self, victims: list[str]) -> None:
        """The store holds each node's whole lifecycle, and ``autoscaler history`` lists every tick."""
        for instance_id in self.launched:
            expected = ["launching", "booting", "serving"]
            if instance_id in victims:
                expected += ["draining", "terminated"]
            assert self.lifecycle(instance_id) == expected, instance_id
        print(f"lifecycle of {victims[0]}: {json.dumps(self.lifecycle(victims[0]))}")  # shown with -s
        done = run_cli(["history", "--policy", str(self.copy.path), "--store", self.store_url, "--json"],
                       env=self.env, cwd=self.cwd)
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)) == self.ticks, done.stdout
        print(done.stdout)
