"""``autoscaler demo``: the whole loop on one machine, in minutes, without a cloud account.

It starts a real Prometheus and a real nginx as private processes, runs the controller on a
local fleet (simulated Fun-ASR nodes on 127.0.0.1) under APScheduler exactly as ``autoscaler run``
does, replays a load ramp through nginx, prints what happens as it happens, stops everything it
started, and returns a summary.

The ramp's shape is a rise, a plateau and a fall over ``duration``; its second-to-second texture
comes from a slice of the real twitter arrival trace in ``../shared/traces`` when it is there
(scaled down to a one-machine pool), and from a seeded Poisson process otherwise.
"""

from __future__ import annotations

import bz2
import io
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np
from ruamel.yaml import YAML

from autoscaler.controller import TickOutcome
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.errors import AutoscalerError
from autoscaler.policy.load import load_policy
from autoscaler.policy.model import LocalProviderConfig, PoolPolicy
from autoscaler.providers.local import LocalProvider
from autoscaler.service import TickService
from autoscaler.wiring import build_runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO_ROOT / "policies" / "asr-demo.yaml"
DEFAULT_TRACES = REPO_ROOT.parent / "shared" / "traces"
TWITTER_TRACE = "twitter-2021-08-per-second.tbz2"

#: Audio lengths (seconds) of the demo's transcriptions: short, so a few minutes show whole cycles.
AUDIO_MEDIAN_S = 6.0
AUDIO_MAX_S = 20.0
#: Concurrent streams at the ramp's peak: about five nodes' worth at the demo policy's target of 7.
PEAK_STREAMS = 32.0


class DemoError(AutoscalerError):
    """The demo cannot run here (a missing binary, a port it cannot get) or failed to start."""


def envelope(t: np.ndarray, duration: float) -> np.ndarray:
    """The ramp: quiet, rise to the peak, plateau, fall, quiet again (fractions of the peak)."""
    x = t / duration
    points_x = [0.0, 0.08, 0.35, 0.55, 0.72, 1.0]
    points_y = [0.12, 0.12, 1.0, 1.0, 0.08, 0.08]
    return np.interp(x, points_x, points_y)


def twitter_texture(traces_dir: Path | None, seconds: int) -> tuple[np.ndarray, str] | None:
    """A ``seconds``-long slice of the twitter per-second arrivals, normalised to mean 1, or None."""
    path = (traces_dir or DEFAULT_TRACES) / TWITTER_TRACE
    if not path.is_file():
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(bz2.decompress(path.read_bytes()))) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("workload.txt"))
            handle = archive.extractfile(member)
            if handle is None:
                return None
            counts = np.array(handle.read().split(), dtype=np.float64)
    except (OSError, tarfile.TarError, StopIteration, ValueError, EOFError):
        return None
    # A busy afternoon of day 3, clear of the archive's daily zero gap.
    start = 2 * 86400 + 14 * 3600
    window = counts[start : start + seconds]
    if len(window) < seconds or window.mean() <= 0:
        return None
    return np.clip(window / window.mean(), 0.3, 3.0), f"{TWITTER_TRACE} seconds {start}..{start + seconds}"


def arrival_schedule(
    duration: float, traces_dir: Path | None, seed: int = 7
) -> tuple[list[tuple[float, float]], str]:
    """(send time, audio seconds) of every request in the replay, and where its texture came from."""
    rng = np.random.default_rng(seed)
    seconds = int(duration)
    t = np.arange(seconds, dtype=np.float64)
    mean_audio = AUDIO_MEDIAN_S * float(np.exp(0.5 * 0.5**2))
    rate = envelope(t, duration) * PEAK_STREAMS / mean_audio
    texture = twitter_texture(traces_dir, seconds)
    source = "built-in ramp (Poisson arrivals)"
    if texture is not None:
        rate = rate * texture[0]
        source = f"built-in ramp × {texture[1]}"
    counts = rng.poisson(rate)
    schedule: list[tuple[float, float]] = []
    for second, count in enumerate(counts):
        for offset in np.sort(rng.uniform(0, 1, size=int(count))):
            audio = float(min(AUDIO_MAX_S, rng.lognormal(np.log(AUDIO_MEDIAN_S), 0.5)))
            schedule.append((second + float(offset), round(audio, 2)))
    return schedule, source


