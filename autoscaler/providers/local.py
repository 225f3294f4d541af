"""A ``Provider`` whose machines are processes on this host running the simulated ASR node.

Each instance is ``python -m autoscaler.node`` started in its own session, so it outlives the
controller that launched it, the way a VM outlives a controller restart. What a cloud would
remember (id, pool, type, model version, launch token, tags) lives in ``<state_dir>/instances.json``,
read and rewritten under an ``fcntl`` lock and replaced atomically, so several controllers or CLI
commands can share one local fleet. Node logs go to ``<state_dir>/logs/<id>.log``.

A record whose process is gone counts as terminated and is dropped the next time the file is read;
liveness is checked against ``/proc`` (the pid must still run a node with that instance id), so a
recycled pid is not mistaken for a node.

The record file is not the only memory: every node process carries its own record in its
environment (``AUTOSCALER_LOCAL_NODE``, with the state dir in ``AUTOSCALER_LOCAL_STATE_DIR``), the
way a cloud VM carries its tags. Each read of the state looks for such processes with psutil and
adopts any the file does not know (a controller killed between spawning a node and writing the
file), so such a node is listed, terminated or stopped like any other, never leaked. The file is
also written right after each spawn, not only when the lock is released.

``stop`` ends a node's process but keeps its record and its "disk", ``<state_dir>/disks/<id>/``,
where the node wrote a model-cache file once its model had loaded; ``start`` runs the node again
with the same id and (when free) the same port, and the node finds the cache and loads in
``config.cached_load_fraction`` of the cold ``load_delay``: the warm start of a stopped cloud VM.
Terminating an instance deletes its disk.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import psutil
from pydantic import BaseModel, Field, ValidationError

from autoscaler.clock import SystemClock
from autoscaler.domain import (
    MANAGED_BY_VALUE,
    TAG_LAUNCH_TOKEN,
    TAG_MANAGED_BY,
    TAG_MODEL_VERSION,
    TAG_POOL,
    CloudState,
    Instance,
    LaunchResult,
    LaunchSpec,
    StartOutcome,
    StopOutcome,
    TerminateOutcome,
)
from autoscaler.errors import PolicyError, ProviderError, QuotaExceeded
from autoscaler.policy.model import LocalProviderConfig, PoolPolicy
from autoscaler.protocols import Clock

logger = logging.getLogger(__name__)

STATE_FILE = "instances.json"
LOCK_FILE = "instances.lock"
LOG_DIR = "logs"
DISK_DIR = "disks"
#: The file on a node's disk that says which model version it has loaded before.
MODEL_CACHE = "model.cache"
#: Streams of an instance type the provider was not told about (the reference node's ~10).
DEFAULT_STREAMS = 10
ZONE = "local"
#: The environment variables a node process carries its own record and its fleet's state dir in.
ENV_NODE_RECORD = "AUTOSCALER_LOCAL_NODE"
ENV_STATE_DIR = "AUTOSCALER_LOCAL_STATE_DIR"

# Children started by this interpreter, kept so their exit can be reaped (a dead child stays a
# zombie, which still answers kill(pid, 0), until its parent waits for it). Module-level because
# zombies belong to the process, not to one provider object: a second LocalProvider in the same
# interpreter (a simulated restart) must still see them die.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


class _Record(BaseModel):
    """One instance as the state file keeps it."""

    id: str
    pool: str
    instance_type: str
    model_version: str
    image: str
    launch_token: str
    launched_at: datetime
    port: int
    pid: int
    streams: int
    tags: dict[str, str]
    log_path: str
    terminating_at: datetime | None = None
    #: When ``stop`` was called; the record (and its disk) outlive the process until a start.
    stopped_at: datetime | None = None

    @property
    def has_process(self) -> bool:
        """False once a stopped node's process is gone (``pid`` is then 0)."""
        return self.pid > 0

    def to_instance(self, host: str) -> Instance:
        # A process that exists is a running machine; whether the node serves is the health check's call.
        if self.terminating_at:
            state = CloudState.STOPPING
        elif self.stopped_at:
            state = CloudState.STOPPING if self.has_process else CloudState.STOPPED
        else:
            state = CloudState.RUNNING
        return Instance(
            id=self.id, pool=self.pool, instance_type=self.instance_type, model_version=self.model_version,
            launch_token=self.launch_token, launched_at=self.launched_at, state=state, address=host,
            port=self.port, zone=ZONE, image=self.image, tags=dict(self.tags),
        )


