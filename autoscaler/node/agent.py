"""``autoscaler node-agent``: the reverse proxy on every GPU node that gives the autoscaler its signals.

It listens on the node port (7860) in front of the ASR server (a Fun-ASR-style Gradio app moved to
an internal port) and:

- counts the transcriptions in flight and queued, for the request routes configured as
  transcriptions (by default the Gradio prediction routes: ``POST /api/predict/`` of the seed's
  client and ``/run/predict``, ``/gradio_api/run/predict``, ``/gradio_api/call/predict`` of current
  Gradio versions); every other path (the web UI, file uploads, Gradio's queue) is passed through
  untouched and uncounted;
- lets at most ``max_streams`` of them reach the server at once, queues the rest in arrival order,
  and refuses a request with ``429`` and ``Retry-After`` once ``max_queue`` are waiting, so the GPU is
  never oversubscribed;
- exports ``asr_active_streams``, ``asr_queued_streams``, ``asr_request_duration_seconds``,
  ``asr_model_loaded``, ``asr_server_up`` and its own counters on ``GET /metrics``;
- answers ``GET /healthz`` with 200 only while the server answers its readiness probe with 200 (a
  readiness URL, or a tiny POST request), and with 503 before that and while draining;
- on SIGTERM drains: ``/healthz`` turns 503, new transcriptions are refused with 503, and the agent
  exits once the streams in flight and queued have finished (or ``drain_timeout`` has passed).

A transcription's request body is read whole (up to ``max_body_bytes``) before it queues, so a
slow upload never holds a GPU stream; the answer is streamed back as the server sends it. A client
that goes away frees its slot at once (aiohttp cancels the handler), a server that goes away is a
``502`` with a JSON body saying so, and every outcome is counted in ``asr_requests_total{code}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaler.node.gate import GateClosed, GateFull, StreamGate

logger = logging.getLogger("autoscaler.node_agent")

#: Transcriptions run from sub-second clips to recordings of several minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: The Gradio prediction routes: the seed client's ``/api/predict/`` (Gradio 3) and the
#: ``run``/``call`` routes of Gradio 4 and 5 (5 puts them under ``/gradio_api``).
DEFAULT_ROUTES = (
    "POST /api/predict",
    "POST /api/predict/",
    "POST /run/predict",
    "POST /run/predict/",
    "POST /gradio_api/run/predict",
    "POST /gradio_api/run/predict/",
    "POST /gradio_api/api/predict",
    "POST /gradio_api/api/predict/",
)
#: Gradio's queue (what ``gradio_client`` and the web UI use since Gradio 4): a transcription joins
#: with ``POST queue/join`` (answered at once with an event id) and its result arrives on the
#: session's ``GET queue/data`` event stream as a ``process_completed`` message.
DEFAULT_QUEUE_JOIN = ("POST /gradio_api/queue/join", "POST /queue/join")
DEFAULT_QUEUE_DATA = ("GET /gradio_api/queue/data", "GET /queue/data")
#: Answers up to this size are read whole before they are sent on (the rest are streamed).
SMALL_BODY_BYTES = 1 << 16
#: Gradio results remembered for a join whose answer is still on its way.
EARLY_RESULTS_KEPT = 1024
#: Paths the agent answers itself; never forwarded.
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
#: Status of a transcription whose client went away before its answer (nginx's convention).
CLIENT_CLOSED = 499
# RFC 7230 hop-by-hop headers: they describe one connection and are never forwarded.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


@dataclass(frozen=True)
class Route:
    """A request counted as a transcription: a method and an exact path (or a prefix ending in ``*``)."""

    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Route:
        """``"POST /api/predict/"`` → Route; raises ``ValueError`` naming what is wrong."""
        parts = text.split()
        if len(parts) != 2 or not parts[1].startswith("/"):
            raise ValueError(f"route {text!r} is not 'METHOD /path' (e.g. 'POST /api/predict/')")
        method = parts[0].upper()
        if not method.isalpha():
            raise ValueError(f"route {text!r} has no HTTP method")
        return cls(method, parts[1])

    def matches(self, method: str, path: str) -> bool:
        """True for a request this route counts."""
        if method != self.method:
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class AgentConfig(BaseModel):
    """Everything ``autoscaler node-agent`` is told; each field has the default its flag has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen_host: str = "0.0.0.0"
    listen_port: int = Field(default=7860, ge=0, le=65535)
    upstream: str = "http://127.0.0.1:7861"
    max_streams: int = Field(default=10, ge=1, description="transcriptions the GPU serves at once (C)")
    max_queue: int = Field(default=100, ge=0, description="transcriptions that may wait for a stream")
    queue_timeout_s: float = Field(default=600.0, gt=0, description="longest wait for a stream → 503")
    stream_timeout_s: float = Field(default=900.0, gt=0, description="longest transcription → 504")
    body_timeout_s: float = Field(default=60.0, gt=0, description="longest upload of a body → 408")
    max_body_bytes: int = Field(default=64 << 20, ge=1, description="largest transcription body → 413")
    routes: tuple[Route, ...] = tuple(Route.parse(r) for r in DEFAULT_ROUTES)
    queue_join_routes: tuple[Route, ...] = tuple(Route.parse(r) for r in DEFAULT_QUEUE_JOIN)
    queue_data_routes: tuple[Route, ...] = tuple(Route.parse(r) for r in DEFAULT_QUEUE_DATA)
    probe_path: str = "/"
    probe_body: bytes | None = None
    probe_interval_s: float = Field(default=2.0, gt=0)
    probe_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)
    drain_timeout_s: float = Field(default=300.0, ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    upstream_metrics_path: str | None = None

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http:// or https:// URL with a host, not {value!r}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"upstream {value!r} has a malformed port") from exc
        return value.rstrip("/")

    @field_validator("probe_path", "upstream_metrics_path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} must be a path starting with '/'")
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.isidentifier() or name.startswith("__"):
                raise ValueError(f"{name!r} is not a Prometheus label name")
            if name in {"code", "route", "reason", "kind", "le"}:
                raise ValueError(f"label {name!r} is used by the agent's own metrics")
        return value

    @model_validator(mode="after")
    def _check_routes(self) -> AgentConfig:
        for route in (*self.routes, *self.queue_join_routes, *self.queue_data_routes):
            if route.path in (HEALTH_PATH, METRICS_PATH):
                raise ValueError(f"route {route} collides with the agent's own {route.path}")
        return self


def parse_listen(text: str) -> tuple[str, int]:
    """``"0.0.0.0:7860"`` or ``":7860"`` → (host, port); raises ``ValueError`` saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"--listen {text!r} is not HOST:PORT (e.g. 0.0.0.0:7860)")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"--listen {text!r}: port {port} is out of range")
    return (host.strip("[]") or "0.0.0.0"), port


class AgentMetrics:
    """The agent's Prometheus series, each carrying the configured constant labels."""

    def __init__(self, agent: NodeAgent, labels: Mapping[str, str]) -> None:
        self.registry = CollectorRegistry()
        reg, own = self.registry, dict(labels)
        names = list(own)
        gauges: dict[str, tuple[str, Callable[[], float]]] = {
            "asr_active_streams": ("Transcriptions the ASR server is processing (through this agent).",
                                   lambda: float(agent.gate.active)),
            "asr_queued_streams": ("Transcriptions waiting in the agent for a free stream.",
                                   lambda: float(agent.gate.queued)),
            "asr_stream_capacity": ("Concurrent transcriptions this node serves (C).",
                                    lambda: float(agent.gate.capacity)),
            "asr_queue_capacity": ("Transcriptions that may wait before new ones are refused (429).",
                                   lambda: float(agent.gate.max_queue)),
            "asr_model_loaded": ("1 while the ASR server answers its readiness probe with 200.",
                                 lambda: float(agent.model_loaded)),
            "asr_server_up": ("1 while the ASR server answers HTTP at all (its liveness).",
                              lambda: float(agent.server_up)),
            "asr_draining": ("1 once the agent is draining (SIGTERM): /healthz is 503.",
                             lambda: float(agent.draining)),
        }
        for name, (doc, read) in gauges.items():
            gauge = Gauge(name, doc, names, registry=reg)
            (gauge.labels(**own) if own else gauge).set_function(read)
        self._own = own
        self.requests = Counter("asr_requests", "Transcription requests by HTTP status (499: client left).",
                                [*names, "route", "code"], registry=reg)
        self.durations = Histogram(
            "asr_request_duration_seconds", "Wall time of successful transcriptions, queueing included.",
            names, buckets=DURATION_BUCKETS, registry=reg,
        )
        self.queue_wait = Histogram("asr_queue_wait_seconds", "Time transcriptions waited for a stream.",
                                    names, buckets=DURATION_BUCKETS, registry=reg)
        self.rejected = Counter("asr_rejected", "Transcriptions refused before reaching the server.",
                                [*names, "reason"], registry=reg)
        self.upstream_errors = Counter("asr_upstream_errors", "Requests the ASR server failed to answer.",
                                       [*names, "kind"], registry=reg)

    def request(self, route: str, code: int) -> None:
        """Count one finished transcription request."""
        self.requests.labels(**self._own, route=route, code=str(code)).inc()

    def duration(self, seconds: float) -> None:
        """Observe one successful transcription's wall time."""
        (self.durations.labels(**self._own) if self._own else self.durations).observe(seconds)

    def waited(self, seconds: float) -> None:
        """Observe one transcription's wait for a stream."""
        (self.queue_wait.labels(**self._own) if self._own else self.queue_wait).observe(seconds)

    def reject(self, reason: str) -> None:
        """Count one refusal (queue_full, queue_timeout, draining, body_too_large, body_timeout)."""
        self.rejected.labels(**self._own, reason=reason).inc()

    def upstream_error(self, kind: str) -> None:
        """Count one failure of the server (connect, disconnect, timeout)."""
        self.upstream_errors.labels(**self._own, kind=kind).inc()

    def text(self) -> bytes:
        """The exposition of the agent's own series."""
        return generate_latest(self.registry)


class _BodyError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


@dataclass
class _QueueJob:
    """A transcription that joined Gradio's queue: it holds a stream until its result is delivered."""

    route: str
    session: str
    started: float
    done: bool = False


@dataclass
class _Forwarded:
    """What the server's answer came to: the response sent to the client and the status to count."""

    response: web.StreamResponse
    code: int


class _SseTap:
    """Reads ``data: {json}`` lines out of a Gradio event stream as it passes, byte for byte."""

    def __init__(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        self._buffer = b""
        self._on_message = on_message

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the stream; call back for every complete JSON message."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            try:
                message = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(message, dict):
                self._on_message(message)


class NodeAgent:
    """The agent's state and its aiohttp application (``app()``); ``serve()`` runs it until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.gate = StreamGate(config.max_streams, config.max_queue)
        self.model_loaded = False
        self.server_up = False
        self.draining = False
        self.metrics = AgentMetrics(self, config.labels)
        self._session: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._jobs: dict[str, _QueueJob] = {}  # Gradio queue jobs holding a stream, by event id
        # Results seen on an event stream before their join's answer came back (a job that ended at
        # once), by event id: the join then finishes its job on the spot. Bounded, oldest dropped.
        self._early: OrderedDict[str, int] = OrderedDict()
        self._streams_open: dict[str, int] = {}  # open queue/data streams, by session hash

    # ------------------------------------------------------------------------------ lifecycle
    def app(self) -> web.Application:
        """The aiohttp application: /healthz, /metrics, everything else proxied."""
        application = web.Application(client_max_size=self.config.max_body_bytes)
        application.router.add_get(HEALTH_PATH, self._healthz)
        application.router.add_get(METRICS_PATH, self._metrics)
        application.router.add_route("*", "/{tail:.*}", self._proxy)
        application.cleanup_ctx.append(self._context)
        return application

    async def _context(self, _app: web.Application) -> AsyncIterator[None]:
        # No pool limit: the gate bounds transcriptions, and pass-through traffic must not queue
        # behind them. auto_decompress off: bodies pass through byte for byte.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        self._probe_task = asyncio.create_task(self._probe_loop(), name="node-agent-probe")
        try:
            yield
        finally:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            for event_id in list(self._jobs):
                self._finish_job(event_id, 503)
            await self._session.close()

    def start_draining(self) -> None:
        """From now on /healthz is 503 and new transcriptions are refused; queued ones still run."""
        if not self.draining:
            logger.info("draining: %d in flight, %d queued", self.gate.active, self.gate.queued)
        self.draining = True
        self._check_idle()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no transcription is in flight or queued; False if ``timeout_s`` passed first."""
        self._check_idle()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _check_idle(self) -> None:
        if self.gate.active == 0 and self.gate.queued == 0:
            self._idle.set()
        else:
            self._idle.clear()

    # ------------------------------------------------------------------------------ the probe
    async def probe_once(self) -> None:
        """Ask the server's readiness probe once; set ``server_up`` and ``model_loaded``."""
        assert self._session is not None
        cfg = self.config
        method = "POST" if cfg.probe_body is not None else "GET"
        headers = {"Content-Type": "application/json"} if cfg.probe_body is not None else {}
        try:
            async with self._session.request(
                method, cfg.upstream + cfg.probe_path, data=cfg.probe_body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=cfg.probe_timeout_s), allow_redirects=False,
            ) as response:
                await response.read()
                up, loaded = True, response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            up, loaded = False, False
        if (up, loaded) != (self.server_up, self.model_loaded):
            logger.info("ASR server at %s: %s", cfg.upstream,
                        "ready" if loaded else "answering, model not loaded" if up else "not answering")
        self.server_up, self.model_loaded = up, loaded

    async def _probe_loop(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.config.probe_interval_s)

    # ------------------------------------------------------------------------------ own routes
    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        if not self.server_up:
            return web.Response(status=503, text="ASR server not answering\n")
        if not self.model_loaded:
            return web.Response(status=503, text="model not loaded\n")
        return web.Response(status=200, text="healthy\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = self.metrics.text()
        if self.config.upstream_metrics_path:
            body += await self._upstream_metrics(self.config.upstream_metrics_path)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _upstream_metrics(self, path: str) -> bytes:
        assert self._session is not None
        try:
            async with self._session.get(self.config.upstream + path,
                                         timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                if response.status == 200:
                    return await response.read()
        except (aiohttp.ClientError, TimeoutError):
            pass
        return b""

    # ------------------------------------------------------------------------------ routing
    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        cfg = self.config
        # The route label is the configured pattern, never the raw path: bounded cardinality.
        for route in cfg.routes:
            if route.matches(method, path):
                return await self._transcribe(request, str(route), queue_join=False)
        for route in cfg.queue_join_routes:
            if route.matches(method, path):
                return await self._transcribe(request, str(route), queue_join=True)
        if any(r.matches(method, path) for r in cfg.queue_data_routes):
            return await self._queue_data(request)
        body = request.content if request.body_exists else None
        return (await self._forward(request, body)).response

    # ------------------------------------------------------------------------------ transcriptions
    async def _transcribe(self, request: web.Request, route: str, *, queue_join: bool) -> web.StreamResponse:
        """Admit one transcription through the gate; count its outcome.

        A plain route holds its stream until the server's answer is sent. A Gradio ``queue/join``
        hands its stream over to the job the server queued, released when the session's event
        stream delivers the job's result (``_queue_data``).
        """
        started = time.monotonic()
        code = CLIENT_CLOSED
        handed_over = False
        try:
            if self.draining or self.gate.closed:
                code = 503
                self.metrics.reject("draining")
                return _error(503, "node is draining; send this transcription to another node",
                              retry_after=1)
            try:
                body = await self._read_body(request)
            except _BodyError as exc:
                code = exc.status
                self.metrics.reject(exc.reason)
                return _error(exc.status, str(exc))
            try:
                async with asyncio.timeout(self.config.queue_timeout_s):
                    await self.gate.acquire()
            except GateFull:
                code = 429
                self.metrics.reject("queue_full")
                return _error(429, f"node is full: {self.gate.active} transcriptions running and "
                              f"{self.gate.queued} queued", retry_after=self.config.retry_after_s)
            except TimeoutError:
                code = 503
                self.metrics.reject("queue_timeout")
                return _error(503, f"no stream came free within {self.config.queue_timeout_s:g} s",
                              retry_after=self.config.retry_after_s)
            except GateClosed:
                code = 503
                self.metrics.reject("draining")
                return _error(503, "node is stopping", retry_after=1)
            self.metrics.waited(time.monotonic() - started)
            try:
                forwarded = await self._forward(request, body, timeout_s=self.config.stream_timeout_s)
                code = forwarded.code
                if queue_join and code == 200:
                    handed_over = self._hand_to_queue_job(route, body, forwarded, started)
            finally:
                if not handed_over:
                    self.gate.release()
            if not handed_over and 200 <= code < 300:
                self.metrics.duration(time.monotonic() - started)
            return forwarded.response
        finally:
            if not handed_over:  # a queue job is counted when its result is delivered
                self.metrics.request(route, code)
            self._check_idle()

    def _hand_to_queue_job(self, route: str, body: bytes, forwarded: _Forwarded, started: float) -> bool:
        """Keep the stream for the job Gradio queued; False when the answer names no job."""
        try:
            session = str(json.loads(body)["session_hash"])
            event_id = str(json.loads(forwarded.response.body)["event_id"])  # type: ignore[attr-defined]
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        self._jobs[event_id] = _QueueJob(route=route, session=session, started=started)
        if event_id in self._early:
            self._finish_job(event_id, self._early.pop(event_id))
            return True
        loop, cfg = asyncio.get_running_loop(), self.config
        # A client that never opens the session's event stream must not keep the stream forever,
        # nor a job whose result never comes.
        loop.call_later(cfg.queue_timeout_s, self._expire_job, event_id, False)
        loop.call_later(cfg.queue_timeout_s + cfg.stream_timeout_s, self._expire_job, event_id, True)
        return True

    def _expire_job(self, event_id: str, always: bool) -> None:
        job = self._jobs.get(event_id)
        if job is not None and (always or not self._streams_open.get(job.session)):
            self._finish_job(event_id, 504 if always else CLIENT_CLOSED)

    def _finish_job(self, event_id: str, code: int) -> None:
        job = self._jobs.pop(event_id, None)
        if job is None or job.done:
            return
        job.done = True
        self.gate.release()
        self.metrics.request(job.route, code)
        if code == 200:
            self.metrics.duration(time.monotonic() - job.started)
        self._check_idle()

    async def _queue_data(self, request: web.Request) -> web.StreamResponse:
        """Pass a Gradio session's event stream through, releasing each job's stream on its result."""
        session = request.query.get("session_hash", "")
        self._streams_open[session] = self._streams_open.get(session, 0) + 1

        def on_message(message: dict[str, Any]) -> None:
            if message.get("msg") == "process_completed":
                event_id = str(message.get("event_id"))
                code = 200 if message.get("success") else 500
                if event_id in self._jobs:
                    self._finish_job(event_id, code)
                else:
                    self._early[event_id] = code
                    while len(self._early) > EARLY_RESULTS_KEPT:
                        self._early.popitem(last=False)

        code = CLIENT_CLOSED
        try:
            forwarded = await self._forward(request, None, tap=_SseTap(on_message).feed)
            code = 503 if forwarded.code == 200 else forwarded.code  # ended without the result
            return forwarded.response
        finally:
            self._streams_open[session] -= 1
            if not self._streams_open[session]:
                del self._streams_open[session]
                # The stream is gone: its session's unfinished jobs will never be delivered through it.
                for event_id in [e for e, j in self._jobs.items() if j.session == session]:
                    self._finish_job(event_id, code)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _BodyError(413, "body_too_large", f"body of {request.content_length} bytes is over "
                             f"the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise _BodyError(413, "body_too_large", f"body is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError as exc:
            raise _BodyError(408, "body_timeout", f"body not received within "
                             f"{self.config.body_timeout_s:g} s") from exc
        except aiohttp.ClientPayloadError as exc:  # a truncated chunked body, a bad encoding
            raise _BodyError(400, "body_malformed", f"malformed request body: {exc}") from exc
        return b"".join(chunks)

    # ------------------------------------------------------------------------------ forwarding
    async def _forward(
        self, request: web.Request, body: bytes | aiohttp.StreamReader | None, *,
        timeout_s: float | None = None, tap: Callable[[bytes], None] | None = None,
    ) -> _Forwarded:
        """Send the request to the server and stream its answer back; 502/504 when it fails.

        A small answer (under 64 KiB with a Content-Length) is sent whole, so its body stays readable
        (``response.body``); anything else is streamed chunk by chunk as the server sends it.
        """
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        headers["X-Forwarded-For"] = _forwarded_for(request)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        headers["X-Forwarded-Host"] = request.host
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method, self.config.upstream + request.rel_url.raw_path_qs, headers=headers,
                data=body, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0),
            ) as upstream:
                out_headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP]
                length = upstream.content_length
                if length is not None and length <= SMALL_BODY_BYTES and tap is None:
                    whole = web.Response(status=upstream.status, reason=upstream.reason,
                                         body=await upstream.read())
                    for key, value in out_headers:
                        whole.headers.add(key, value)
                    return _Forwarded(whole, upstream.status)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in out_headers:
                    response.headers.add(key, value)
                if length is not None:
                    response.content_length = length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if tap is not None:
                        tap(chunk)
                    await response.write(chunk)
                await response.write_eof()
                return _Forwarded(response, upstream.status)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError) and (
                request.transport is None or request.transport.is_closing()
            ):
                raise asyncio.CancelledError from exc  # the client left while we wrote to it
            kind, status, message = _upstream_failure(exc, self.config.upstream, timeout_s)
            self.metrics.upstream_error(kind)
            if kind == "connect":
                self.server_up = self.model_loaded = False  # the next probe will say when it is back
            logger.warning("%s %s: %s", request.method, request.path, message)
            if response is not None and response.prepared:
                # The status line is already sent: all that is left is to cut the answer short.
                if request.transport is not None:
                    request.transport.close()
                return _Forwarded(response, status)
            return _Forwarded(_error(status, message), status)


