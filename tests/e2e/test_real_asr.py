"""Real ASR nodes: nginx → node agent → a Gradio app → the pocketsphinx recogniser, on WAVs synthesised
with espeak-ng, in a local pool the autoscaler runs (real Prometheus, real nginx).

Each node is what the local provider starts for a pool whose policy names a ``server_command``:
``python -m autoscaler.node`` running the production node agent in front of
``python -m autoscaler.testing.gradio_asr`` on an internal port.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.controller import TickOutcome
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.providers.local import LocalProvider
from autoscaler.testing import read_counter, read_metric, wait_until
from autoscaler.testing.embedded_fixtures import require_binary
from autoscaler.testing.gradio_asr import transcript
from autoscaler.wiring import Runtime, build_runtime

pytest.importorskip("gradio", reason="gradio is not installed (it is in the `test` extra)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (`test` extra)")
pytest.importorskip("pocketsphinx", reason="pocketsphinx is not installed (it is in the `test` extra)")

POOL = "real-asr"
SENTENCES = {
    "door": "open the door please",
    "lights": "turn off the lights",
    "hello": "hello world",
    "call": "call five two one",
}
#: The seed's predict route on Gradio 4+ (``/api/predict/`` on Gradio 3, the seed's version).
PREDICT = "/gradio_api/api/predict/"

POLICY = """
pool: {pool}
provider:
  kind: local
  state_dir: "{fleet}"
  server_command: ["{python}", "-m", "autoscaler.testing.gradio_asr", "--port", "{{port}}",
                   "--streams", "{{streams}}"]
  server_probe_path: /gradio_api/info
launch:
  model_version: pocketsphinx-en-us
  image: {{id: local}}
  instance_types: [{{name: cpu-node, streams: 2, price_per_hour: 0.1}}]
balancer: {{kind: nginx, upstream: fun_asr_backend, upstream_file: "{upstream}", nginx_conf: "{conf}",
           nginx_prefix: "{prefix}", max_fails: 2, fail_timeout: 30s}}
metrics: {{url: "{prometheus}", file_sd_path: "{targets}", staleness: 30s, timeout: 2s}}
health: {{boot_timeout: 180s, timeout: 2s}}
drain: {{timeout: 60s}}
scaling:
  min_nodes: 1
  max_nodes: 2
  tick: 1s
  checks:
    - name: streams-per-node
      type: target_tracking
      query: >-
        (sum(asr_active_streams{{pool="{pool}"}}) + sum(asr_queued_streams{{pool="{pool}"}}))
        / count(asr_model_loaded{{pool="{pool}"}} == 1)
      target: 1.5
  behavior:
    scale_in: {{stabilization: 0s}}
"""


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One WAV per sentence, spoken by espeak-ng (22.05 kHz; the server resamples)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (scripts/install-system-packages.sh installs it)")
    folder = tmp_path_factory.mktemp("wavs")
    paths = {}
    for name, text in SENTENCES.items():
        paths[name] = folder / f"{name}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(paths[name]), text], check=True,
                       timeout=60, capture_output=True)
    return paths


@dataclass
class Pool:
    """The running loop: controller runtime, nginx, the local fleet, and what each tick did."""

    runtime: Runtime
    nginx: EmbeddedNginx
    fleet: LocalProvider
    seen: list[TickOutcome] = field(default_factory=list)

    def serving(self) -> list[str]:
        """Ids of the nodes the last tick reported serving."""
        return [i for i, s in self.seen[-1].nodes.items() if s == "serving"] if self.seen else []

    def tick(self) -> TickOutcome:
        """One controller tick (errors fail the test)."""
        outcome = self.runtime.controller.tick()
        assert outcome.ok, outcome.errors
        self.seen.append(outcome)
        return outcome

    def node_urls(self) -> dict[str, str]:
        """Each live node's agent URL, by instance id."""
        return {i.id: f"http://{i.endpoint}" for i in self.fleet.list_instances(POOL)}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """A controller on a local pool of real ASR nodes (min 1, max 2), with its own nginx and Prometheus."""
    require_binary("nginx")
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("real-asr")
    with (
        EmbeddedPrometheus(root / "prom", scrape_interval_s=1.0) as prometheus,
        EmbeddedNginx(root / "nginx") as nginx,
    ):
        policy_file = root / "real-asr.yaml"
        policy_file.write_text(POLICY.format(
            pool=POOL, fleet=root / "fleet", python=sys.executable, upstream=nginx.upstream_file,
            conf=nginx.conf_path, prefix=f"{nginx.root}/", prometheus=prometheus.url,
            targets=prometheus.targets_file,
        ))
        runtime = build_runtime(policy_file, f"sqlite:///{root / 'store.db'}")
        fleet = LocalProvider.for_policy(runtime.watcher.current(), kill_grace_s=5.0)
        loop = Pool(runtime, nginx, fleet)
        try:
            deadline = time.monotonic() + 240
            while len(loop.serving()) < 1:
                assert time.monotonic() < deadline, "the first real ASR node never became healthy"
                loop.tick()
                time.sleep(1.0)
            nginx.wait_reloaded(nginx.settled_reload_count(), timeout_s=30)
            yield loop
        finally:
            fleet.stop_all(POOL)
            runtime.close()