class _State(BaseModel):
    version: int = 1
    instances: dict[str, _Record] = Field(default_factory=dict)


def process_alive(pid: int, instance_id: str) -> bool:
    """True while ``pid`` is a live (non-zombie) process running the node ``instance_id``."""
    with _CHILDREN_LOCK:
        child = _CHILDREN.get(pid)
        if child is not None:
            if child.poll() is None:  # poll() reaps our own child when it has exited
                return True
            del _CHILDREN[pid]
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid was recycled by another user's process
        return False
    if not Path("/proc/self").is_dir():  # no procfs (macOS): kill(0) is the best evidence there is
        return True
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain ") ".
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return instance_id.encode() in args


def tagged_processes(state_dir: Path) -> dict[str, _Record]:
    """Live node processes spawned for the fleet in ``state_dir``, by instance id, from their tags.

    A process qualifies when it runs ``autoscaler.node`` and its environment names ``state_dir``
    and carries a valid record; zombies and other users' processes (unreadable) are skipped.
    """
    wanted = str(state_dir.resolve())
    found: dict[str, _Record] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if "autoscaler.node" not in cmdline or "--instance-id" not in cmdline:
                continue
            environ = proc.environ()
            if environ.get(ENV_STATE_DIR) != wanted or ENV_NODE_RECORD not in environ:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            record = _Record.model_validate_json(environ[ENV_NODE_RECORD])
        except (psutil.Error, ValidationError):
            continue  # gone meanwhile, not ours to read, or not a record this version wrote
        # An orphan may be a child of this interpreter (spawned by a provider object whose record
        # was lost): the pid is the process's own, whatever the record says.
        found[record.id] = record.model_copy(update={"pid": proc.pid})
    return found


def _signal_group(pid: int, signum: signal.Signals) -> None:
    # The node leads its own session (start_new_session), so its process group id is its pid.
    with suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _escalate(targets: Sequence[tuple[int, str]], grace_s: float) -> None:
    """SIGKILL whatever of ``targets`` outlives ``grace_s`` after its SIGTERM."""
    deadline = time.monotonic() + grace_s
    pending = list(targets)
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [(pid, iid) for pid, iid in pending if process_alive(pid, iid)]
    for pid, iid in pending:
        logger.warning("node %s (pid %d) ignored SIGTERM for %.1f s; sending SIGKILL", iid, pid, grace_s)
        _signal_group(pid, signal.SIGKILL)
    for pid, iid in pending:  # reap the killed children so they do not linger as zombies
        process_alive(pid, iid)


