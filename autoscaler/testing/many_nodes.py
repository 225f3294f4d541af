"""Many simulated GPU nodes' ``/metrics`` from one small process, one loopback port per node.

``python -m autoscaler.testing.many_nodes --count 200 --ports-file PATH`` listens on ``count`` free
127.0.0.1 ports (asyncio, one event loop) and writes the ports, one per line, to ``PATH`` once all
listen. Every port answers ``GET /metrics`` with the series a node agent exports and the shipped
policies query (``asr_active_streams``, ``asr_queued_streams``, ``asr_model_loaded``,
``asr_request_duration_seconds`` buckets, DCGM frame-buffer memory), with values that differ per
node and move a little on each scrape. It runs until SIGTERM. ``ManyNodes`` starts and stops it.

It exists so a real Prometheus can scrape hundreds of nodes on one machine (the Prometheus-queries
benchmark) without hundreds of processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from autoscaler.embedded._process import LOOPBACK

_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


def exposition(node: int, scrape: int) -> str:
    """The text exposition of node ``node`` at its ``scrape``-th scrape."""
    rng = random.Random(node * 1_000_003 + scrape)
    active = rng.randint(2, 9)
    lines = [
        "# TYPE asr_active_streams gauge", f"asr_active_streams {active}",
        "# TYPE asr_queued_streams gauge", "asr_queued_streams 0",
        "# TYPE asr_model_loaded gauge", "asr_model_loaded 1",
        "# TYPE DCGM_FI_DEV_FB_USED gauge", f"DCGM_FI_DEV_FB_USED {20000 + 1500 * active}",
        "# TYPE DCGM_FI_DEV_FB_FREE gauge", f"DCGM_FI_DEV_FB_FREE {80000 - 20000 - 1500 * active}",
        "# TYPE asr_request_duration_seconds histogram",
    ]
    done = 10 * scrape + node % 7
    for bound in _BUCKETS:
        within = int(done * min(1.0, bound / 90))
        lines.append(f'asr_request_duration_seconds_bucket{{le="{bound:g}"}} {within}')
    lines += [
        f'asr_request_duration_seconds_bucket{{le="+Inf"}} {done}',
        f"asr_request_duration_seconds_count {done}",
        f"asr_request_duration_seconds_sum {done * 45.0}",
    ]
    return "\n".join(lines) + "\n"


async def _serve(count: int, ports_file: Path) -> None:
    scrapes = [0] * count

    def handler(node: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                scrapes[node] += 1
                body = exposition(node, scrapes[node]).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass  # a scrape cut short: Prometheus retries on its next interval
            finally:
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler(n), LOOPBACK, 0) for n in range(count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    partial = ports_file.with_suffix(".partial")
    partial.write_text("\n".join(str(p) for p in ports) + "\n", encoding="utf-8")
    partial.replace(ports_file)  # whole or absent: the parent polls for it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


class ManyNodes:
    """The exporter process: ``with ManyNodes(200) as nodes: nodes.ports``; stopped by its pid."""

    def __init__(self, count: int, *, start_timeout_s: float = 30.0) -> None:
        self.count = count
        self.start_timeout_s = start_timeout_s
        self.ports: list[int] = []
        self._folder = tempfile.TemporaryDirectory(prefix="many-nodes-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the process and wait until every port listens."""
        ports_file = Path(self._folder.name) / "ports"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.testing.many_nodes", "--count", str(self.count),
             "--ports-file", str(ports_file)],
            env=os.environ.copy(),
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not ports_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the many-nodes exporter did not start")
            time.sleep(0.05)
        self.ports = [int(line) for line in ports_file.read_text(encoding="utf-8").split()]
        return self

    def stop(self) -> None:
        """SIGTERM the process (its own pid only), then SIGKILL after 5 s."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._folder.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    """Entry point of the exporter process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.count, args.ports_file))


if __name__ == "__main__":
    main()