def _upstream_failure(exc: BaseException, upstream: str, timeout_s: float | None) -> tuple[str, int, str]:
    if isinstance(exc, TimeoutError):
        return "timeout", 504, f"the ASR server at {upstream} did not answer within {timeout_s or 0:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return "connect", 502, f"the ASR server at {upstream} is not answering ({reason})"
    return "disconnect", 502, f"the ASR server at {upstream} went away mid-request ({type(exc).__name__})"


def _forwarded_for(request: web.Request) -> str:
    peer = request.remote or ""
    earlier = request.headers.get("X-Forwarded-For")
    return f"{earlier}, {peer}" if earlier else peer


def _error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": message}, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


# ---------------------------------------------------------------------------------- running it
async def serve(
    agent: NodeAgent, *, stop: asyncio.Event, on_ready: Callable[[str, int], None] | None = None,
    drain: bool = True, before_drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until ``stop`` is set; then drain (unless ``drain`` is False) and close the listener."""
    cfg = agent.config
    runner = web.AppRunner(agent.app(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, backlog=1024, reuse_address=True)
    try:
        await site.start()
        host, port = runner.addresses[0][:2]
        logger.info("node agent on %s:%s → %s (%d streams, queue %d)", host, port, cfg.upstream,
                    cfg.max_streams, cfg.max_queue)
        if on_ready is not None:
            on_ready(str(host), int(port))
        await stop.wait()
        if before_drain is not None:
            await before_drain()
        agent.start_draining()
        if drain and not await agent.wait_idle(cfg.drain_timeout_s):
            logger.warning("drain timeout: %d in flight, %d queued", agent.gate.active, agent.gate.queued)
        agent.gate.close()
    finally:
        await runner.cleanup()


class BackgroundAgent:
    """An agent served from a background thread with its own event loop (tests, the simulated node)."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent: NodeAgent | None = None
        self.config = config
        self.host, self.port = config.listen_host, config.listen_port
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=15):
            raise RuntimeError("node agent did not start within 15 s")
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        """``http://host:port`` of the agent."""
        return f"http://{self.host}:{self.port}"

    @property
    def gate(self) -> StreamGate:
        """The agent's stream gate (read its counts; never acquire from another thread)."""
        assert self.agent is not None
        return self.agent.gate

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self.agent = NodeAgent(self.config)

            def ready(host: str, port: int) -> None:
                self.host, self.port = host, port
                self._ready.set()

            await serve(self.agent, stop=self._stop, on_ready=ready, drain=False)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # reported to the constructor or left to the log
            self._error = exc
            self._ready.set()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the agent's loop and return its result (reads state consistently)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def stop(self) -> None:
        """Stop serving at once (no drain) and release the port."""
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def run_forever(agent: NodeAgent, *, before_drain: Callable[[], Awaitable[None]] | None = None,
                drain: bool = True) -> int:
    """Serve in this thread until SIGTERM/SIGINT, drain, return the exit status (1: cannot listen)."""
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve(agent, stop=stop, drain=drain, before_drain=before_drain)
        except OSError as exc:
            logger.error("cannot listen on %s:%s: %s", agent.config.listen_host, agent.config.listen_port,
                         exc)
            return 1
        return 0

    return asyncio.run(main())


