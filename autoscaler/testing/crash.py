"""SIGKILL the controller under load, again and again, and count what the kills cost.

The rig (``CrashRig``) is everything real: a private nginx and Prometheus, the local provider's
simulated ASR nodes, a SQLite (or PostgreSQL) store, and ``autoscaler run`` as a child process with
a one-second tick. A bounded load generator sends transcriptions through nginx with a demand that
swings between a trickle and five nodes' worth, so the pool scales out and in all the time.

Each kill aims at one step of a tick, chosen by a seeded generator and recognised from outside
the controller, then lands a few milliseconds later with SIGKILL:

- ``launch``: a node's log file appears (the provider opens it right before spawning the node);
- ``join``: the nginx upstream file gains a backend (written, reload and record still to come);
- ``drain``: the upstream file loses a backend (a scale-in victim leaving the balancer);
- ``terminate``: the provider's record file marks a node terminating (recorded in the store next);
- ``timer``: a random moment within the next two ticks (observe, decide, idle).

A step that does not happen within ``wait_s`` falls back to a timer kill, counted as ``timer``.
The controller is restarted at once. A sampler watches the world five times a second, from the
outside, with no help from the code under test: node processes by their command line (psutil),
the upstream file and nginx's reloads (the list nginx serves is the file as of its last reload),
the provider's record file and the store. It counts:

- ``leaked``: node processes the store does not know although a controller started after they
  appeared has completed its ticks (checked after each restart and at the end), or that it
  recorded terminated more than ``orphan_grace_s`` plus the provider's 5 s kill grace ago;
- ``duplicate_launches``: leaked nodes that saw another node launched while they ran (two live
  instances for one launch slot: the leak and its replacement), plus nodes beyond what their
  launch's tick decided (one token launched twice); ``launched_while_leaked`` counts every node
  launched while some leak ran;
- ``terminated_in_upstream``: nodes recorded terminated or dead while nginx still served them;
- ``above_max`` / ``below_min``: samples where the pool's live nodes (not being terminated)
  were outside ``[min_nodes, max_nodes]`` (below min only counts once the pool reached min);
- ``nginx_mismatch``: checks, after each restart (once the new controller finished two ticks) and
  at the end, where the list nginx serves differed from the backends of the last recorded tick;
- ``failed_requests``: transcriptions through nginx that did not answer 200; of them,
  ``closed_at_reload`` were sent on an idle keep-alive connection that nginx closed (no response)
  within 0.5 s of a reload, and ``failed_after_kill`` are the others sent within ``blame_s``
  seconds after a kill.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.domain import Lifecycle
from autoscaler.embedded import EmbeddedNginx, EmbeddedPrometheus
from autoscaler.errors import AutoscalerError
from autoscaler.store import SqlStore

POOL = "crash"
#: A controller started ahead of time: it imports the package (seconds on a busy 2-core machine),
#: then waits for a line on stdin before it runs ``autoscaler run`` with its arguments. Only the
#: import is done early; the process opens nothing before it is told to go, so the one before it
#: is dead (SIGKILLed and reaped) when it starts.
STANDBY = """
import sys
import autoscaler.cli, autoscaler.service, autoscaler.wiring
sys.stdin.readline()
sys.argv = ["autoscaler", *sys.argv[1:]]
autoscaler.cli.main()
"""
PHASES = ("launch", "join", "drain", "terminate", "timer")


@dataclass(frozen=True)
class CrashConfig:
    """One kill run's parameters (see the module docstring)."""

    workdir: Path
    kills: int = 50
    seed: int = 11
    store_url: str | None = None  # default: a SQLite file in workdir
    tick_s: float = 1.0
    min_nodes: int = 1
    max_nodes: int = 6
    #: Concurrent transcriptions swing between these, with this period (seconds).
    low_streams: int = 2
    peak_streams: int = 32
    period_s: float = 30.0
    #: How long a kill waits for its step before it falls back to a timer kill.
    wait_s: float = 6.0
    #: Least time a restarted controller runs before it may be killed again.
    min_uptime_s: float = 1.0
    orphan_grace_s: float = 4.0
    blame_s: float = 30.0
    #: Start each controller ahead of time (``STANDBY``) so a restart costs no import time.
    standby: bool = True
    #: Completed ticks a restarted controller records before the nginx check (and the next kill).
    ticks_after_restart: int = 2
    #: How long a restarted controller gets for those ticks before the rig goes on unchecked.
    restart_timeout_s: float = 30.0
    #: Ticks the controller runs after the last kill, with the load stopped, before the final check.
    settle_s: float = 12.0