def _seed_request(client: httpx.Client, url: str, wav: Path) -> httpx.Response:
    """The seed client's request: its body, verbatim, with a hotword and language zh."""
    return client.post(f"{url}{PREDICT}", json={"data": [str(wav), ["hotword"], "zh", True]})


def _fresh_client() -> httpx.Client:
    # No keep-alive: a connection kept from before an nginx reload would reach an old worker.
    return httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))


def test_transcript_comes_back_through_nginx_and_the_agent(pool: Pool, wavs: dict[str, Path]) -> None:
    """The seed's request body through nginx → agent → Gradio → pocketsphinx returns the sentence
    espeak-ng spoke; so does gradio_client, by path and by uploading the audio file; the agent
    counts every one of them."""
    nginx_url = pool.nginx.url
    with _fresh_client() as client:
        response = _seed_request(client, nginx_url, wavs["door"])
        assert response.status_code == 200, response.text
        assert response.json()["data"] == ["open the door please"]
        print(f"\nseed body via nginx → agent → Gradio → pocketsphinx: {response.json()['data'][0]!r}")

    gradio = gradio_client.Client(nginx_url, verbose=False)
    by_path = gradio.predict(str(wavs["lights"]), ["hotword"], "zh", True, api_name="/predict")
    assert by_path == "turn off the lights"
    uploaded = gradio.predict(gradio_client.handle_file(str(wavs["call"])), True,
                              api_name="/transcribe_file")
    assert uploaded == "call 5 2 1"  # itn: digits as figures
    print(f"gradio_client via nginx: {by_path!r}, upload: {uploaded!r}")

    [(node_id, node_url)] = pool.node_urls().items()
    wait_until(lambda: read_metric(node_url, "asr_active_streams") == 0, timeout_s=10, message="idle")
    assert read_metric(node_url, "asr_requests_total", route="POST /gradio_api/api/predict/", code="200") >= 1
    assert read_metric(node_url, "asr_requests_total", route="POST /gradio_api/queue/join", code="200") == 2
    assert read_metric(node_url, "asr_model_loaded", instance_id=node_id, pool=POOL) == 1
    assert httpx.get(f"{node_url}/healthz").text == "healthy\n"


