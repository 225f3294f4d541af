"""The simulated ASR node (simulated server behind the real node agent): health, the Gradio-style
predict endpoint, stream limits and metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.node import BackgroundNode, NodeConfig
from autoscaler.testing import read_metric, wait_until

# What the start_node fixture configures.
INSTANCE_ID = "node-test-1"
POOL = "asr-test"
MODEL_VERSION = "fun-asr-nano-2512"

StartNode = Callable[..., BackgroundNode]


def metric(node: BackgroundNode, name: str, **labels: str) -> float:
    """One sample of the node's /metrics."""
    return read_metric(node.url, name, **labels)


# One client for all requests: building a client (and its TLS context) per request costs tens of
# milliseconds of CPU, which would spread "simultaneous" requests over seconds.
_CLIENT = httpx.Client(limits=httpx.Limits(max_connections=200))


def predict(url: str, data: list[Any], timeout: float = 10.0) -> httpx.Response:
    """POST one Gradio-style predict request."""
    return _CLIENT.post(f"{url}/api/predict/", json={"data": data}, timeout=timeout)


def test_health_is_503_until_the_model_loads(start_node: StartNode) -> None:
    """/healthz answers 503 during the load delay and 200 ``healthy`` after it."""
    started = time.monotonic()
    node = start_node(load_delay_s=0.6)
    assert httpx.get(f"{node.url}/healthz").status_code == 503
    assert metric(node, "asr_model_loaded") == 0
    wait_until(lambda: httpx.get(f"{node.url}/healthz").status_code == 200, timeout_s=5, message="healthy")
    assert time.monotonic() - started >= 0.6
    response = httpx.get(f"{node.url}/healthz")
    assert response.text == "healthy\n"
    assert metric(node, "asr_model_loaded") == 1


def test_never_ready_node_stays_unhealthy_and_refuses_work(start_node: StartNode) -> None:
    """With never_ready the node answers 503 to health and predict even after the load delay."""
    node = start_node(load_delay_s=0.0, never_ready=True)
    time.sleep(0.1)
    assert httpx.get(f"{node.url}/healthz").status_code == 503
    response = predict(node.url, [0.1])
    assert response.status_code == 503
    assert "not loaded" in response.json()["error"]


def test_predict_returns_gradio_shaped_json(start_node: StartNode) -> None:
    """A predict of 0.3 s of audio takes about 0.3 s and answers {data: [text], is_generating, duration}."""
    node = start_node()
    response = predict(node.url, [0.3, ["会议", "纪要"], "zh", True])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data", "is_generating", "duration", "average_duration"}
    assert body["is_generating"] is False
    [text] = body["data"]
    assert MODEL_VERSION in text and "会议" in text and "zh" in text
    assert 0.3 <= body["duration"] < 1.5
    assert body["average_duration"] == pytest.approx(body["duration"])


def test_predict_accepts_numeric_strings_and_trailing_defaults(start_node: StartNode) -> None:
    """Audio given as a numeric string works, and hotwords/language/itn may be omitted."""
    node = start_node()
    response = predict(node.url, ["0.1"])
    assert response.status_code == 200
    assert "0.1 s of auto audio" in response.json()["data"][0]


def test_predict_reads_the_duration_of_a_wav_file(start_node: StartNode, tmp_path: Path) -> None:
    """A WAV path is processed for as long as the file plays (0.4 s here)."""
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 6400)
    node = start_node()
    response = predict(node.url, [str(path), [], "zh", False])
    assert response.status_code == 200
    assert "0.4 s of zh audio" in response.json()["data"][0]
    assert response.json()["duration"] >= 0.4


