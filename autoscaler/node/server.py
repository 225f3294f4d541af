"""A simulated Fun-ASR node: the Gradio-style predict endpoint, a health check and Prometheus metrics.

It stands in for a GPU node in tests and in the local demo. A transcription "takes" the audio's
duration times the real-time factor; at most ``streams`` run at once and the rest wait in arrival
order, so latency climbs under overload as it does on a real GPU. GPU memory is reported the way the
DCGM exporter reports it, so the same PromQL works against the simulation and a real fleet.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

logger = logging.getLogger("autoscaler.node")

#: Transcriptions run from sub-second clips to recordings of several minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: A request body carries a path or a number, never audio bytes; anything larger is a mistake.
MAX_BODY_BYTES = 1 << 20
#: Longest audio the simulation accepts (a day), so a typo cannot park a stream forever.
MAX_AUDIO_SECONDS = 86_400.0
PREDICT_PATHS = frozenset({"/api/predict", "/api/predict/"})


@dataclass(frozen=True)
class NodeConfig:
    """How one simulated node behaves; mirrors the ``python -m autoscaler.node`` flags."""

    instance_id: str
    pool: str
    model_version: str
    streams: int = 10
    load_delay_s: float = 5.0
    gpu_memory_mib: int = 24576
    model_memory_mib: int = 3400
    stream_memory_mib: int = 1900
    real_time_factor: float = 1.0
    never_ready: bool = False
    #: The node's "disk": a file naming the model version once loaded. A node started with a cache
    #: of its own model version loads in ``cached_load_fraction`` of ``load_delay_s`` (a warm start).
    model_cache: str | None = None
    cached_load_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError("streams must be at least 1")
        if not math.isfinite(self.load_delay_s) or self.load_delay_s < 0:
            raise ValueError("load_delay_s must be a finite number >= 0")
        if not math.isfinite(self.cached_load_fraction) or not 0 <= self.cached_load_fraction <= 1:
            raise ValueError("cached_load_fraction must be a number in [0, 1]")
        if not math.isfinite(self.real_time_factor) or self.real_time_factor <= 0:
            raise ValueError("real_time_factor must be a finite number > 0")
        if min(self.gpu_memory_mib, self.model_memory_mib, self.stream_memory_mib) <= 0:
            raise ValueError("memory sizes must be positive")


class PredictRequestError(ValueError):
    """The predict body is not ``{"data": [audio, hotwords, language, itn]}`` with usable values."""


@dataclass(frozen=True)
class Transcription:
    """A parsed predict request."""

    audio_seconds: float
    hotwords: tuple[str, ...]
    language: str
    itn: bool


class StreamGate:
    """FIFO admission control: at most ``capacity`` holders at once, the others wait in arrival order.

    ``threading.Semaphore`` does not promise FIFO wake-ups, and a GPU serving queue does, so
    latency under overload grows with the queue position rather than with luck.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._active = 0
        self._closed = False

    @property
    def active(self) -> int:
        """Streams holding a slot."""
        return self._active

    @property
    def queued(self) -> int:
        """Streams waiting for a slot."""
        return len(self._waiting)

    def acquire(self) -> bool:
        """Wait for a slot in arrival order; False when the gate was closed while waiting."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while not self._closed and not (self._waiting[0] is ticket and self._active < self._capacity):
                    self._cond.wait()
                if self._closed:
                    return False
                self._active += 1
                return True
            finally:
                self._waiting.remove(ticket)
                # The head changed (or a slot may still be free): let the next waiter re-check.
                self._cond.notify_all()

    def release(self) -> None:
        """Give a slot back."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter with a refusal (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _audio_seconds(value: Any) -> float:
    """Seconds of audio named by the first ``data`` item: a number, a numeric string or a WAV path."""
    if isinstance(value, dict):  # Gradio file objects: {"path": ...} (4.x) or {"name": ...} (3.x)
        value = value.get("path") or value.get("name")
    if isinstance(value, bool) or value is None:
        raise PredictRequestError("audio must be a number of seconds, a numeric string or a WAV file path")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = _wav_seconds(Path(value))
    else:
        raise PredictRequestError("audio must be a number of seconds, a numeric string or a WAV file path")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_AUDIO_SECONDS:
        raise PredictRequestError(f"audio duration must be between 0 and {MAX_AUDIO_SECONDS:.0f} seconds")
    return seconds


def _wav_seconds(path: Path) -> float:
    if not path.is_file():
        raise PredictRequestError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError) as exc:
        raise PredictRequestError(f"audio file is not a readable WAV file: {path} ({exc})") from exc