def agent_config(
    *, listen: str, upstream: str, max_streams: int, max_queue: int, routes: Sequence[str] | None,
    queue_join: Sequence[str] | None = None, queue_data: Sequence[str] | None = None,
    probe_path: str = "/", probe_body: str | None = None, labels: Sequence[str] = (), **others: Any,
) -> AgentConfig:
    """An ``AgentConfig`` from command-line text; raises ``ValueError`` (or pydantic's
    ``ValidationError``, a ``ValueError``) saying which flag is wrong."""
    host, port = parse_listen(listen)
    parsed_labels: dict[str, str] = {}
    for item in labels:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--label {item!r} is not NAME=VALUE")
        parsed_labels[name] = value
    body: bytes | None = None
    if probe_body is not None:
        try:
            json.loads(probe_body)
        except ValueError as exc:
            raise ValueError(f"--probe-body is not JSON: {exc}") from exc
        body = probe_body.encode()
    for name, value in others.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be a finite number")
    chosen: dict[str, Any] = {name: tuple(Route.parse(r) for r in given)
              for name, given in (("routes", routes), ("queue_join_routes", queue_join),
                                  ("queue_data_routes", queue_data)) if given}
    return AgentConfig(
        listen_host=host, listen_port=port, upstream=upstream, max_streams=max_streams, max_queue=max_queue,
        **chosen, probe_path=probe_path, probe_body=body, labels=parsed_labels, **others,
    )