def test_predict_before_the_model_loads_is_503(start_node: StartNode) -> None:
    """Work sent while the model loads is refused with 503 and counted."""
    node = start_node(load_delay_s=30)
    response = predict(node.url, [0.1])
    assert response.status_code == 503
    assert metric(node, "asr_requests_total", code="503") == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"data": "0.5"}',
        b'{"data": []}',
        b'{"data": [1, [], "zh", true, "extra"]}',
        b'{"data": [true]}',
        b'{"data": [null]}',
        b'{"data": [-1]}',
        b'{"data": ["/no/such/file.wav"]}',
        b'{"data": [1, [3], "zh", true]}',
        b'{"data": [1, [], 7, true]}',
        b'{"data": [1, [], "zh", "yes"]}',
    ],
)
def test_malformed_predict_body_is_400(start_node: StartNode, body: bytes) -> None:
    """Each malformed predict body is answered 400 with a JSON error message, and counted."""
    node = start_node()
    response = httpx.post(f"{node.url}/api/predict/", content=body, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]
    assert metric(node, "asr_requests_total", code="400") == 1


def test_a_file_that_is_not_wav_is_400(start_node: StartNode, tmp_path: Path) -> None:
    """A path to a file that is not a WAV file is a 400 naming the file."""
    path = tmp_path / "notes.txt"
    path.write_text("not audio")
    node = start_node()
    response = predict(node.url, [str(path)])
    assert response.status_code == 400
    assert "notes.txt" in response.json()["error"]


def test_stream_limit_queues_the_excess(start_node: StartNode) -> None:
    """With 2 streams, 4 requests of 0.5 s take two rounds; 2 wait in the queue meanwhile."""
    node = start_node(streams=2)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(predict, node.url, [0.5]) for _ in range(4)]
        wait_until(lambda: node.queued_streams == 2, timeout_s=5, message="two queued")
        assert metric(node, "asr_queued_streams", instance_id=INSTANCE_ID, pool=POOL) in (1, 2)
        assert metric(node, "asr_active_streams", instance_id=INSTANCE_ID, pool=POOL) == 2
        responses = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 4
    assert elapsed >= 0.95  # two rounds of 0.5 s: never all four at once
    assert max(r.elapsed.total_seconds() for r in responses) >= 0.95  # the queued ones waited
    # The agent's histogram times transcriptions from arrival, so the wait in its queue counts.
    assert metric(node, "asr_request_duration_seconds_sum") >= 2 * 0.5 + 2 * 0.95


def test_health_and_metrics_answer_while_sixty_streams_are_in(start_node: StartNode) -> None:
    """60 simultaneous requests (10 served, 50 queued) all finish, and /healthz stays fast meanwhile."""
    node = start_node(streams=10)
    with ThreadPoolExecutor(max_workers=60) as pool:
        futures = [pool.submit(predict, node.url, [0.4], 30.0) for _ in range(60)]
        wait_until(lambda: node.queued_streams >= 30, timeout_s=5, message="requests queued")
        probe_started = time.monotonic()
        assert httpx.get(f"{node.url}/healthz", timeout=2).status_code == 200
        assert metric(node, "asr_active_streams") == 10
        assert time.monotonic() - probe_started < 1.0
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 60
    assert metric(node, "asr_request_duration_seconds_count") == 60
    assert metric(node, "asr_requests_total", code="200") == 60


def test_gpu_memory_follows_active_streams(start_node: StartNode) -> None:
    """FB_USED is 0 before load, then weights plus per-stream memory; FB_FREE is the rest."""
    node = start_node(load_delay_s=2.0, gpu_memory_mib=24576, model_memory_mib=3400, stream_memory_mib=1900)
    assert metric(node, "DCGM_FI_DEV_FB_USED", gpu="0", Hostname=INSTANCE_ID) == 0
    assert metric(node, "DCGM_FI_DEV_FB_FREE") == 24576
    wait_until(lambda: node.node.loaded, timeout_s=3, message="model loaded")
    assert metric(node, "DCGM_FI_DEV_FB_USED") == 3400
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(predict, node.url, [3.0]) for _ in range(3)]
        wait_until(lambda: node.node.active_streams == 3, timeout_s=10, message="3 active streams")
        assert metric(node, "asr_active_streams") == 3
        assert metric(node, "DCGM_FI_DEV_FB_USED", pool=POOL, instance_id=INSTANCE_ID) == 3400 + 3 * 1900
        assert metric(node, "DCGM_FI_DEV_FB_FREE") == 24576 - 3400 - 3 * 1900
        assert all(f.result().status_code == 200 for f in futures)
    assert metric(node, "DCGM_FI_DEV_FB_USED") == 3400


