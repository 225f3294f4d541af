"""Drain under load: a bounded load generator through a real nginx while the pool scales in and out.

``run_drain_under_load`` starts a private Prometheus and nginx, runs the controller exactly as
``autoscaler run`` does (APScheduler, a SQLite store) on a local fleet of simulated Fun-ASR nodes
(``autoscaler.node`` processes, each a node agent in front of a simulated ASR server), and sends
transcriptions through nginx from a closed-loop load generator whose concurrency swings between
``low`` and ``high`` every half ``period_s``, so the pool scales out and back in several times.
``low`` is kept above one node's worth (12 streams against the demo policy's target of 7 per node)
so that scale-in drains nodes that still carry streams: with an idle victim a drain proves nothing.

Streams are of realistic length, compressed in time: audio lengths are drawn from a log-normal
around ``audio_median_s`` (minutes of meeting audio) and the nodes transcribe at
``real_time_factor`` (0.02: a 3-minute recording takes 3.6 s), so a few minutes of wall time hold
several hundred whole streams and several scale cycles.

What is counted (``DrainFigures``):

- **failed requests**: every transcription that did not end with HTTP 200 and a transcript:
  other statuses, connection refused, resets, timeouts;
- **cut streams**: failures of a stream that had reached a node which then went away under it: the
  node's "node is shutting down" answer, or nginx's 502 when the upstream closed mid-request;
- **terminated with streams in flight**: terminations the controller made at the drain timeout
  instead of after the node's streams reached zero (each such node may have cut streams).

Everything listens on 127.0.0.1 and is stopped (by pid) before the function returns. Used by
``tests/hardening/test_drain_under_load.py`` (short and ``-m long``) and
``benchmarks/drain_under_load.py``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from ruamel.yaml import YAML

from autoscaler.controller import TickOutcome
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.policy.load import load_policy
from autoscaler.providers.local import LocalProvider
from autoscaler.service import TickService
from autoscaler.wiring import build_runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_POLICY = REPO_ROOT / "policies" / "asr-demo.yaml"

#: What the node agent or the node answers when its process is stopping under a stream.
_SHUTTING_DOWN = ("shutting down", "draining")


@dataclass
class DrainFigures:
    """What one drain-under-load run measured."""

    duration_s: float
    requests: int = 0
    ok: int = 0
    failed: int = 0
    cut_streams: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    audio_seconds_served: float = 0.0
    stream_wall_p50_s: float | None = None
    stream_wall_max_s: float | None = None
    ticks: int = 0
    scale_out_ticks: int = 0
    scale_in_ticks: int = 0
    launched: int = 0
    terminated: int = 0
    terminated_in_flight: int = 0
    #: Seconds from leaving nginx to termination, per terminated node (longer than a tick or two:
    #: the drain waited for streams in flight).
    drain_seconds: list[float] = field(default_factory=list)
    peak_serving: int = 0
    min_serving_under_load: int | None = None
    tick_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class _Swing:
    """Where an event-driven swing is: the high half, cycles done, terminations before the low half."""

    high: bool = True
    done: int = 0
    terminated_before: int = 0


class _Load:
    """A closed-loop generator: ``workers`` threads, of which ``active()`` are sending at any moment."""

    def __init__(self, url: str, figures: DrainFigures, active: Callable[[], int], workers: int,
                 audio_median_s: float, seed: int) -> None:
        self.url = url
        self.figures = figures
        self.active = active
        self.audio_median_s = audio_median_s
        self.seed = seed
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.walls: list[float] = []
        self.threads = [threading.Thread(target=self._worker, args=(n,), name=f"drain-load-{n}", daemon=True)
                        for n in range(workers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _worker(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            while not self.stop.is_set():
                if n >= self.active():
                    self.stop.wait(0.1)
                    continue
                # Log-normal lengths, capped at 2.5x the median so the run's tail stays bounded.
                audio = min(2.5, rng.lognormvariate(0.0, 0.4)) * self.audio_median_s
                self._send(client, round(audio, 1))

    def _send(self, client: httpx.Client, audio: float) -> None:
        started = time.monotonic()
        kind: str | None
        cut = False
        try:
            response = client.post(self.url, json={"data": [audio, [], "zh", True]})
            text = response.text
            ok = response.status_code == 200 and '"data"' in text
            kind = None if ok else f"HTTP {response.status_code}"
            cut = not ok and (response.status_code == 502 or any(s in text for s in _SHUTTING_DOWN))
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            # The connection to nginx broke mid-request: nginx (never restarted here) would not do
            # that on its own, so the stream was cut under it.
            cut = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
        wall = time.monotonic() - started
        with self.lock:
            self.figures.requests += 1
            if kind is None:
                self.figures.ok += 1
                self.figures.audio_seconds_served += audio
                self.walls.append(wall)
            else:
                self.figures.failed += 1
                self.figures.cut_streams += int(cut)
                self.figures.failures[kind] = self.figures.failures.get(kind, 0) + 1


class _Watch:
    """Counts what the controller did, tick by tick (the ``on_tick`` of the TickService)."""

    def __init__(self, figures: DrainFigures, progress: TextIO | None, load: Callable[[], int],
                 started: Callable[[], float]) -> None:
        self.figures = figures
        self.progress = progress
        self.load = load
        self.started = started
        self.serving = 0
        self.under_load = False
        self.drained_at: dict[str, float] = {}

    def __call__(self, outcome: TickOutcome) -> None:
        f = self.figures
        f.ticks += 1
        states = list(outcome.nodes.values())
        self.serving = states.count("serving")
        f.peak_serving = max(f.peak_serving, self.serving)
        if self.under_load:
            f.min_serving_under_load = min(self.serving, f.min_serving_under_load or self.serving)
        f.scale_out_ticks += bool(outcome.launched or outcome.started)
        f.scale_in_ticks += bool(outcome.drained)
        f.launched += len(outcome.launched)
        f.terminated += len(outcome.terminated)
        f.terminated_in_flight += sum(1 for why in outcome.terminated.values() if "no stream" not in why)
        now = self.started()
        self.drained_at.update(dict.fromkeys(outcome.drained, now))
        f.drain_seconds += [round(now - self.drained_at.pop(i), 1) for i in outcome.terminated
                            if i in self.drained_at]
        f.tick_errors.extend(outcome.errors)
        if self.progress is not None:
            events = [f"{what} {', '.join(ids)}" for what, ids in (
                ("launch", outcome.launched), ("join", outcome.joined), ("drain", outcome.drained),
                ("terminate", list(outcome.terminated))) if ids]
            print(f"[{self.started():6.1f}s] streams wanted {self.load():3d} | serving {self.serving} "
                  f"booting {states.count('booting')} draining {states.count('draining')} | requests "
                  f"{f.requests} failed {f.failed}" + (f"  ← {'; '.join(events)}" if events else "")
                  + (f"  ERROR {'; '.join(outcome.errors)}" if outcome.errors else ""),
                  file=self.progress, flush=True)


def _policy(workdir: Path, nginx: EmbeddedNginx, prometheus: EmbeddedPrometheus, *, tick_s: float,
            real_time_factor: float, max_nodes: int, drain_timeout_s: float) -> Path:
    """The demo policy at a faster tempo, cold launches only, with this run's paths."""
    data = load_policy(BASE_POLICY).model_dump(mode="json", exclude_none=True)
    data.pop("warm_pool", None)  # every scale-in here ends in a termination: the case that can cut
    data["provider"].update(state_dir=str(workdir / "fleet"), load_delay=1.0,
                            real_time_factor=real_time_factor)
    data["metrics"].update(url=prometheus.url, file_sd_path=str(prometheus.targets_file))
    balancer = nginx.balancer_config().model_dump(mode="json", exclude_none=True)
    for key in ("max_fails", "fail_timeout", "backup_nodes"):
        balancer[key] = data["balancer"].get(key, balancer[key])
    data["balancer"] = balancer
    scaling = data["scaling"]
    scaling.update(tick=tick_s, max_nodes=max_nodes, min_nodes=1)
    scaling["behavior"]["scale_in"] = {"stabilization": 4.0, "policies": [{"nodes": 1, "period": 2.0}]}
    data["drain"]["timeout"] = drain_timeout_s
    path = workdir / "policy.yaml"
    with path.open("w") as handle:
        YAML().dump(data, handle)
    return path