@dataclass
class LoadStats:
    """What the load generator saw."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, latency: float, error: str | None = None) -> None:
        """One finished request."""
        with self.lock:
            self.in_flight -= 1
            if ok:
                self.ok += 1
                self.latencies.append(latency)
            else:
                self.failed += 1
                key = error or "error"
                self.errors[key] = self.errors.get(key, 0) + 1


def _post(client: httpx.Client, url: str, audio: float, stats: LoadStats) -> None:
    started = time.monotonic()
    try:
        response = client.post(url, json={"data": [audio, [], "zh", True]})
        ok = response.status_code == 200
        stats.record(ok, time.monotonic() - started, None if ok else f"HTTP {response.status_code}")
    except httpx.HTTPError as exc:
        stats.record(False, time.monotonic() - started, type(exc).__name__)


def _demo_policy(
    policy: PoolPolicy, workdir: Path, nginx: EmbeddedNginx, prometheus: EmbeddedPrometheus
) -> Path:
    """The policy with this run's private paths and URLs, written where the watcher reads it."""
    if not isinstance(policy.provider, LocalProviderConfig):
        raise DemoError(f"the demo runs a local pool; {policy.pool} uses the {policy.provider.kind} provider")
    data = policy.model_dump(mode="json", exclude_none=True)
    data["provider"]["state_dir"] = str(workdir / "fleet")
    data["metrics"]["url"] = prometheus.url
    data["metrics"]["file_sd_path"] = str(prometheus.targets_file)
    balancer = nginx.balancer_config().model_dump(mode="json", exclude_none=True)
    for key in ("max_fails", "fail_timeout", "backup_nodes"):
        balancer[key] = data["balancer"].get(key, balancer[key])
    data["balancer"] = balancer
    path = workdir / "policy.yaml"
    with path.open("w") as handle:
        YAML().dump(data, handle)
    return path


class _Printer:
    """Live progress: one line per tick, and one per event."""

    def __init__(self, out: TextIO, stats: LoadStats, started: Callable[[], float]) -> None:
        self.out, self.stats, self.started = out, stats, started
        self.peak_nodes = 0
        self.scale_out_events = 0
        self.scale_in_events = 0
        self.terminated = 0
        self.ticks = 0
        self.tick_errors: list[str] = []
        self.nodes_over_time: list[tuple[float, int, int, int]] = []
        # When each node was launched cold or started warm, and how long it took to join nginx.
        self._asked: dict[str, tuple[str, float]] = {}
        self.to_serving: dict[str, list[float]] = {"cold": [], "warm": []}
        self.warm_starts = 0
        self.stopped_into_pool = 0

    def __call__(self, outcome: TickOutcome) -> None:
        self.ticks += 1
        states = list(outcome.nodes.values())
        serving, booting, draining = (states.count(s) for s in ("serving", "booting", "draining"))
        starting, stopped, preparing = (states.count(s) for s in ("starting", "stopped", "preparing"))
        booting += starting
        self.peak_nodes = max(self.peak_nodes, serving + booting)
        now = time.monotonic()  # not self.started(): the demo's clock restarts when the load starts
        for instance_id in outcome.launched:
            self._asked[instance_id] = ("cold", now)
        for instance_id in outcome.started:
            self._asked[instance_id] = ("warm", now)
        self.warm_starts += len(outcome.started)
        self.stopped_into_pool += sum(1 for why in outcome.stopped.values() if not why.startswith("prepared"))
        self.nodes_over_time.append((round(self.started(), 1), serving, booting, draining))
        if outcome.launched or outcome.started:
            self.scale_out_events += 1
        if outcome.drained:
            self.scale_in_events += 1
        self.terminated += len(outcome.terminated)
        self.tick_errors.extend(outcome.errors)
        decision = outcome.decision
        line = (
            f"[{self.started():6.1f}s] streams in flight {self.stats.in_flight:3d} | nodes serving {serving} "
            f"booting {booting} draining {draining} warm {stopped}"
            f"{f' (+{preparing} preparing)' if preparing else ''} | "
            f"{decision.direction.value + ' → ' + str(decision.desired) if decision else 'no decision'}"
        )
        events = []
        if outcome.started:
            events.append(f"warm start {', '.join(outcome.started)}")
        if outcome.launched:
            events.append(f"launch {', '.join(outcome.launched)}")
        if outcome.prepared:
            events.append(f"prepare {', '.join(outcome.prepared)}")
        if outcome.stopped:
            events.append(f"stopped into the warm pool {', '.join(outcome.stopped)}")
        if outcome.joined:
            joined = []
            for instance_id in outcome.joined:
                kind, asked = self._asked.pop(instance_id, ("", now))
                if kind:
                    self.to_serving[kind].append(now - asked)
                    joined.append(f"{instance_id} ({kind}, {now - asked:.1f} s)")
                else:
                    joined.append(instance_id)
            events.append(f"joined nginx {', '.join(joined)}")
        if outcome.drained:
            events.append(f"draining {', '.join(outcome.drained)}")
        if outcome.terminated:
            events.append(f"terminated {', '.join(outcome.terminated)}")
        if outcome.errors:
            events.append(f"error: {'; '.join(outcome.errors)}")
        print(line + (("  ← " + "; ".join(events)) if events else ""), file=self.out, flush=True)


