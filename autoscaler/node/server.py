"""A simulated Fun-ASR server: the Gradio-style predict endpoint, a readiness check and GPU metrics.

It stands in for the ASR server of a GPU node in tests and in the local demo, and runs behind the
real node agent (``autoscaler.node.agent``), exactly as a real server does on a real node: the agent
counts, queues and limits the streams and exports the ``asr_*`` metrics; this server only
transcribes. A transcription "takes" the audio's duration times the real-time factor. Like a GPU it
has room for ``streams`` transcriptions at once: one more fails with a CUDA-style out-of-memory
error (the agent in front never lets that happen). GPU memory is reported the way the DCGM exporter
reports it, so the same PromQL works against the simulation and a real fleet.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import select
import socket
import threading
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Info
from prometheus_client.exposition import generate_latest

from autoscaler.node.agent import DURATION_BUCKETS, AgentConfig, BackgroundAgent

logger = logging.getLogger("autoscaler.node")

#: A body carries a path, a number or the audio itself (base64, as Gradio 3 clients send it).
MAX_BODY_BYTES = 64 << 20
#: Longest audio the simulation accepts (a day), so a typo cannot park a stream forever.
MAX_AUDIO_SECONDS = 86_400.0
PREDICT_PATHS = frozenset({"/api/predict", "/api/predict/", "/run/predict", "/run/predict/"})
#: How often a running transcription checks whether its client is still there.
CANCEL_CHECK_S = 0.05
#: Status logged for a transcription whose client left (nginx's convention; never sent).
CLIENT_GONE = 499
#: How often the agent in front of a simulated server asks it whether the model is loaded.
PROBE_INTERVAL_S = 0.5

__all__ = ["DURATION_BUCKETS"]  # re-exported: tests bucket latencies the way the agent does


@dataclass(frozen=True)
class NodeConfig:
    """How one simulated node behaves; mirrors the ``python -m autoscaler.node`` flags."""

    instance_id: str
    pool: str
    model_version: str
    streams: int = 10
    max_queue: int = 100
    load_delay_s: float = 5.0
    gpu_memory_mib: int = 24576
    model_memory_mib: int = 3400
    stream_memory_mib: int = 1900
    real_time_factor: float = 1.0
    never_ready: bool = False

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError("streams must be at least 1")
        if self.max_queue < 0:
            raise ValueError("max_queue cannot be negative")
        if not math.isfinite(self.load_delay_s) or self.load_delay_s < 0:
            raise ValueError("load_delay_s must be a finite number >= 0")
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


def _audio_seconds(value: Any) -> float:
    """Seconds of audio in the first ``data`` item: a number, a numeric string, a WAV path or WAV data."""
    if isinstance(value, dict):  # Gradio file objects: {"path": ...} (4.x) or {"name", "data"} (3.x)
        if isinstance(value.get("data"), str):
            return _checked_seconds(_wav_data_seconds(value["data"]))
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
    return _checked_seconds(seconds)


def _checked_seconds(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_AUDIO_SECONDS:
        raise PredictRequestError(f"audio duration must be between 0 and {MAX_AUDIO_SECONDS:.0f} seconds")
    return seconds


def _wav_data_seconds(data: str) -> float:
    """Duration of a WAV sent inline as ``data:audio/wav;base64,...`` (or bare base64)."""
    _, _, encoded = data.rpartition("base64,")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PredictRequestError(f"audio data is not base64: {exc}") from exc
    try:
        with wave.open(io.BytesIO(raw), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError) as exc:
        raise PredictRequestError(f"audio data is not a readable WAV file ({exc})") from exc


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
    """The simulated server's state and behaviour, independent of HTTP (the handler only translates)."""

    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._started = clock()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._busy = 0
        self._served = 0
        self._served_seconds = 0.0
        self.registry = CollectorRegistry()
        self._requests = self._register_metrics()

    def load_delay_s(self) -> float:
        """Seconds from start until the model is loaded: the one place the load time is decided."""
        return self.config.load_delay_s

    @property
    def loaded(self) -> bool:
        """True once the model has finished loading (never with ``never_ready``)."""
        if self.config.never_ready:
            return False
        return self._clock() - self._started >= self.load_delay_s()

    @property
    def active_streams(self) -> int:
        """Transcriptions this server is processing now (on its simulated GPU)."""
        return self._busy

    def gpu_memory_used_mib(self) -> float:
        """Model weights plus each active stream's share once loaded, capped at the card's size."""
        if not self.loaded:
            return 0.0
        cfg = self.config
        used = cfg.model_memory_mib + cfg.stream_memory_mib * self._busy
        return float(min(cfg.gpu_memory_mib, used))

    def _register_metrics(self) -> Counter:
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
        Info("asr_model", "The model this node serves.", list(own), registry=reg).labels(**own).info(
            {"model_version": cfg.model_version}
        )
        return Counter("asr_server_predictions", "Predict requests the ASR server answered, by status.",
                       [*own, "code"], registry=reg)

    def metrics(self) -> bytes:
        """The Prometheus text exposition of the simulated server (GPU memory, model)."""
        return generate_latest(self.registry)

    def predict(
        self, body: bytes, client_gone: Callable[[], bool] = lambda: False
    ) -> tuple[int, dict[str, Any]]:
        """Run one transcription; return the HTTP status and the JSON payload.

        ``client_gone`` is asked as the work runs: a server that notices its caller left stops the
        stream and frees its GPU memory (499), as inference servers that abort on disconnect do.
        """
        status, payload = self._predict(body, client_gone)
        self._requests.labels(self.config.instance_id, self.config.pool, str(status)).inc()
        return status, payload

    def _predict(self, body: bytes, client_gone: Callable[[], bool]) -> tuple[int, dict[str, Any]]:
        if not self.loaded:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "model is not loaded yet"}
        try:
            request = parse_predict(body)
        except PredictRequestError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        if self._stopping.is_set():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "node is shutting down"}
        with self._lock:
            if self._busy >= self.config.streams:
                # What a GPU does when one stream too many is started on it.
                return HTTPStatus.INTERNAL_SERVER_ERROR, {
                    "error": f"CUDA out of memory: {self._busy} streams already on the GPU"}
            self._busy += 1
        start = time.monotonic()
        try:
            deadline = start + request.audio_seconds * self.config.real_time_factor
            while (left := deadline - time.monotonic()) > 0:
                # Event.wait doubles as an interruptible sleep: shutdown ends in-flight work at once.
                if self._stopping.wait(min(left, CANCEL_CHECK_S)):
                    return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "node is shutting down"}
                if client_gone():
                    return CLIENT_GONE, {"error": "client went away"}
        finally:
            with self._lock:
                self._busy -= 1
        spent = time.monotonic() - start
        with self._lock:
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
        """Cut in-flight transcriptions short and refuse new ones (SIGTERM)."""
        self._stopping.set()


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
        status, payload = self.node.predict(self.rfile.read(length), self._client_gone)
        if status != CLIENT_GONE:
            self._send_json(status, payload)

    def _client_gone(self) -> bool:
        """True once the caller closed its connection (readable with nothing to read: EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

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
        """Access log through ``logging`` instead of raw stderr (the agent's probes and scrapes left out)."""
        if self.command == "GET" and urlsplit(self.path).path in ("/healthz", "/metrics"):
            return
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


def agent_config_for(config: NodeConfig, server_url: str, host: str, port: int) -> AgentConfig:
    """The node agent a simulated node runs in front of its server: the production agent's settings
    with the node's streams, its identity as labels, and the server's GPU metrics merged in."""
    return AgentConfig(
        listen_host=host, listen_port=port, upstream=server_url, max_streams=config.streams,
        max_queue=config.max_queue, probe_path="/healthz", probe_interval_s=PROBE_INTERVAL_S,
        probe_timeout_s=2.0, labels={"instance_id": config.instance_id, "pool": config.pool},
        upstream_metrics_path="/metrics",
    )


class BackgroundNode:
    """A simulated node in background threads of this process (tests, demos): the simulated server on
    an internal port behind a real node agent on ``host:port``; ``stop()`` ends both."""

    def __init__(self, config: NodeConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.node = AsrNode(config)
        self.server = make_server(self.node, "127.0.0.1", 0)
        self.server_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"node-{config.instance_id}", daemon=True)
        self._thread.start()
        try:
            self.agent = BackgroundAgent(agent_config_for(config, self.server_url, host, port))
        except BaseException:
            self._stop_server()
            raise
        self.host, self.port = self.agent.host, self.agent.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the node (its agent)."""
        return f"http://{self.host}:{self.port}"

    @property
    def queued_streams(self) -> int:
        """Transcriptions waiting in the node's agent."""
        return self.agent.gate.queued

    @property
    def active_streams(self) -> int:
        """Transcriptions the node's agent has let through to the server."""
        return self.agent.gate.active

    def stop(self) -> None:
        """Cut in-flight work short, stop serving and release both ports."""
        self.node.close()
        self.agent.stop()
        self._stop_server()

    def _stop_server(self) -> None:
        self.node.close()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