def parse_predict(body: bytes) -> Transcription:
    """Validate a Gradio-style predict body; raise ``PredictRequestError`` saying what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PredictRequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise PredictRequestError('body must be a JSON object {"data": [audio, hotwords, language, itn]}')
    data: list[Any] = payload["data"]
    if not 1 <= len(data) <= 4:
        raise PredictRequestError(f"data holds [audio, hotwords, language, itn]; got {len(data)} items")
    audio, hotwords, language, itn = [*data, None, None, None][:4]

    if hotwords is None:
        words: tuple[str, ...] = ()
    elif isinstance(hotwords, str):  # the WebUI's text box: one hotword per line or space
        words = tuple(hotwords.replace(",", " ").split())
    elif isinstance(hotwords, list) and all(isinstance(w, str) for w in hotwords):
        words = tuple(w for w in hotwords if w)
    else:
        raise PredictRequestError("hotwords must be a list of strings, a string or null")
    if language is None:
        language = "auto"
    if not isinstance(language, str) or not language:
        raise PredictRequestError("language must be a non-empty string")
    if itn is None:
        itn = True
    if not isinstance(itn, bool):
        raise PredictRequestError("itn must be true or false")
    return Transcription(audio_seconds=_audio_seconds(audio), hotwords=words, language=language, itn=itn)


class AsrNode:
    """The node's state and behaviour, independent of HTTP (the handler only translates)."""

    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._started = clock()
        #: True when the model came from the node's own disk (a start after a stop), not cold.
        self.from_cache = self._cache_matches()
        #: Seconds this start takes to load the model.
        self.load_delay_s = (config.load_delay_s * config.cached_load_fraction if self.from_cache
                             else config.load_delay_s)
        self._cache_written = threading.Event()
        self._gate = StreamGate(config.streams)
        self._stopping = threading.Event()
        self._stats_lock = threading.Lock()
        self._served = 0
        self._served_seconds = 0.0
        self.registry = CollectorRegistry()
        self._requests, self._durations = self._register_metrics()

    @property
    def loaded(self) -> bool:
        """True once the model has finished loading (never with ``never_ready``)."""
        if self.config.never_ready:
            return False
        if self._clock() - self._started < self.load_delay_s:
            return False
        if not self._cache_written.is_set():
            self._write_cache()
        return True

    def _cache_matches(self) -> bool:
        path = self.config.model_cache
        if not path:
            return False
        try:
            return Path(path).read_text(encoding="utf-8").strip() == self.config.model_version
        except OSError:
            return False

    def _write_cache(self) -> None:
        """Keep the loaded model on the node's disk, so a start after a stop loads from it."""
        self._cache_written.set()
        path = self.config.model_cache
        if not path or self.from_cache:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(self.config.model_version + "\n", encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot write the model cache %s: %s", path, exc)

    @property
    def active_streams(self) -> int:
        """Transcriptions being processed now."""
        return self._gate.active

    @property
    def queued_streams(self) -> int:
        """Transcriptions waiting for a free stream."""
        return self._gate.queued

    def gpu_memory_used_mib(self) -> float:
        """Model weights plus each active stream's share once loaded, capped at the card's size."""
        if not self.loaded:
            return 0.0
        cfg = self.config
        used = cfg.model_memory_mib + cfg.stream_memory_mib * self._gate.active
        return float(min(cfg.gpu_memory_mib, used))

    def _register_metrics(self) -> tuple[Counter, Histogram]:
        cfg = self.config
        own = {"instance_id": cfg.instance_id, "pool": cfg.pool}
        reg = self.registry
        # DCGM exporter's label set, plus ours so one selector works for every series.
        gpu = {"gpu": "0", "UUID": f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, cfg.instance_id)}",
               "Hostname": cfg.instance_id, **own}
        used = Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", list(gpu), registry=reg)
        used.labels(**gpu).set_function(self.gpu_memory_used_mib)
        free = Gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", list(gpu), registry=reg)
        free.labels(**gpu).set_function(lambda: cfg.gpu_memory_mib - self.gpu_memory_used_mib())

        gauges: dict[str, tuple[str, Callable[[], float]]] = {
            "asr_active_streams": ("Transcriptions being processed.", lambda: float(self._gate.active)),
            "asr_queued_streams": ("Transcriptions waiting for a stream.", lambda: float(self._gate.queued)),
            "asr_stream_capacity": ("Concurrent streams this node serves.", lambda: float(cfg.streams)),
            "asr_model_loaded": ("1 once the model is loaded.", lambda: float(self.loaded)),
            "asr_model_from_cache": ("1 when this start loads the model from the node's own disk.",
                                     lambda: float(self.from_cache)),
            "asr_model_load_seconds": ("Seconds this start takes to load the model.",
                                       lambda: float(self.load_delay_s)),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, list(own), registry=reg).labels(**own).set_function(read)
        Info("asr_model", "The model this node serves.", list(own), registry=reg).labels(**own).info(
            {"model_version": cfg.model_version}
        )
        requests = Counter("asr_requests", "Predict requests by HTTP status.", [*own, "code"], registry=reg)
        durations = Histogram(
            "asr_request_duration_seconds", "Wall time of successful transcriptions, queueing included.",
            list(own), buckets=DURATION_BUCKETS, registry=reg,
        )
        return requests, durations

    def metrics(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)

    def predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Run one transcription; return the HTTP status and the JSON payload."""
        status, payload = self._predict(body)
        self._requests.labels(self.config.instance_id, self.config.pool, str(status)).inc()
        return status, payload

    def _predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        if not self.loaded:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "model is not loaded yet"}
        try:
            request = parse_predict(body)
        except PredictRequestError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        start = time.monotonic()
        if not self._gate.acquire():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "node is shutting down"}
        try:
            # Event.wait doubles as an interruptible sleep: shutdown ends in-flight work at once.
            if self._stopping.wait(request.audio_seconds * self.config.real_time_factor):
                return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "node is shutting down"}
        finally:
            self._gate.release()
        spent = time.monotonic() - start
        self._durations.labels(self.config.instance_id, self.config.pool).observe(spent)
        with self._stats_lock:
            self._served += 1
            self._served_seconds += spent
            average = self._served_seconds / self._served
        return HTTPStatus.OK, {
            "data": [self.transcript(request)],
            "is_generating": False,
            "duration": spent,
            "average_duration": average,
        }

    def transcript(self, request: Transcription) -> str:
        """Deterministic text for a request: equal inputs and model version give equal text."""
        text = (f"[{self.config.model_version}] simulated transcript of "
                f"{request.audio_seconds:.1f} s of {request.language} audio")
        if request.hotwords:
            text += f"; hotwords: {', '.join(request.hotwords)}"
        return text if request.itn else text + " (no ITN)"

    def close(self) -> None:
        """Refuse queued work and cut in-flight transcriptions short (SIGTERM)."""
        self._stopping.set()
        self._gate.close()


class NodeRequestHandler(BaseHTTPRequestHandler):
    """Routes HTTP requests to an ``AsrNode``."""

    server_version = "SimulatedFunASR/0.1"

    def __init__(self, *args: Any, node: AsrNode, **kwargs: Any) -> None:
        # BaseHTTPRequestHandler handles the request inside __init__, so the node is set first.
        self.node = node
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        """``/healthz`` and ``/metrics``."""
        path = urlsplit(self.path).path
        if path == "/healthz":
            if self.node.loaded:
                self._send(HTTPStatus.OK, b"healthy\n", "text/plain; charset=utf-8")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"loading\n", "text/plain; charset=utf-8")
        elif path == "/metrics":
            self._send(HTTPStatus.OK, self.node.metrics(), CONTENT_TYPE_LATEST)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})

    def do_POST(self) -> None:
        """``/api/predict/``: one transcription."""
        path = urlsplit(self.path).path
        if path not in PREDICT_PATHS:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            too_large = {"error": f"body over {MAX_BODY_BYTES} bytes"}
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large)
            return
        status, payload = self.node.predict(self.rfile.read(length))
        self._send_json(status, payload)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away before the %s answer", status)

    def log_message(self, format: str, *args: Any) -> None:
        """Access log through ``logging`` instead of raw stderr."""
        logger.info("%s %s", self.address_string(), format % args)


class NodeServer(ThreadingHTTPServer):
    """A thread per connection, so queued transcriptions never block ``/healthz`` or ``/metrics``."""

    daemon_threads = True
    allow_reuse_address = True
    # The stdlib default backlog (5) drops connections when dozens of streams arrive at once.
    request_queue_size = 256


def make_server(node: AsrNode, host: str, port: int) -> NodeServer:
    """Bind ``host:port`` (0 picks a free port) and return the server; call ``serve_forever``."""
    return NodeServer((host, port), partial(NodeRequestHandler, node=node))


class BackgroundNode:
    """A node served from a background thread of this process (tests, demos); ``stop()`` ends it."""

    def __init__(self, config: NodeConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.node = AsrNode(config)
        self.server = make_server(self.node, host, port)
        bound_host, bound_port = self.server.server_address[:2]
        self.host, self.port = str(bound_host), int(bound_port)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"node-{config.instance_id}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://host:port`` of the node."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Refuse new work, stop serving and release the port."""
        self.node.close()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