class LocalProvider:
    """Runs a pool's nodes as detached local processes; see the module docstring.

    ``pool`` is the pool this provider serves by default (``stop_all``); launches follow
    ``spec.pool``. ``streams_by_type`` gives each instance type's concurrent streams (default
    ``DEFAULT_STREAMS``). ``max_instances`` caps live local instances across pools (a laptop has
    no quota, but a runaway policy should not fork a hundred nodes); reaching it behaves like a
    cloud quota. ``kill_grace_s`` is how long a node gets between SIGTERM and SIGKILL.
    """

    name = "local"

    def __init__(
        self,
        config: LocalProviderConfig,
        pool: str,
        *,
        streams_by_type: Mapping[str, int] | None = None,
        max_instances: int | None = None,
        kill_grace_s: float = 5.0,
        python: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.state_dir = Path(config.state_dir)
        self._streams_by_type = dict(streams_by_type or {})
        self._max_instances = max_instances
        self._kill_grace_s = kill_grace_s
        self._python = python or sys.executable
        self._clock: Clock = clock or SystemClock()

    @classmethod
    def for_policy(
        cls, policy: PoolPolicy, *, max_instances: int | None = None, kill_grace_s: float = 5.0
    ) -> LocalProvider:
        """The provider a pool policy with ``provider.kind: local`` describes (streams per type included).

        Raises ``PolicyError`` when the policy names another provider kind.
        """
        if not isinstance(policy.provider, LocalProviderConfig):
            raise PolicyError(f"pool {policy.pool} uses the {policy.provider.kind!r} provider, not 'local'")
        return cls(
            policy.provider, policy.pool,
            streams_by_type={t.name: t.streams for t in policy.launch.instance_types},
            max_instances=max_instances, kill_grace_s=kill_grace_s,
        )

    # ----------------------------------------------------------------------------- Provider protocol
    def list_instances(self, pool: str) -> list[Instance]:
        """Instances of ``pool`` (RUNNING; STOPPING once terminated or stopped; STOPPED), oldest first."""
        with self._locked() as state:
            records = [r for r in state.instances.values() if r.pool == pool]
        return [r.to_instance(self.config.host) for r in sorted(records, key=lambda r: r.launched_at)]

    def launch(self, spec: LaunchSpec, count: int, client_token: str) -> LaunchResult:
        """Start nodes until ``count`` live instances carry ``client_token``; return them.

        Uses ``spec.instance_types[0]`` (local machines never run out of stock). Raises
        ``QuotaExceeded`` when ``max_instances`` leaves room for none and none exist for the token,
        ``ProviderError`` when a process cannot be started (those started before stay recorded,
        so a retry with the same token only starts the rest).
        """
        if count < 0:
            raise ValueError("count cannot be negative")
        if not spec.instance_types:
            raise ValueError("spec.instance_types is empty")
        shortfall: str | None = None
        notes: list[str] = []
        with self._locked() as state:
            have = [r for r in state.instances.values()
                    if r.pool == spec.pool and r.launch_token == client_token]
            while len(have) < count:
                if self._max_instances is not None and len(state.instances) >= self._max_instances:
                    shortfall = "quota"
                    notes.append(f"local fleet limit of {self._max_instances} instances reached")
                    break
                record = self._start(spec, client_token, state)
                state.instances[record.id] = record
                # On disk before the next spawn: a crash leaves at most one node only its tags know.
                self._write(state)
                have.append(record)
        if not have and shortfall:
            raise QuotaExceeded(notes[-1])
        return LaunchResult(
            instances=tuple(r.to_instance(self.config.host) for r in have), shortfall=shortfall,
            notes=tuple(notes),
        )

    def terminate(self, instance_ids: Sequence[str]) -> dict[str, TerminateOutcome]:
        """SIGTERM each live node (SIGKILL follows after ``kill_grace_s``) without waiting for it.

        Unknown ids and nodes already gone are ALREADY_GONE; a node still stopping from an earlier
        call is signalled again and reported TERMINATING until it is gone.
        """
        outcomes: dict[str, TerminateOutcome] = {}
        signalled: list[tuple[int, str]] = []
        if not instance_ids:
            return outcomes
        with self._locked() as state:
            for iid in instance_ids:
                record = state.instances.get(iid)
                if record is None:
                    outcomes[iid] = TerminateOutcome.ALREADY_GONE
                    continue
                if not record.has_process:  # a stopped machine: nothing runs, it is gone at once
                    del state.instances[iid]
                    self._delete_disk(iid)
                    outcomes[iid] = TerminateOutcome.TERMINATING
                    continue
                _signal_group(record.pid, signal.SIGTERM)
                if record.terminating_at is None:
                    record.terminating_at = self._clock.now()
                outcomes[iid] = TerminateOutcome.TERMINATING
                signalled.append((record.pid, iid))
        if signalled:
            # Not a daemon: an exiting controller still waits (at most the grace) to SIGKILL stragglers.
            threading.Thread(target=_escalate, args=(signalled, self._kill_grace_s),
                             name="local-provider-escalate").start()
        return outcomes

    def stop(self, instance_ids: Sequence[str]) -> dict[str, StopOutcome]:
        """SIGTERM each running node (SIGKILL after ``kill_grace_s``), keeping its record and disk.

        A node still shutting down from an earlier stop is STOPPING, a stopped one ALREADY_STOPPED;
        unknown and terminating ids are ALREADY_GONE.
        """
        outcomes: dict[str, StopOutcome] = {}
        signalled: list[tuple[int, str]] = []
        if not instance_ids:
            return outcomes
        with self._locked() as state:
            for iid in instance_ids:
                record = state.instances.get(iid)
                if record is None or record.terminating_at is not None:
                    outcomes[iid] = StopOutcome.ALREADY_GONE
                elif not record.has_process:
                    outcomes[iid] = StopOutcome.ALREADY_STOPPED
                else:
                    _signal_group(record.pid, signal.SIGTERM)
                    if record.stopped_at is None:
                        record.stopped_at = self._clock.now()
                    outcomes[iid] = StopOutcome.STOPPING
                    signalled.append((record.pid, iid))
        if signalled:
            threading.Thread(target=_escalate, args=(signalled, self._kill_grace_s),
                             name="local-provider-escalate").start()
        return outcomes

    def start(self, instance_ids: Sequence[str]) -> dict[str, StartOutcome]:
        """Run each stopped node again with its id, disk and (when free) port; it loads from its disk.

        Running nodes are ALREADY_RUNNING, unknown and terminating ids ALREADY_GONE. Raises
        ``ProviderError`` for a node whose stop has not finished yet (nothing is started for it;
        the ids before it in the call are started) or when a process cannot be spawned.
        """
        outcomes: dict[str, StartOutcome] = {}
        if not instance_ids:
            return outcomes
        with self._locked() as state:
            for iid in instance_ids:
                record = state.instances.get(iid)
                if record is None or record.terminating_at is not None:
                    outcomes[iid] = StartOutcome.ALREADY_GONE
                elif record.stopped_at is None:
                    outcomes[iid] = StartOutcome.ALREADY_RUNNING
                elif record.has_process:
                    raise ProviderError(f"local node {iid} is still stopping; start it once it has stopped")
                else:
                    spec = LaunchSpec(pool=record.pool, image=record.image,
                                      model_version=record.model_version,
                                      instance_types=(record.instance_type,), port=record.port,
                                      tags=dict(record.tags))
                    taken = {r.port for r in state.instances.values() if r.id != iid and r.has_process}
                    fresh = self._start(spec, record.launch_token, state, instance_id=iid,
                                        port=record.port if self._port_free(record.port, taken) else None,
                                        launched_at=record.launched_at, tags=record.tags)
                    state.instances[iid] = fresh
                    self._write(state)
                    outcomes[iid] = StartOutcome.STARTING
        return outcomes

    # ---------------------------------------------------------------------------------- helpers
    def stop_all(self, pool: str | None = None, timeout_s: float | None = None) -> list[str]:
        """Terminate every instance of ``pool`` (default: this provider's) and wait until all are gone.

        Returns the ids that were stopped; raises ``ProviderError`` if any is still alive after
        ``timeout_s`` (default: the kill grace plus five seconds).
        """
        pool = pool or self.pool
        ids = [i.id for i in self.list_instances(pool)]
        self.terminate(ids)
        deadline = time.monotonic() + (self._kill_grace_s + 5.0 if timeout_s is None else timeout_s)
        while True:
            left = {i.id for i in self.list_instances(pool)} & set(ids)
            if not left:
                return ids
            if time.monotonic() >= deadline:
                raise ProviderError(f"local instances still running after stop_all: {sorted(left)}")
            time.sleep(0.05)

    def known_pools(self) -> list[str]:
        """Pools that have live instances in this state dir."""
        with self._locked() as state:
            return sorted({r.pool for r in state.instances.values()})

    def log_path(self, instance_id: str) -> Path:
        """Where the node ``instance_id`` writes its log."""
        return self.state_dir / LOG_DIR / f"{instance_id}.log"

    # ---------------------------------------------------------------------------------- internals
    def disk_path(self, instance_id: str) -> Path:
        """The node's "disk": where its model cache lives across stop and start."""
        return self.state_dir / DISK_DIR / instance_id

    def _delete_disk(self, instance_id: str) -> None:
        shutil.rmtree(self.disk_path(instance_id), ignore_errors=True)

    def _port_free(self, port: int, taken: set[int]) -> bool:
        if port in taken:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((self.config.host, port))
            except OSError:
                return False
        return True

    def _start(self, spec: LaunchSpec, client_token: str, state: _State, *, instance_id: str | None = None,
               port: int | None = None, launched_at: datetime | None = None,
               tags: Mapping[str, str] | None = None) -> _Record:
        instance_type = spec.instance_types[0]
        streams = self._streams_by_type.get(instance_type, DEFAULT_STREAMS)
        instance_id = instance_id or f"local-{secrets.token_hex(6)}"
        port = port or self._free_port({r.port for r in state.instances.values()})
        cfg = self.config
        command = [
            self._python, "-m", "autoscaler.node",
            "--host", cfg.host, "--port", str(port), "--instance-id", instance_id, "--pool", spec.pool,
            "--model-version", spec.model_version, "--streams", str(streams),
            "--load-delay", str(cfg.load_delay.total_seconds()),
            "--gpu-memory-mib", str(cfg.gpu_memory_mib),
            "--model-memory-mib", str(cfg.model_memory_mib),
            "--stream-memory-mib", str(cfg.stream_memory_mib),
            "--real-time-factor", str(cfg.real_time_factor),
            "--model-cache", str(self.disk_path(instance_id) / MODEL_CACHE),
            "--cached-load-fraction", str(cfg.cached_load_fraction),
        ]
        if cfg.server_command:  # a real ASR server behind the node's agent instead of the simulated one
            command += ["--server-command", json.dumps(cfg.server_command),
                        "--server-probe-path", cfg.server_probe_path]
        log_path = self.log_path(instance_id)
        if tags is None:
            tags = {**spec.tags, TAG_POOL: spec.pool, TAG_MODEL_VERSION: spec.model_version,
                    TAG_LAUNCH_TOKEN: client_token, TAG_MANAGED_BY: MANAGED_BY_VALUE}
        record = _Record(
            id=instance_id, pool=spec.pool, instance_type=instance_type, model_version=spec.model_version,
            image=spec.image, launch_token=client_token, launched_at=launched_at or self._clock.now(),
            port=port, pid=0, streams=streams, tags=dict(tags), log_path=str(log_path),
        )
        # The node carries its own record (its "tags"): a controller killed before the state file
        # is written still finds it (``tagged_processes``).
        env = {**os.environ, ENV_STATE_DIR: str(self.state_dir.resolve()),
               ENV_NODE_RECORD: record.model_dump_json()}
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
        except OSError as exc:
            raise ProviderError(f"cannot start local node {instance_id}: {exc}") from exc
        with _CHILDREN_LOCK:
            _CHILDREN[child.pid] = child
        logger.info("started local node %s (pid %d) on %s:%d", instance_id, child.pid, cfg.host, port)
        return record.model_copy(update={"pid": child.pid})

    def _free_port(self, taken: set[int]) -> int:
        # The node binds right after it starts; skipping ports of recorded nodes avoids handing
        # one out twice while its owner is still importing.
        for _ in range(50):
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((self.config.host, 0))
                    port: int = probe.getsockname()[1]
            except OSError as exc:  # socket.gaierror included: a host that is not an address here
                raise ProviderError(f"cannot bind a port on {self.config.host!r}: {exc}") from exc
            if port not in taken:
                return port
        raise ProviderError(f"no free port on {self.config.host}")

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        """Hold the state lock; yield the state with dead records pruned; write it back on success."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.state_dir / LOCK_FILE).open("a")
        except OSError as exc:
            raise ProviderError(f"cannot open the local state in {self.state_dir}: {exc}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            state = self._read()
            before = state.model_dump_json()
            live = self._adopt_tagged(state)
            for iid, record in list(state.instances.items()):
                if not record.has_process or process_alive(record.pid, iid):
                    continue
                if iid in live:  # its recorded pid died, but the node runs again under another
                    record.pid = live[iid].pid
                    continue
                if record.stopped_at is not None and record.terminating_at is None:
                    record.pid = 0  # stopped: the machine and its disk stay until started or terminated
                else:
                    del state.instances[iid]
                    self._delete_disk(iid)
            try:
                yield state
            finally:
                # Written even when the body failed: nodes started before the failure stay recorded.
                if state.model_dump_json() != before:
                    self._write(state)

    def _adopt_tagged(self, state: _State) -> dict[str, _Record]:
        """Merge live tagged node processes the state does not know into it; return them all."""
        live = tagged_processes(self.state_dir)
        for iid, found in live.items():
            known = state.instances.get(iid)
            if known is None:
                logger.warning("adopted local node %s (pid %d, token %s): running but not in %s",
                               iid, found.pid, found.launch_token, STATE_FILE)
                state.instances[iid] = found
            elif not known.has_process:
                # Recorded stopped, but a start spawned it and died before recording: running again.
                logger.warning("local node %s (pid %d) runs although recorded stopped; adopted as started",
                               iid, found.pid)
                state.instances[iid] = found
        return live

    def _read(self) -> _State:
        path = self.state_dir / STATE_FILE
        try:
            return _State.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return _State()
        except (OSError, ValidationError) as exc:
            raise ProviderError(f"cannot read local instance records {path}: {exc}") from exc

    def _write(self, state: _State) -> None:
        path = self.state_dir / STATE_FILE
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self.state_dir, prefix=".instances-", suffix=".tmp")
        except OSError as exc:
            raise ProviderError(f"cannot write local instance records {path}: {exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(state.model_dump_json(indent=2))
                tmp.flush()
                os.fsync(tmp.fileno())  # the rename must never expose a half-written file
            os.replace(tmp_name, path)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp_name)
            raise ProviderError(f"cannot write local instance records {path}: {exc}") from exc