def test_gpu_memory_used_is_capped_at_the_card_size(start_node: StartNode) -> None:
    """More streams than the card holds report a full card, never more than its size."""
    node = start_node(gpu_memory_mib=8000, model_memory_mib=3400, stream_memory_mib=1900, streams=4)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(predict, node.url, [3.0]) for _ in range(3)]
        wait_until(lambda: node.node.active_streams == 3, timeout_s=10, message="3 active streams")
        assert metric(node, "DCGM_FI_DEV_FB_USED") == 8000
        assert metric(node, "DCGM_FI_DEV_FB_FREE") == 0
        assert all(f.result().status_code == 200 for f in futures)


def test_every_node_series_carries_instance_and_pool(start_node: StartNode) -> None:
    """All asr_* and DCGM_* samples carry instance_id and pool; model info carries the version."""
    node = start_node(streams=7)
    assert predict(node.url, [0.05]).status_code == 200
    text = httpx.get(f"{node.url}/metrics").text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith(("asr_", "DCGM_"))]
    names = {s.name for s in samples}
    assert {"asr_active_streams", "asr_queued_streams", "asr_model_loaded", "asr_model_info",
            "asr_requests_total", "asr_request_duration_seconds_bucket", "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE", "asr_stream_capacity"} <= names
    for sample in samples:
        assert sample.labels["instance_id"] == INSTANCE_ID, sample
        assert sample.labels["pool"] == POOL, sample
    assert metric(node, "asr_model_info", model_version=MODEL_VERSION) == 1
    assert metric(node, "asr_stream_capacity") == 7
    buckets = {s.labels["le"] for s in samples if s.name == "asr_request_duration_seconds_bucket"}
    assert {"0.1", "600.0", "+Inf"} <= buckets


def test_config_rejects_impossible_values() -> None:
    """Zero streams, a negative load delay or a non-positive real-time factor are refused."""
    for bad in ({"streams": 0}, {"load_delay_s": -1.0}, {"real_time_factor": 0.0}, {"gpu_memory_mib": 0}):
        with pytest.raises(ValueError):
            NodeConfig(instance_id="n", pool="p", model_version="v", **bad)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_cli_node_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``python -m autoscaler.node`` serves, and SIGTERM ends it with status 0 even mid-transcription."""
    port = _free_port()
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.node", "--port", str(port), "--instance-id", "cli-node",
         "--pool", POOL, "--model-version", MODEL_VERSION, "--streams", "1", "--load-delay", "0.2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout_s=15, message="CLI node healthy")
        assert read_metric(url, "asr_stream_capacity", instance_id="cli-node") == 1
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(predict, url, [60.0], 10.0)
            wait_until(lambda: read_metric(url, "asr_active_streams") == 1, timeout_s=5, message="in flight")
            sent = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - sent < 3
            assert in_flight.result().status_code == 503
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        log.close()
    assert "stopping node cli-node" in (tmp_path / "node.log").read_text()


@pytest.mark.parametrize(
    ("command", "status", "message"),
    [("{oops", 2, "--server-command"), ('["x", 3]', 2, "list of strings"),
     ('["/no/such/asr-server", "--port", "{port}"]', 1, "cannot start the ASR server")],
)
def test_cli_node_refuses_a_bad_server_command(command: str, status: int, message: str) -> None:
    """A --server-command that is not a JSON list of words, or cannot start, is a clear error."""
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler.node", "--port", "0", "--instance-id", "bad", "--pool", POOL,
         "--model-version", MODEL_VERSION, "--server-command", command],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == status, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