@dataclass
class CrashFigures:
    """What a kill run measured."""

    kills: int = 0
    kills_by_phase: dict[str, int] = field(default_factory=dict)
    restarts_checked: int = 0
    duration_s: float = 0.0
    nodes_launched: int = 0
    scale_out_ticks: int = 0
    scale_in_ticks: int = 0
    leaked: int = 0
    leaked_ids: list[str] = field(default_factory=list)
    duplicate_launches: int = 0
    launched_while_leaked: int = 0
    terminated_in_upstream: int = 0
    terminated_in_upstream_ids: list[str] = field(default_factory=list)
    max_pool: int = 0
    above_max: int = 0
    below_min: int = 0
    samples: int = 0
    nginx_checks: int = 0
    nginx_mismatch: int = 0
    requests: int = 0
    failed_requests: int = 0
    failed_after_kill: int = 0
    #: Failed requests that were an idle keep-alive connection closed by nginx at a reload.
    closed_at_reload: int = 0
    request_errors: dict[str, int] = field(default_factory=dict)
    blame_s: float = 30.0
    #: Each failed request: its error, when, and how far from a kill and from an nginx reload.
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The figures as an aligned two-column table."""
        rows = [
            ("kills (SIGKILL)", str(self.kills)),
            ("  by step", ", ".join(f"{p} {self.kills_by_phase.get(p, 0)}" for p in PHASES)),
            ("restarts checked", str(self.restarts_checked)),
            ("run length", f"{self.duration_s:.0f} s"),
            ("nodes launched", str(self.nodes_launched)),
            ("ticks scaling out / in", f"{self.scale_out_ticks} / {self.scale_in_ticks}"),
            ("leaked instances", f"{self.leaked}" + (f" {self.leaked_ids}" if self.leaked_ids else "")),
            ("duplicate launches", str(self.duplicate_launches)),
            ("nodes launched while a leak ran", str(self.launched_while_leaked)),
            ("terminated while in nginx", f"{self.terminated_in_upstream}"
             + (f" {self.terminated_in_upstream_ids}" if self.terminated_in_upstream_ids else "")),
            ("pool size max seen", str(self.max_pool)),
            ("samples above max / below min", f"{self.above_max} / {self.below_min} of {self.samples}"),
            ("nginx list != last recorded", f"{self.nginx_mismatch} of {self.nginx_checks} checks"),
            ("requests through nginx", str(self.requests)),
            ("failed requests", f"{self.failed_requests} ({self.failed_after_kill} within "
             f"{self.blame_s:g} s after a kill, {self.closed_at_reload} idle connections closed at "
             "an nginx reload)"
             + (f" {self.request_errors}" if self.request_errors else "")),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def to_json(self) -> str:
        """The figures as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def policy_document(cfg: CrashConfig, nginx: EmbeddedNginx, prometheus: EmbeddedPrometheus) -> dict[str, Any]:
    """The pool's policy: local nodes that load in 1 s, nginx, Prometheus, a 1 s tick, quick scale-in."""
    streams = f'{{pool="{POOL}"}}'
    return {
        "pool": POOL,
        "provider": {"kind": "local", "state_dir": str(cfg.workdir / "fleet"), "load_delay": "1s"},
        "launch": {
            "model_version": "v1", "image": {"id": "local"},
            "instance_types": [{"name": "local-gpu", "streams": 10, "price_per_hour": 0.6}],
        },
        "balancer": nginx.balancer_config(max_fails=2, fail_timeout="10s").model_dump(
            mode="json", exclude_none=True),
        "metrics": {"url": prometheus.url, "staleness": "10s", "timeout": "2s",
                    "file_sd_path": str(prometheus.targets_file)},
        "health": {"path": "/healthz", "timeout": "1s", "boot_timeout": "30s"},
        "drain": {"timeout": "15s"},
        "scaling": {
            "min_nodes": cfg.min_nodes, "max_nodes": cfg.max_nodes, "tick": f"{cfg.tick_s:g}s",
            "checks": [{
                "name": "streams-per-node", "type": "target_tracking", "signal": "streams_per_node",
                "query": f"(sum(asr_active_streams{streams}) + sum(asr_queued_streams{streams}))"
                         f" / count(asr_model_loaded{streams} == 1)",
                "target": 7, "tolerance": 0.1,
            }],
            "behavior": {
                "scale_out": {"stabilization": "0s", "cooldown": "0s"},
                "scale_in": {"stabilization": "4s", "policies": [{"nodes": 1, "period": "2s"}]},
                "max_launching": 3, "min_node_lifetime": "0s",
            },
        },
    }


# ------------------------------------------------------------------------------------ the outside view
def node_processes(state_dir: Path) -> dict[str, int]:
    """Live (non-zombie) node processes whose model cache is under ``state_dir``: instance id → pid.

    Found by command line only, so the check does not depend on how the provider tags its nodes.
    """
    marker = str(state_dir)
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["cmdline"]):
        args: list[str] = proc.info["cmdline"] or []
        if "autoscaler.node" not in args or "--instance-id" not in args:
            continue
        if not any(a.startswith(marker) for a in args):
            continue
        with suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[args[args.index("--instance-id") + 1]] = proc.pid
    return found


def _upstream(path: Path) -> dict[str, str]:
    """The upstream file's backends: instance id → endpoint (none when unreadable)."""
    try:
        return {b.instance_id: b.endpoint for b in parse_upstream(path.read_text())}
    except (OSError, AutoscalerError):
        return {}


def _upstream_ids(path: Path) -> frozenset[str]:
    return frozenset(_upstream(path))


def _provider_records(state_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        text = (state_dir / "instances.json").read_text()
        records: dict[str, dict[str, Any]] = json.loads(text)["instances"]
    except (OSError, ValueError, KeyError):
        return {}
    return records


class _Reloads:
    """Counts nginx reloads from its error log, reading only what was appended."""

    def __init__(self, log: Path) -> None:
        self.log, self.offset, self.count = log, 0, 0

    def poll(self) -> int:
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return self.count
        cut = chunk.rfind(b"\n") + 1  # whole lines only
        self.count += chunk[:cut].count(b"signal 1 (SIGHUP) received")
        self.offset += cut
        return self.count


@dataclass
class _Load:
    """A closed-loop load generator: ``streams(t)`` workers each send one transcription at a time."""

    url: str
    cfg: CrashConfig
    stop: threading.Event = field(default_factory=threading.Event)
    #: (sent, finished, ok, error) per transcription, monotonic seconds.
    results: list[tuple[float, float, bool, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = 0.0

    def streams(self, t: float) -> int:
        swing = 0.5 - 0.5 * math.cos(2 * math.pi * t / self.cfg.period_s)
        return round(self.cfg.low_streams + (self.cfg.peak_streams - self.cfg.low_streams) * swing)

    def worker(self, index: int, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:
            while not self.stop.is_set():
                if index >= self.streams(time.monotonic() - self.started):
                    time.sleep(0.2)
                    continue
                sent = time.monotonic()
                audio = round(rng.uniform(0.5, 1.5), 2)
                try:
                    response = client.post(self.url, json={"data": [audio, [], "zh", True]})
                    ok, error = response.status_code == 200, f"HTTP {response.status_code}"
                except httpx.RemoteProtocolError as exc:
                    # "Server disconnected without sending a response": an idle keep-alive
                    # connection closed as the request went out (told apart below).
                    silent = "without sending a response" in str(exc)
                    ok, error = False, "closed-idle-connection" if silent else type(exc).__name__
                except httpx.HTTPError as exc:
                    ok, error = False, type(exc).__name__
                with self.lock:
                    self.results.append((sent, time.monotonic(), ok, "" if ok else error))

    @contextmanager
    def running(self, seed: int) -> Iterator[None]:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i, seed * 1000 + i), daemon=True,
                                    name=f"crash-load-{i}") for i in range(self.cfg.peak_streams)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=70)


class CrashRig:
    """Runs one kill run (``run``); see the module docstring."""

    def __init__(self, cfg: CrashConfig, progress: Any = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.state_dir = cfg.workdir / "fleet"
        self.store_url = cfg.store_url or f"sqlite:///{cfg.workdir / 'autoscaler.db'}"
        self.figures = CrashFigures()
        self.progress = progress
        self.controller: subprocess.Popen[bytes] | None = None
        self._standby: subprocess.Popen[bytes] | None = None
        self.target = ""
        self.kill_times: list[float] = []
        self.reload_times: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # What the sampler has seen.
        #: What nginx serves: the upstream file as of its last reload (instance id → endpoint).
        self._served: dict[str, str] = {}
        self._unknown_since: dict[str, float] = {}
        self._leaked: set[str] = set()
        #: Leaks that saw a node launched while they were alive (their slot was filled twice).
        self._replaced: set[str] = set()
        self._seen: set[str] = set()
        self._dead_in_upstream: set[str] = set()
        self._reached_min = False
        self._tokens: dict[str, str] = {}
        self._store: SqlStore | None = None

    def say(self, text: str) -> None:
        """A progress line."""
        if self.progress is not None:
            print(text, file=self.progress, flush=True)

    # ---------------------------------------------------------------------------------------- run
    def run(self) -> CrashFigures:
        """Start everything, kill the controller ``cfg.kills`` times under load, check, stop everything."""
        cfg = self.cfg
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with ExitStack() as stack:
            prometheus = stack.enter_context(
                EmbeddedPrometheus(cfg.workdir / "prometheus", scrape_interval_s=1.0))
            nginx = stack.enter_context(EmbeddedNginx(cfg.workdir / "nginx"))
            self.nginx = nginx
            self.reloads = _Reloads(nginx.error_log)
            self.policy_path = cfg.workdir / "policy.yaml"
            self.policy_path.write_text(json.dumps(policy_document(cfg, nginx, prometheus), indent=2))
            stack.callback(self._stop_fleet)
            stack.callback(self._stop_controller, signal.SIGKILL)
            self._start_controller()
            self._store = SqlStore(self.store_url, readonly=True) if self._wait_store() else None
            if self._store is not None:
                stack.callback(self._store.close)
            sampler = threading.Thread(target=self._sample_loop, name="crash-sampler", daemon=True)
            sampler.start()
            stack.callback(sampler.join, 5)
            stack.callback(self._stop.set)
            self._wait(lambda: bool(self._served), 60, "a first node serving through nginx")
            load = _Load(f"{nginx.url}/api/predict/", cfg)
            with load.running(cfg.seed):
                for number in range(1, cfg.kills + 1):
                    phase = self._kill_once()
                    at = time.monotonic() - started
                    self.say(f"kill {number:3d}/{cfg.kills}: {phase:9s} (aimed {self.target:9s})"
                             f" at {at:6.1f} s"
                             f" | pool {self._pool_size()} serving {len(self._served)}"
                             f" | leaked {len(self._leaked)} replaced {len(self._replaced)}")
                    self._start_controller()
                    self._check_after_restart()
            self.say("load stopped; letting the controller settle")
            time.sleep(cfg.settle_s)
            self._check_nginx()
            self._stop_controller(signal.SIGTERM)
            # Nodes SIGTERMed at the end finish exiting (the provider SIGKILLs after 5 s).
            deadline = time.monotonic() + max(self.cfg.orphan_grace_s, 6.0)
            while time.monotonic() < deadline and self._leaving():
                time.sleep(0.2)
            self._sample()
            self._final_check()
            self._stop.set()
            sampler.join(5)
            self._count_requests(load)
            self.figures.duration_s = time.monotonic() - started
        return self.figures

    def _wait(self, probe: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not probe():
            if time.monotonic() > deadline:
                log = (self.cfg.workdir / "controller.log")
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise AssertionError(f"crash rig: no {what} within {timeout_s:.0f} s\n{tail}")
            time.sleep(0.1)

    def _wait_store(self) -> bool:
        try:
            self._wait(lambda: self._ticks_since(None) > 0, 60, "first recorded tick")
        except AssertionError:
            raise
        return True

    def _ticks_since(self, since: datetime | None) -> int:
        """Completed (outcome recorded) ticks at or after ``since``."""
        try:
            store = self._store or SqlStore(self.store_url, readonly=True)
        except AutoscalerError:
            return 0
        try:
            ticks = store.recent_ticks(POOL, limit=20, since=since)
        except AutoscalerError:
            return 0
        finally:
            if store is not self._store:
                store.close()
        return sum(1 for t in ticks if "outcome" in t["decision"])

    # ---------------------------------------------------------------------------------- controller
    def _spawn_controller(self, standby: bool) -> subprocess.Popen[bytes]:
        args = ["run", "--policy", str(self.policy_path), "--store", self.store_url]
        command = [sys.executable, "-c", STANDBY, *args] if standby else [
            sys.executable, "-m", "autoscaler.cli", *args]
        with (self.cfg.workdir / "controller.log").open("ab") as out:
            return subprocess.Popen(command, cwd=self.cfg.workdir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE if standby else subprocess.DEVNULL)

    def _start_controller(self) -> None:
        """Start the next controller: the standby one when there is one (and prepare the next)."""
        if not self.cfg.standby:
            self.controller = self._spawn_controller(standby=False)
        else:
            ready = self._standby if self._standby is not None else self._spawn_controller(standby=True)
            assert ready.stdin is not None
            ready.stdin.write(b"go\n")
            ready.stdin.close()
            self.controller = ready
            self._standby = self._spawn_controller(standby=True)
        self.restarted_at = datetime.now(UTC)
        self.restarted_mono = time.monotonic()

    def _stop_controller(self, signum: int) -> None:
        standby, self._standby = self._standby, None
        if standby is not None and standby.poll() is None:
            standby.kill()  # never told to go: it holds nothing
            standby.wait()
        proc = self.controller
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signum)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _stop_fleet(self) -> None:
        """Every node process of the run's state dir, SIGTERM then SIGKILL (only ours, by pid)."""
        pids = list(node_processes(self.state_dir).values())
        for pid in pids:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([p for p in (self._proc(pid) for pid in pids) if p], timeout=5)
        for proc in alive:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    @staticmethod
    def _proc(pid: int) -> psutil.Process | None:
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    # --------------------------------------------------------------------------------------- kills
    def _kill_once(self) -> str:
        """Wait for the uptime floor, aim at a step, SIGKILL, wait for the process; return the step hit."""
        cfg = self.cfg
        rest = self.restarted_mono + cfg.min_uptime_s - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        target = self.rng.choice(PHASES)
        self.target = target
        phase = self._await_phase(target) if target != "timer" else None
        if phase is None:
            time.sleep(self.rng.uniform(0, 2 * cfg.tick_s))
            phase = "timer"
        else:
            time.sleep(self.rng.uniform(0, 0.03))
        assert self.controller is not None
        self.controller.send_signal(signal.SIGKILL)
        self.controller.wait()
        self.kill_times.append(time.monotonic())
        self.figures.kills += 1
        self.figures.kills_by_phase[phase] = self.figures.kills_by_phase.get(phase, 0) + 1
        return phase

    def _await_phase(self, target: str) -> str | None:
        """Poll (every 5 ms) for a step happening: ``target`` during the first half of ``wait_s``,
        any step after that; None when none does within ``wait_s``."""
        logs = self.state_dir / "logs"
        upstream = self.nginx.upstream_file
        rec_path = self.state_dir / "instances.json"

        def log_names() -> set[str]:
            try:
                return set(os.listdir(logs))
            except OSError:
                return set()

        def stamp(path: Path) -> tuple[int, int]:
            try:
                st = path.stat()
            except OSError:
                return (0, 0)
            return (st.st_mtime_ns, st.st_ino)

        def terminating() -> set[str]:
            return {i for i, r in _provider_records(self.state_dir).items() if r.get("terminating_at")}

        names, up_stamp, up_ids = log_names(), stamp(upstream), _upstream_ids(upstream)
        rec_stamp, ending = stamp(rec_path), terminating()
        started = time.monotonic()
        while time.monotonic() - started < self.cfg.wait_s:
            time.sleep(0.005)
            if self.controller is None or self.controller.poll() is not None:
                return None
            seen: set[str] = set()
            if log_names() - names:
                seen.add("launch")
            now_stamp = stamp(upstream)
            if now_stamp != up_stamp:
                ids = _upstream_ids(upstream)
                if ids - up_ids:
                    seen.add("join")
                if up_ids - ids:
                    seen.add("drain")
                up_stamp, up_ids = now_stamp, ids
            now_stamp = stamp(rec_path)
            if now_stamp != rec_stamp:
                now_ending = terminating()
                if now_ending - ending:
                    seen.add("terminate")
                rec_stamp, ending = now_stamp, now_ending
            names = log_names()
            if target in seen:
                return target
            if seen and time.monotonic() - started > self.cfg.wait_s / 2:
                return sorted(seen)[0]
        return None

    # -------------------------------------------------------------------------------------- checks
    def _check_after_restart(self) -> None:
        """Once the restarted controller completed its ticks: does nginx serve its recorded list?"""
        since = self.restarted_at
        deadline = time.monotonic() + self.cfg.restart_timeout_s
        wanted = self.cfg.ticks_after_restart
        while self._ticks_since(since) < wanted and time.monotonic() < deadline:
            if self.controller is not None and self.controller.poll() is not None:
                code = self.controller.returncode
                self.figures.notes.append(f"controller exited with {code} after restart")
                self._start_controller()
                since = self.restarted_at
            time.sleep(0.1)
        if self._ticks_since(since) < wanted:
            self.figures.notes.append(f"a restarted controller did not complete {wanted} ticks within "
                                      f"{self.cfg.restart_timeout_s:g} s")
            return
        self.figures.restarts_checked += 1
        self._confirm_leaks(self.restarted_mono)
        self._check_nginx()

    def _last_recorded_backends(self) -> frozenset[str] | None:
        if self._store is None:
            return None
        try:
            ticks = self._store.recent_ticks(POOL, limit=5)
        except AutoscalerError:
            return None
        for tick in ticks:
            outcome = tick["decision"].get("outcome")
            if outcome is not None and "balancer rejected" not in (tick.get("error") or ""):
                return frozenset(b for b in outcome.get("backends", []))
        return None

    def _served_endpoints(self) -> frozenset[str]:
        return frozenset(self._served.values())

    def _check_nginx(self) -> None:
        """Counted a mismatch only when it holds across 5 reads 0.3 s apart (a tick may be mid-way)."""
        self.figures.nginx_checks += 1
        for _ in range(5):
            self._sample()
            recorded = self._last_recorded_backends()
            if recorded is not None and recorded == self._served_endpoints():
                return
            time.sleep(0.3)
        self.figures.nginx_mismatch += 1
        self.figures.notes.append(
            f"nginx serves {sorted(self._served_endpoints())}, last recorded {sorted(recorded or [])}")

    def _lifecycles(self) -> dict[str, tuple[Lifecycle, datetime]] | None:
        if self._store is None:
            return None
        try:
            return self._store.lifecycles(POOL)
        except AutoscalerError:
            return None

    def _pool_size(self) -> int:
        return len(self._live_members(node_processes(self.state_dir), self._lifecycles() or {}))

    def _live_members(
        self, live: dict[str, int], recorded: dict[str, tuple[Lifecycle, datetime]]
    ) -> set[str]:
        """Live nodes not on their way out (recorded terminated, or terminating in the provider)."""
        ending = {i for i, r in _provider_records(self.state_dir).items() if r.get("terminating_at")}
        return {i for i in live if i not in ending
                and recorded.get(i, (Lifecycle.LAUNCHING, None))[0] != Lifecycle.TERMINATED}

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._sample()
            except Exception as exc:  # the sampler reports, it must not die silently mid-run
                self.figures.notes.append(f"sampler: {type(exc).__name__}: {exc}")

    def _sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        cfg, figures = self.cfg, self.figures
        now = time.monotonic()
        reloads_before = self.reloads.count
        in_file = _upstream(self.nginx.upstream_file)
        if self.reloads.poll() != reloads_before:
            self._served = in_file
            self.reload_times.append(now)
        live = node_processes(self.state_dir)
        recorded = self._lifecycles()
        if recorded is None:
            return
        records = _provider_records(self.state_dir)
        for iid, record in records.items():
            self._tokens.setdefault(iid, str(record.get("launch_token", "")))
        new = set(live) - self._seen
        self._seen |= set(live)
        figures.nodes_launched = len(self._seen)
        # Leak suspects: unknown to the store (a confirmed leak once a controller started after it
        # was first seen has finished its ticks without recording it; see _confirm_leaks).
        for iid in live:
            if iid in recorded:
                self._unknown_since.pop(iid, None)
            else:
                self._unknown_since.setdefault(iid, now)
        live_leaks = self._leaked & set(live)
        if new and live_leaks:
            # A launch while a leak was alive: the leak and that launch fill one slot twice.
            figures.launched_while_leaked += len(new)
            self._replaced |= live_leaks
        # Served by nginx while dead or recorded terminated.
        for iid in self._served:
            state = recorded.get(iid)
            gone = (iid in self._seen and iid not in live) or (state and state[0] == Lifecycle.TERMINATED)
            if gone and iid not in self._dead_in_upstream:
                self._dead_in_upstream.add(iid)
                figures.terminated_in_upstream = len(self._dead_in_upstream)
                figures.terminated_in_upstream_ids = sorted(self._dead_in_upstream)
        members = len(self._live_members(live, recorded))
        figures.samples += 1
        figures.max_pool = max(figures.max_pool, members)
        if members > cfg.max_nodes:
            figures.above_max += 1
        if members >= cfg.min_nodes:
            self._reached_min = True
        elif self._reached_min:
            figures.below_min += 1

    def _confirm_leaks(self, controller_started: float) -> None:
        """Live nodes the store does not know although a controller started after they appeared has
        completed its ticks, or recorded terminated more than ``orphan_grace_s`` plus the provider's
        5 s kill grace ago: leaked."""
        recorded = self._lifecycles()
        if recorded is None:
            return
        with self._lock:
            now = datetime.now(UTC)
            for iid in node_processes(self.state_dir):
                state = recorded.get(iid)
                unknown = state is None and self._unknown_since.get(iid, float("inf")) < controller_started
                lingering = (state is not None and state[0] == Lifecycle.TERMINATED
                             and (now - state[1]).total_seconds() > self.cfg.orphan_grace_s + 5.0)
                if unknown or lingering:
                    self._leaked.add(iid)
            self.figures.leaked = len(self._leaked)
            self.figures.leaked_ids = sorted(self._leaked)

    def _leaving(self) -> bool:
        """True while a live node is recorded terminated or unknown to the store."""
        recorded = self._lifecycles() or {}
        return any(recorded.get(i, (Lifecycle.TERMINATED, None))[0] == Lifecycle.TERMINATED
                   for i in node_processes(self.state_dir))

    def _final_check(self) -> None:
        """After the last stop: every live node known to the store and not terminated; tokens honoured."""
        if self._store is None:
            return
        recorded = self._store.lifecycles(POOL)
        live = node_processes(self.state_dir)
        for iid in live:
            state = recorded.get(iid)
            if state is None or state[0] == Lifecycle.TERMINATED:
                self._leaked.add(iid)
        self.figures.leaked = len(self._leaked)
        self.figures.leaked_ids = sorted(self._leaked)
        # A leak whose slot was filled again, and one token launched more nodes than its tick decided.
        self.figures.duplicate_launches = len(self._replaced)
        by_token = Counter(self._tokens.values())
        asked = self._launch_intent_counts()
        ticks = {f"{POOL}-tick-{t['id']}": t for t in self._store.recent_ticks(POOL, limit=None)}
        for token, count in by_token.items():
            tick = ticks.get(token)
            if tick is None:
                continue
            decision = tick["decision"]
            wanted = int(decision.get("launch", 0)) + len(decision.get("start", []))
            # A later tick may re-use a short launch's token for its own launch (an intent log
            # that carries the token): then the largest count ever asked under it is the limit.
            wanted = max(wanted, asked.get(token, 0))
            self.figures.duplicate_launches += max(0, count - wanted)
        for tick in ticks.values():
            outcome = tick["decision"].get("outcome", {})
            self.figures.scale_out_ticks += bool(outcome.get("launched"))
            self.figures.scale_in_ticks += bool(outcome.get("drained"))

    def _launch_intent_counts(self) -> dict[str, int]:
        """The largest count each launch token was asked for, from the store's intent log when it
        has one (none before the intent log existed)."""
        engine = sqlalchemy.create_engine(self.store_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(
                    "SELECT token, MAX(count) FROM intent WHERE kind = 'launch' GROUP BY token")).all()
        except sqlalchemy.exc.SQLAlchemyError:
            return {}
        finally:
            engine.dispose()
        return {str(token): int(count) for token, count in rows if token}

    def _count_requests(self, load: _Load) -> None:
        figures = self.figures
        figures.requests = len(load.results)
        figures.blame_s = self.cfg.blame_s
        errors: Counter[str] = Counter()
        for sent, done, ok, error in load.results:
            if ok:
                continue
            figures.failed_requests += 1
            errors[error] += 1
            after_kill = [sent - k for k in self.kill_times if 0 <= sent - k <= self.cfg.blame_s]
            reloads = [done - r for r in self.reload_times if -0.5 <= done - r <= 0.5]
            if error == "closed-idle-connection" and reloads:
                # nginx's graceful reload retires the old worker, which closes its idle keep-alive
                # connections; a request sent on one at that instant gets no response. A reload
                # race of HTTP keep-alive, counted apart (each restart's first apply reloads once).
                figures.closed_at_reload += 1
            elif after_kill:
                figures.failed_after_kill += 1
            figures.failures.append(
                f"{error}: sent {sent - load.started:.1f} s into the load, took {done - sent:.2f} s"
                + (f", {min(after_kill):.1f} s after a kill" if after_kill else "")
                + (f", {min(reloads, key=abs):+.2f} s from an nginx reload seen by the sampler"
                   if reloads else ""))
        figures.request_errors = dict(errors)


def run_crash(cfg: CrashConfig, progress: Any = None) -> CrashFigures:
    """One kill run; returns its figures."""
    return CrashRig(cfg, progress).run()


__all__ = ["PHASES", "POOL", "CrashConfig", "CrashFigures", "CrashRig", "node_processes", "run_crash"]