def run_drain_under_load(
    *,
    duration_s: float = 25.0,
    period_s: float = 24.0,
    low: int = 12,
    high: int = 30,
    audio_median_s: float = 180.0,
    real_time_factor: float = 0.02,
    tick_s: float = 1.0,
    max_nodes: int = 5,
    seed: int = 3,
    cycles: int | None = None,
    drain_timeout_s: float = 60.0,
    progress: TextIO | None = None,
) -> DrainFigures:
    """Run the load for ``duration_s`` (after the first node serves), then let the streams finish.

    Concurrency is ``high`` for the first half of every ``period_s`` and ``low`` for the second.
    With ``cycles``, the swing follows the pool instead of the clock (the short version): ``high``
    until the pool has scaled out to serve it, then ``low`` until a node has been drained and
    terminated, ``cycles`` times; ``duration_s`` is then an upper bound. ``drain_timeout_s`` is the
    policy's drain timeout (a tiny one terminates nodes with streams in flight: the negative control
    that shows cuts are seen). Raises ``RuntimeError`` when no node serves within 60 s.
    """
    workdir = Path(tempfile.mkdtemp(prefix="autoscaler-drain-"))
    figures = DrainFigures(duration_s=duration_s)
    service: TickService | None = None
    fleet: LocalProvider | None = None
    load_started = [0.0]
    swing = _Swing()
    out_to = min(max_nodes, -(-high // 7))  # the demo policy's target: 7 streams per node

    def active() -> int:
        if not load_started[0]:
            return 0
        if cycles is not None:
            return high if swing.high else low
        phase = (time.monotonic() - load_started[0]) % period_s
        return high if phase < period_s / 2 else low

    def follow(outcome: TickOutcome) -> None:
        if cycles is None or not load_started[0]:
            return
        if swing.high and list(outcome.nodes.values()).count("serving") >= out_to:
            swing.high, swing.terminated_before = False, figures.terminated
        elif not swing.high and figures.terminated > swing.terminated_before:
            swing.high, swing.done = True, swing.done + 1

    try:
        with (
            EmbeddedPrometheus(workdir / "prometheus", scrape_interval_s=1.0) as prometheus,
            EmbeddedNginx(workdir / "nginx", upstream="fun_asr_backend") as nginx,
        ):
            runtime = build_runtime(
                _policy(workdir, nginx, prometheus, tick_s=tick_s, real_time_factor=real_time_factor,
                        max_nodes=max_nodes, drain_timeout_s=drain_timeout_s),
                f"sqlite:///{workdir / 'autoscaler.db'}",
            )
            fleet = LocalProvider.for_policy(runtime.watcher.current())
            t0 = time.monotonic()
            watch = _Watch(figures, progress, active, lambda: time.monotonic() - t0)

            def on_tick(outcome: TickOutcome) -> None:
                watch(outcome)
                follow(outcome)

            service = TickService(runtime, blocking=False, on_tick=on_tick)
            service.start()
            deadline = time.monotonic() + 60
            while watch.serving < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no node served within 60 s; node logs under {workdir}")
                time.sleep(0.2)
            load = _Load(f"{nginx.url}/api/predict/", figures, active, high, audio_median_s, seed)
            load_started[0] = time.monotonic()
            watch.under_load = True
            load.start()
            until = time.monotonic() + duration_s
            while time.monotonic() < until and (cycles is None or swing.done < cycles):
                time.sleep(0.2)
            figures.duration_s = round(time.monotonic() - load_started[0], 1)
            watch.under_load = False
            load.join()  # the streams in flight finish; the controller keeps ticking meanwhile
            if progress is not None:
                print(f"[{time.monotonic() - t0:6.1f}s] load stopped, every stream finished", file=progress)
            service.stop()
            runtime.close()
            walls = sorted(load.walls)
            if walls:
                figures.stream_wall_p50_s = round(walls[len(walls) // 2], 2)
                figures.stream_wall_max_s = round(walls[-1], 2)
            figures.audio_seconds_served = round(figures.audio_seconds_served, 1)
    finally:
        if service is not None:
            service.stop()
        if fleet is not None:
            fleet.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures
