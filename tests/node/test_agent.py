"""The node agent: its FIFO gate, and what a client gets (and the metrics say) under bad input and faults."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.node import BackgroundNode
from autoscaler.node.agent import AgentConfig, BackgroundAgent
from autoscaler.node.gate import GateClosed, GateFull, StreamGate
from autoscaler.testing import read_metric, wait_until

StartNode = Callable[..., BackgroundNode]


# ------------------------------------------------------------------------------------------ the gate
def test_gate_admits_waiters_in_arrival_order() -> None:
    """Waiters get a freed stream in the order they arrived."""

    async def scenario() -> list[int]:
        gate = StreamGate(1, max_queue=10)
        await gate.acquire()
        order: list[int] = []

        async def wait_turn(n: int) -> None:
            await gate.acquire()
            order.append(n)
            gate.release()

        tasks = []
        for n in range(5):
            tasks.append(asyncio.create_task(wait_turn(n)))
            await asyncio.sleep(0)
        assert gate.queued == 5
        gate.release()
        await asyncio.gather(*tasks)
        assert (gate.active, gate.queued) == (0, 0)
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_gate_cancelled_waiter_leaves_the_queue_and_passes_a_handed_slot_on() -> None:
    """A cancelled waiter leaves the queue; one cancelled just as it got a slot hands the slot on."""

    async def scenario() -> None:
        gate = StreamGate(1, max_queue=10)
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert gate.queued == 2
        gate.release()  # the slot goes to `first`...
        first.cancel()  # ...which is cancelled before it runs: `second` must get the slot
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, timeout=2)
        assert (gate.active, gate.queued) == (1, 0)
        third = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        assert (gate.active, gate.queued) == (1, 0)

    asyncio.run(scenario())


def test_gate_refuses_beyond_its_queue_and_after_close() -> None:
    """A full queue refuses at once (GateFull); close() refuses every waiter and later caller."""

    async def scenario() -> None:
        gate = StreamGate(1, max_queue=1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(GateFull):
            await gate.acquire()
        gate.close()
        with pytest.raises(GateClosed):
            await waiter
        with pytest.raises(GateClosed):
            await gate.acquire()
        assert (gate.active, gate.queued) == (1, 0)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def start_agent() -> Iterator[Callable[..., BackgroundAgent]]:
    """Start agents with ``AgentConfig`` keywords on an ephemeral loopback port; stop them afterwards."""
    running: list[BackgroundAgent] = []

    def start(**settings: Any) -> BackgroundAgent:
        config = AgentConfig(**({"listen_host": "127.0.0.1", "listen_port": 0, "probe_interval_s": 0.2}
                                | settings))
        agent = BackgroundAgent(config)
        running.append(agent)
        return agent

    yield start
    for agent in running:
        agent.stop()


def _predict(url: str, data: list[Any], timeout: float = 20.0) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.post(f"{url}/api/predict/", json={"data": data})


def _settled(url: str) -> bool:
    return read_metric(url, "asr_active_streams") == 0 and read_metric(url, "asr_queued_streams") == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _CrashingServer(socketserver.ThreadingTCPServer):
    """An "ASR server" that reads a request's head and then dies on it (closes the connection)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                self.connection.close()

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _wav_base64(seconds: float, rate: int = 16000) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(os.urandom(int(seconds * rate) * 2))
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------------ limits
def test_a_full_queue_is_429_with_retry_after_and_counted(start_node: StartNode) -> None:
    """With 1 stream and a queue of 1, a third transcription gets 429 + Retry-After at once; the
    other two finish, and afterwards the gauges are back to zero and the refusal is counted."""
    node = start_node(streams=1, max_queue=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        running = [pool.submit(_predict, node.url, [1.0])]
        wait_until(lambda: node.active_streams == 1, timeout_s=5, message="first in flight")
        running.append(pool.submit(_predict, node.url, [0.2]))
        wait_until(lambda: node.queued_streams == 1, timeout_s=5, message="second queued")
        refused = _predict(node.url, [0.1])
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "full" in refused.json()["error"]
        assert read_metric(node.url, "asr_queued_streams") == 1
        assert [f.result().status_code for f in running] == [200, 200]
    wait_until(lambda: _settled(node.url), timeout_s=5, message="gauges back to zero")
    assert read_metric(node.url, "asr_rejected_total", reason="queue_full") == 1
    assert read_metric(node.url, "asr_requests_total", code="429") == 1
    assert read_metric(node.url, "asr_requests_total", code="200") == 2
    assert read_metric(node.url, "asr_request_duration_seconds_count") == 2


def test_clients_that_leave_free_their_slot_queued_or_in_flight(start_node: StartNode) -> None:
    """A client that disconnects while queued leaves the queue; one that leaves mid-stream frees its
    stream (and the server's GPU); both are counted as 499 and the next request runs at once."""
    node = start_node(streams=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(_predict, node.url, [30.0], 1.5)
        wait_until(lambda: node.active_streams == 1, timeout_s=5, message="first in flight")
        queued = pool.submit(_predict, node.url, [30.0], 0.5)
        with pytest.raises(httpx.ReadTimeout):
            queued.result()
        with pytest.raises(httpx.ReadTimeout):
            in_flight.result()
    wait_until(lambda: _settled(node.url), timeout_s=5, message="both slots freed")
    wait_until(lambda: node.node.active_streams == 0, timeout_s=5, message="server stopped the stream")
    assert read_metric(node.url, "asr_requests_total", code="499") == 2
    started = time.monotonic()
    assert _predict(node.url, [0.1]).status_code == 200
    assert time.monotonic() - started < 5


def test_sixty_simultaneous_streams_never_oversubscribe_the_server(start_node: StartNode) -> None:
    """The simulated server fails a stream beyond C with out-of-memory; through the agent none does."""
    node = start_node(streams=3)
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: _predict(node.url, [0.2]).status_code, range(20)))
    assert codes == [200] * 20
    assert read_metric(node.url, "asr_server_predictions_total", code="200") == 20


# ------------------------------------------------------------------------------------------ bodies
def test_real_audio_in_the_body_passes_through(start_node: StartNode) -> None:
    """A 60 s WAV sent inline (base64, ~2.6 MB) reaches the server whole and is transcribed."""
    node = start_node(real_time_factor=0.005)
    audio = _wav_base64(60.0)
    assert len(audio) > 2_500_000
    response = _predict(node.url, [{"name": "meeting.wav", "data": audio}, [], "zh", True])
    assert response.status_code == 200, response.text
    assert "60.0 s of zh audio" in response.json()["data"][0]


def test_a_huge_body_is_413_before_it_queues(start_agent: Callable[..., BackgroundAgent]) -> None:
    """Bodies over the limit are refused with 413, whether announced (Content-Length) or chunked."""
    agent = start_agent(upstream="http://127.0.0.1:9", max_body_bytes=100_000)
    announced = httpx.post(f"{agent.url}/api/predict/", content=b"x" * 100_001, timeout=10)
    assert announced.status_code == 413
    assert "limit" in announced.json()["error"]

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 10_000

    chunked = httpx.post(f"{agent.url}/api/predict/", content=chunks(), timeout=10)
    assert chunked.status_code == 413
    assert read_metric(agent.url, "asr_rejected_total", reason="body_too_large") == 2
    assert read_metric(agent.url, "asr_requests_total", code="413") == 2
    assert _settled(agent.url)


def test_a_slow_client_is_served_and_a_stalled_one_gets_408(
    start_node: StartNode, start_agent: Callable[..., BackgroundAgent]
) -> None:
    """A body trickled over a second is transcribed; a body that stops arriving is a 408 after the
    body timeout, and neither holds a stream while its body is on the way."""
    node = start_node()
    agent = start_agent(upstream=node.server_url, body_timeout_s=1.0, labels={"pool": "slow"})
    body = b'{"data": [0.1, [], "zh", true]}'

    def trickle(stop_after: int | None = None) -> Iterator[bytes]:
        for i, byte in enumerate(body):
            if stop_after is not None and i == stop_after:
                time.sleep(5)  # stalls past the body timeout
            yield bytes([byte])
            time.sleep(0.02)
            assert agent.gate.active == 0, "a stream was taken while the body was still arriving"

    slow = httpx.post(f"{agent.url}/api/predict/", content=trickle(), timeout=20)
    assert slow.status_code == 200, slow.text
    with httpx.Client(timeout=20) as client:
        try:
            stalled = client.post(f"{agent.url}/api/predict/", content=trickle(stop_after=5))
            assert stalled.status_code == 408
        except httpx.RemoteProtocolError:
            pass  # the agent may close the connection while the client still writes
    wait_until(lambda: read_metric(agent.url, "asr_rejected_total", reason="body_timeout") == 1,
               timeout_s=10, message="stalled body counted")
    assert _settled(agent.url)


@pytest.mark.parametrize("body", [b"not json", b'{"data": "0.5"}', b'{"data": [1, [3], "zh", true]}'])
def test_malformed_bodies_get_the_servers_400_and_free_the_slot(start_node: StartNode, body: bytes) -> None:
    """A malformed transcription body reaches the server, whose 400 comes back and is counted."""
    node = start_node()
    response = httpx.post(f"{node.url}/api/predict/", content=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]
    assert read_metric(node.url, "asr_requests_total", code="400") == 1
    assert _settled(node.url)


# ------------------------------------------------------------------------------------------ faults
def test_a_server_that_never_starts(start_agent: Callable[..., BackgroundAgent]) -> None:
    """No server on the upstream port: /healthz 503, server_up 0, and a transcription is a 502
    saying the server is not answering, counted as a connect error."""
    agent = start_agent(upstream=f"http://127.0.0.1:{_free_port()}")
    time.sleep(0.5)  # a few probes
    health = httpx.get(f"{agent.url}/healthz", timeout=5)
    assert health.status_code == 503 and "not answering" in health.text
    assert read_metric(agent.url, "asr_server_up") == 0
    assert read_metric(agent.url, "asr_model_loaded") == 0
    response = _predict(agent.url, [0.1])
    assert response.status_code == 502
    assert "not answering" in response.json()["error"]
    assert read_metric(agent.url, "asr_upstream_errors_total", kind="connect") == 1
    assert read_metric(agent.url, "asr_requests_total", code="502") == 1
    assert _settled(agent.url)


def test_a_server_that_crashes_mid_request(start_agent: Callable[..., BackgroundAgent]) -> None:
    """The server drops the connection mid-request: the client gets a 502 saying it went away, the
    failure is counted and the stream is free again."""
    crashing = _CrashingServer()
    try:
        agent = start_agent(upstream=crashing.url)
        response = _predict(agent.url, [1.0])
        assert response.status_code == 502
        assert "went away" in response.json()["error"]
        assert read_metric(agent.url, "asr_upstream_errors_total", kind="disconnect") == 1
        assert read_metric(agent.url, "asr_requests_total", code="502") == 1
        assert _settled(agent.url)
    finally:
        crashing.stop()


def test_health_follows_the_server_going_away_and_coming_back(start_node: StartNode) -> None:
    """/healthz is 200 while the server is ready, 503 once it is gone, and the agent says so."""
    node = start_node()
    wait_until(lambda: httpx.get(f"{node.url}/healthz").status_code == 200, timeout_s=5, message="ready")
    node._stop_server()
    wait_until(lambda: httpx.get(f"{node.url}/healthz").status_code == 503, timeout_s=5, message="503")
    assert read_metric(node.url, "asr_server_up", instance_id="node-test-1") == 0
    response = _predict(node.url, [0.1])
    assert response.status_code == 502


# ------------------------------------------------------------------------------------------ the command
def test_node_agent_command_drains_on_sigterm(start_node: StartNode, tmp_path: Path) -> None:
    """``autoscaler node-agent``: healthy, then on SIGTERM /healthz turns 503 and new work is refused
    while the transcription in flight finishes with 200; then the process exits 0."""
    node = start_node()
    port = _free_port()
    log = (tmp_path / "agent.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "node-agent", "--listen", f"127.0.0.1:{port}",
         "--upstream", node.server_url, "--max-streams", "2", "--probe-path", "/healthz",
         "--probe-interval", "0.2", "--label", "pool=cli"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout_s=30, message="agent healthy")
        assert read_metric(url, "asr_stream_capacity", pool="cli") == 2
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(_predict, url, [2.0])
            wait_until(lambda: read_metric(url, "asr_active_streams") == 1, timeout_s=5, message="in flight")
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 503, timeout_s=5,
                       message="draining")
            refused = _predict(url, [0.1])
            assert refused.status_code == 503 and "draining" in refused.json()["error"]
            assert in_flight.result().status_code == 200
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        log.close()
    assert "draining" in (tmp_path / "agent.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "7860"], "HOST:PORT"),
        (["--upstream", "ftp://node"], "http://"),
        (["--max-streams", "0"], "max-streams"),
        (["--route", "POST"], "METHOD /path"),
        (["--probe-body", "{oops"], "not JSON"),
        (["--label", "pool"], "NAME=VALUE"),
        (["--queue-timeout", "nan"], "finite"),
    ],
)
def test_node_agent_command_rejects_bad_flags(args: list[str], message: str) -> None:
    """Each bad flag is a one-line error naming it and exit status 2, never a traceback."""
    result = CliRunner().invoke(app, ["node-agent", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.long
@pytest.mark.timeout(500)
def test_a_300_second_stream_is_not_cut_short(start_node: StartNode) -> None:
    """A transcription of 305 s (the reference deployment's longest is 300 s) returns 200."""
    node = start_node()
    response = _predict(node.url, [305.0], timeout=400)
    assert response.status_code == 200
    assert read_metric(node.url, "asr_request_duration_seconds_bucket", le="600.0") == 1


# ------------------------------------------------------------------------------------------ Gradio's queue
JOIN = "POST /gradio_api/queue/join"

class _FakeGradioQueue:
    """Gradio's queue protocol in miniature: ``queue/join`` answers an event id at once; the session's
    ``queue/data`` stream sends ``process_completed`` for each of its jobs once the test releases it."""

    def __init__(self) -> None:
        from aiohttp import web

        self.pending: dict[str, list[str]] = {}  # session → event ids
        self.release = threading.Event()
        app = web.Application()
        app.router.add_post("/gradio_api/queue/join", self._join)
        app.router.add_get("/gradio_api/queue/data", self._data)
        app.router.add_get("/", self._ok)
        self._app = app
        self._loop = asyncio.new_event_loop()
        self.port = _free_port()
        started = threading.Event()

        async def serve() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            started.set()

        self._thread = threading.Thread(target=lambda: (self._loop.run_until_complete(serve()),
                                                        self._loop.run_forever()), daemon=True)
        self._thread.start()
        assert started.wait(10)

    async def _ok(self, _request: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok")

    async def _join(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        event_id = f"ev{sum(len(v) for v in self.pending.values())}-{body['session_hash']}"
        self.pending.setdefault(body["session_hash"], []).append(event_id)
        return web.json_response({"event_id": event_id})

    async def _data(self, request: Any) -> Any:
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        session = request.query["session_hash"]
        await response.write(b'data: {"msg": "heartbeat"}\n\n')
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        for event_id in self.pending.pop(session, []):
            message = json.dumps({"msg": "process_completed", "event_id": event_id, "success": True,
                                  "output": {"data": ["hello world"]}})
            # Split mid-line: the agent must reassemble messages across chunks.
            line = f"data: {message}\n\n".encode()
            await response.write(line[:10])
            await response.write(line[10:])
        await response.write(b'data: {"msg": "close_stream"}\n\n')
        return response

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def test_gradio_queue_jobs_hold_a_stream_until_their_result_is_delivered(
    start_agent: Callable[..., BackgroundAgent],
) -> None:
    """A queue/join takes a stream and keeps it until process_completed for its event passes through
    the session's queue/data stream; a join beyond C waits in the agent's queue meanwhile."""
    gradio = _FakeGradioQueue()
    try:
        agent = start_agent(upstream=gradio.url, max_streams=2)
        join = f"{agent.url}/gradio_api/queue/join"
        with httpx.Client(timeout=20) as client, ThreadPoolExecutor(max_workers=2) as pool:
            for _ in range(2):
                assert client.post(join, json={"data": [], "session_hash": "s1"}).status_code == 200
            assert read_metric(agent.url, "asr_active_streams") == 2
            assert read_metric(agent.url, "asr_queued_streams") == 0
            third = pool.submit(client.post, join, json={"data": [], "session_hash": "s2"})
            wait_until(lambda: read_metric(agent.url, "asr_queued_streams") == 1, timeout_s=5,
                       message="third join queued behind two held streams")
            stream = pool.submit(client.get, f"{agent.url}/gradio_api/queue/data",
                                 params={"session_hash": "s1"})
            time.sleep(0.3)
            assert read_metric(agent.url, "asr_active_streams") == 2  # results not delivered yet
            gradio.release.set()
            assert stream.result().text.count("process_completed") == 2
            assert third.result().status_code == 200
            wait_until(lambda: read_metric(agent.url, "asr_queued_streams") == 0
                       and read_metric(agent.url, "asr_active_streams") == 1, timeout_s=5,
                       message="s1's streams released, s2's job holding one")
            assert "process_completed" in client.get(f"{agent.url}/gradio_api/queue/data",
                                                     params={"session_hash": "s2"}).text
        wait_until(lambda: _settled(agent.url), timeout_s=5, message="all released")
        assert read_metric(agent.url, "asr_requests_total", route=JOIN, code="200") == 3
        assert read_metric(agent.url, "asr_request_duration_seconds_count") == 3
    finally:
        gradio.stop()


def test_a_gradio_client_that_leaves_its_event_stream_frees_its_jobs(
    start_agent: Callable[..., BackgroundAgent],
) -> None:
    """A session whose queue/data stream closes before its results came frees its streams (499)."""
    gradio = _FakeGradioQueue()
    try:
        agent = start_agent(upstream=gradio.url, max_streams=2)
        with httpx.Client(timeout=20) as client:
            assert client.post(f"{agent.url}/gradio_api/queue/join",
                               json={"data": [], "session_hash": "gone"}).status_code == 200
            assert read_metric(agent.url, "asr_active_streams") == 1
            with pytest.raises(httpx.ReadTimeout):
                client.get(f"{agent.url}/gradio_api/queue/data", params={"session_hash": "gone"}, timeout=0.5)
        wait_until(lambda: _settled(agent.url), timeout_s=5, message="stream freed")
        assert read_metric(agent.url, "asr_requests_total", route=JOIN, code="499") == 1
    finally:
        gradio.release.set()
        gradio.stop()