def test_metrics_rise_and_fall_with_the_load(pool: Pool, wavs: dict[str, Path]) -> None:
    """Twelve simultaneous transcriptions on a node of 2 streams: the agent shows 2 active and the
    rest queued while they run, all come back right, and the gauges fall back to zero."""
    [node_url] = pool.node_urls().values()
    peak = {"active": 0.0, "queued": 0.0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak["active"] = max(peak["active"], read_metric(node_url, "asr_active_streams"))
            peak["queued"] = max(peak["queued"], read_metric(node_url, "asr_queued_streams"))
            time.sleep(0.05)

    before = read_metric(node_url, "asr_request_duration_seconds_count")
    watcher = threading.Thread(target=watch)
    watcher.start()
    names = list(SENTENCES) * 3
    try:
        with _fresh_client() as client, ThreadPoolExecutor(max_workers=12) as workers:
            responses = list(workers.map(lambda n: _seed_request(client, pool.nginx.url, wavs[n]), names))
    finally:
        stop.set()
        watcher.join()
    assert [r.status_code for r in responses] == [200] * len(names)
    texts = [r.json()["data"][0] for r in responses]
    assert texts == [transcript(SENTENCES[n], itn=True) for n in names]
    print(f"\npeak during 12 simultaneous transcriptions: {peak}")
    assert peak["active"] == 2
    assert peak["queued"] >= 1
    wait_until(lambda: read_metric(node_url, "asr_active_streams") == 0
               and read_metric(node_url, "asr_queued_streams") == 0, timeout_s=10, message="idle again")
    assert read_metric(node_url, "asr_request_duration_seconds_count") == before + len(names)


def test_the_autoscaler_scales_a_pool_of_real_nodes(pool: Pool, wavs: dict[str, Path]) -> None:
    """Sustained load (6 clients in a loop) on one real node → the controller launches a second,
    which joins nginx once its agent says healthy and then serves transcriptions; when the load
    stops the pool drains back to one node."""
    stop = threading.Event()
    served: dict[str, int] = {}
    failures: list[str] = []

    def client_loop(name: str) -> None:
        with _fresh_client() as client:
            while not stop.is_set():
                response = _seed_request(client, pool.nginx.url, wavs[name])
                if response.status_code != 200 or response.json()["data"][0] != SENTENCES[name]:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                served[name] = served.get(name, 0) + 1

    loaders = [threading.Thread(target=client_loop, args=(n,)) for n in ["door", "lights", "hello"] * 2]
    for thread in loaders:
        thread.start()
    try:
        deadline = time.monotonic() + 240
        while len(pool.serving()) < 2:
            assert time.monotonic() < deadline, f"no second node: {pool.seen[-1].decision}"
            _report(pool, pool.tick())
            time.sleep(1.0)
        [second] = [i for i in pool.serving() if i not in pool.seen[0].nodes]
        second_url = pool.node_urls()[second]
        wait_until(lambda: read_counter(second_url, "asr_requests_total",
                                       route="POST /gradio_api/api/predict/", code="200") > 0,
                   timeout_s=60, message="the new node serving transcriptions through nginx")
        for _ in range(3):  # the load spread over both nodes
            time.sleep(1.0)
            _report(pool, pool.tick())
    finally:
        stop.set()
        for thread in loaders:
            thread.join(timeout=130)
    assert failures == []
    assert set(pool.serving()) == set(pool.node_urls())
    upstream = parse_upstream(pool.nginx.upstream_file.read_text())
    assert {b.instance_id for b in upstream} == set(pool.serving())

    deadline = time.monotonic() + 120
    while len(pool.node_urls()) > 1:
        assert time.monotonic() < deadline, f"did not scale in: {pool.seen[-1].decision}"
        _report(pool, pool.tick())
        time.sleep(1.0)
    terminated = {i: why for o in pool.seen for i, why in o.terminated.items()}
    assert len(terminated) == 1 and all(w.startswith("drained") for w in terminated.values()), terminated
    print(f"scaled 1 → 2 → 1 over {len(pool.seen)} ticks; transcriptions served: {served}")


def _report(pool: Pool, outcome: TickOutcome) -> None:
    """Print one tick: its decision, and each node's state and stream gauges (seen with -s)."""
    gauges = " ".join(
        f"{i}={outcome.nodes.get(i, '?')}(active {_metric_or_none(u, 'asr_active_streams')}, "
        f"queued {_metric_or_none(u, 'asr_queued_streams')})" for i, u in pool.node_urls().items())
    print(f"tick {outcome.decision.summary() if outcome.decision else '-'} | {gauges}")


def _metric_or_none(url: str, name: str) -> float | None:
    try:
        return read_metric(url, name)
    except (httpx.HTTPError, AssertionError):
        return None