def run_demo(
    *,
    duration_s: float = 180.0,
    traces_dir: Path | None = None,
    policy_path: Path | None = None,
    progress: TextIO,
    seed: int = 7,
) -> dict[str, Any]:
    """Run the demo and return its summary (see the module docstring)."""
    for binary in ("nginx", "prometheus"):
        if shutil.which(binary) is None:
            raise DemoError(
                f"{binary} is not installed: run scripts/install-system-packages.sh (Debian) first"
            )
    if duration_s < 30:
        raise DemoError("--duration must be at least 30 seconds to show a scale-out and a scale-in")
    try:
        policy = load_policy(policy_path or DEFAULT_POLICY)
    except AutoscalerError as exc:
        raise DemoError(str(exc)) from exc
    schedule, source = arrival_schedule(duration_s, traces_dir, seed)
    workdir = Path(tempfile.mkdtemp(prefix="autoscaler-demo-"))

    def say(text: str) -> None:
        print(text, file=progress, flush=True)

    say(f"demo: pool {policy.pool}, {duration_s:.0f}s of load, {len(schedule)} transcriptions from {source}")
    say(f"demo: working in {workdir}")
    stats = LoadStats()
    wall_start = time.monotonic()
    printer = _Printer(progress, stats, lambda: time.monotonic() - wall_start)
    fleet: LocalProvider | None = None
    service: TickService | None = None
    try:
        with (
            EmbeddedPrometheus(workdir / "prometheus", scrape_interval_s=1.0) as prometheus,
            EmbeddedNginx(
                workdir / "nginx",
                upstream=policy.balancer.upstream
                if policy.balancer.kind == "nginx"
                else "fun_asr_backend",
            ) as nginx,
        ):
            say(f"demo: prometheus {prometheus.url}, nginx {nginx.url}")
            runtime = build_runtime(
                _demo_policy(policy, workdir, nginx, prometheus), f"sqlite:///{workdir / 'autoscaler.db'}"
            )
            fleet = LocalProvider.for_policy(runtime.watcher.current())
            service = TickService(runtime, blocking=False, on_tick=printer)
            service.start()
            say("demo: waiting for the first node to pass its health check and join nginx ...")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _serving(nginx):
                time.sleep(0.5)
            if not _serving(nginx):
                raise DemoError("no node became healthy within 60 s; see the node logs under " + str(workdir))
            say("demo: load starts")
            wall_start = time.monotonic()
            _replay(schedule, f"{nginx.url}/api/predict/", stats, duration_s)
            say(
                "demo: load ended, every transcription answered; "
                "stopping the controller, fleet, nginx and prometheus"
            )
            service.stop()
            runtime.close()
    finally:
        if service is not None:
            service.stop()
        if fleet is not None:
            fleet.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    latencies = sorted(stats.latencies)
    summary = {
        "duration_s": round(duration_s, 1),
        "ticks": printer.ticks,
        "peak_nodes": printer.peak_nodes,
        "scale_out_events": printer.scale_out_events,
        "scale_in_events": printer.scale_in_events,
        "terminated_nodes": printer.terminated,
        "requests": stats.sent,
        "failed_requests": stats.failed,
        "request_errors": stats.errors,
        "latency_p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 2) if latencies else None,
        "tick_errors": len(printer.tick_errors),
        "load_source": source,
        "warm_starts": printer.warm_starts,
        "stopped_into_warm_pool": printer.stopped_into_pool,
        "cold_launch_to_serving_s": _median(printer.to_serving["cold"]),
        "warm_start_to_serving_s": _median(printer.to_serving["warm"]),
    }
    say(
        f"demo: done. peak {summary['peak_nodes']} nodes, {summary['scale_out_events']} scale-outs, "
        f"{summary['scale_in_events']} scale-ins, {summary['requests']} requests, "
        f"{summary['failed_requests']} failed, p95 latency {summary['latency_p95_s']} s"
    )
    if printer.warm_starts:
        say(
            f"demo: {printer.warm_starts} warm starts served in {summary['warm_start_to_serving_s']} s "
            f"(median) against {summary['cold_launch_to_serving_s']} s for a cold launch"
        )
    return summary


def _median(values: list[float]) -> float | None:
    """The median, rounded to 0.1 s, or None for no values."""
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 1) if ordered else None


def _serving(nginx: EmbeddedNginx) -> bool:
    try:
        return "instance_id=" in nginx.upstream_file.read_text()
    except OSError:
        return False


def _replay(schedule: list[tuple[float, float]], url: str, stats: LoadStats, duration_s: float) -> None:
    """Send every request at its time (bounded by ``duration_s``), then wait for the last to finish."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    with (
        httpx.Client(timeout=httpx.Timeout(330.0, connect=5.0), limits=limits) as client,
        ThreadPoolExecutor(max_workers=200, thread_name_prefix="demo-load") as pool,
    ):
        start = time.monotonic()
        for send_at, audio in schedule:
            if send_at > duration_s:
                break
            delay = start + send_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with stats.lock:
                stats.sent += 1
                stats.in_flight += 1
            pool.submit(_post, client, url, audio, stats)
