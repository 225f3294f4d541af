"""How much the node agent costs: added latency per request, and requests/s it proxies on one core.

    .venv/bin/python benchmarks/node_agent_speed.py [--requests N] [--seconds S] [--clients C]

Starts a trivial upstream (an aiohttp app answering ``POST /api/predict/`` at once with a small
Gradio-shaped JSON) and ``autoscaler node-agent`` in front of it, each its own process, the agent
pinned to one core. Then:

1. **added latency**: N sequential transcriptions straight to the upstream, then N through the agent
   (one keep-alive connection each); the difference of the medians (and of the 99th percentiles) is
   what the agent adds to every request. Measured twice: across processes (what a client sees,
   waits for a free core included), and with client, agent and upstream on one event loop in this
   process (no scheduling: the agent's own code path);
2. **throughput**: C concurrent clients for S seconds through the agent; requests/s, and requests per
   second of the agent's own CPU time (from /proc), which is what one fully busy core would proxy
   whatever else shares the machine.

Prints the figures; exits 1 when the agent proxies fewer than 500 requests per CPU-second, i.e.
spends more than 2 ms of CPU on a request (invisible next to transcriptions of seconds). The
latencies are wall-clock figures and include waiting for a core: on a shared machine they measure
the machine as much as the agent, so they are printed, not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

BODY = b'{"data": ["/data/hello.wav", ["hotword"], "zh", true]}'
ANSWER = {"data": ["hello world"], "is_generating": False, "duration": 0.0, "average_duration": 0.0}
PER_CPU_SECOND_BUDGET = 500.0


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve_upstream(port: int) -> None:
    """The trivial ASR server (run in a child process)."""
    async def predict(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(ANSWER)

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/predict/", predict)
    app.router.add_get("/", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def sequential(url: str, count: int) -> list[float]:
    """Seconds of each of ``count`` requests sent one after another on one connection."""
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(count + 20):
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 20:  # warm-up
                times.append(time.perf_counter() - started)
    return times


async def concurrent(url: str, clients: int, seconds: float) -> int:
    """Requests completed by ``clients`` closed-loop clients in ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done


async def in_process(count: int) -> tuple[list[float], list[float]]:
    """Sequential timings straight to an in-process upstream and through an in-process agent."""
    from autoscaler.node.agent import AgentConfig, NodeAgent

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(ANSWER)

    upstream_app = web.Application()
    upstream_app.router.add_post("/api/predict/", predict)
    upstream_runner = web.AppRunner(upstream_app, access_log=None)
    await upstream_runner.setup()
    upstream_port, agent_port = free_port(), free_port()
    await web.TCPSite(upstream_runner, "127.0.0.1", upstream_port).start()
    agent = NodeAgent(AgentConfig(upstream=f"http://127.0.0.1:{upstream_port}", probe_interval_s=1.0))
    agent_runner = web.AppRunner(agent.app(), handler_cancellation=True, access_log=None)
    await agent_runner.setup()
    await web.TCPSite(agent_runner, "127.0.0.1", agent_port).start()
    try:
        direct = await sequential(f"http://127.0.0.1:{upstream_port}/api/predict/", count)
        proxied = await sequential(f"http://127.0.0.1:{agent_port}/api/predict/", count)
    finally:
        await agent_runner.cleanup()
        await upstream_runner.cleanup()
    return direct, proxied


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(url: str, timeout_s: float = 30.0) -> None:
    """Until ``url`` answers 200."""
    async def poll() -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")
                await asyncio.sleep(0.1)

    asyncio.run(poll())


def main() -> int:
    """Run both measurements and print them; exit 1 over budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the throughput run")
    parser.add_argument("--no-pin", action="store_true", help="let the agent run on any core")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.port)
        return 0

    upstream_port, agent_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", "--port", str(upstream_port)])
    agent = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "node-agent", "--listen", f"127.0.0.1:{agent_port}",
         "--upstream", f"http://127.0.0.1:{upstream_port}", "--max-streams", str(args.clients),
         "--probe-interval", "1"],
        stderr=subprocess.DEVNULL,
    )
    try:
        if not args.no_pin:
            os.sched_setaffinity(agent.pid, {sorted(os.sched_getaffinity(0))[-1]})
        wait_for(f"http://127.0.0.1:{upstream_port}/")
        wait_for(f"http://127.0.0.1:{agent_port}/healthz")
        direct = asyncio.run(sequential(f"http://127.0.0.1:{upstream_port}/api/predict/", args.requests))
        proxied = asyncio.run(sequential(f"http://127.0.0.1:{agent_port}/api/predict/", args.requests))
        cpu_before = cpu_seconds(agent.pid)
        started = time.perf_counter()
        count = asyncio.run(concurrent(f"http://127.0.0.1:{agent_port}/api/predict/", args.clients,
                                       args.seconds))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(agent.pid) - cpu_before
    finally:
        for process in (agent, upstream):
            process.terminate()
            process.wait(timeout=10)

    def ms(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if q < 100 else max(values) * 1000

    local_direct, local_proxied = asyncio.run(in_process(args.requests))
    added_median = (statistics.median(proxied) - statistics.median(direct)) * 1000
    added_p99 = ms(proxied, 99) - ms(direct, 99)
    per_cpu_second = count / cpu if cpu > 0 else float("inf")
    print(f"sequential, {args.requests} requests each (one keep-alive connection):")
    for label, times in (("direct to the server", direct), ("through the agent", proxied)):
        print(f"  {label:<22} median {statistics.median(times) * 1000:.2f} ms  p99 {ms(times, 99):.2f} ms")
    print(f"  added by the agent     median {added_median:.2f} ms  p99 {added_p99:.2f} ms")
    local_added = (statistics.median(local_proxied) - statistics.median(local_direct)) * 1000
    print("  on one event loop (no waiting for a core): "
          f"direct {statistics.median(local_direct) * 1000:.2f} ms, "
          f"through the agent {statistics.median(local_proxied) * 1000:.2f} ms, added {local_added:.2f} ms")
    print(f"throughput, {args.clients} clients for {args.seconds:g} s through the agent "
          "(pinned to one core):")
    print(f"  {count} requests in {wall:.1f} s = {count / wall:.0f} requests/s "
          f"(the machine's other load included)")
    print(f"  agent CPU {cpu:.2f} s → {per_cpu_second:.0f} requests per CPU-second "
          f"(what one busy core proxies), {1000 / per_cpu_second:.2f} ms of CPU per request")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ok = per_cpu_second >= PER_CPU_SECOND_BUDGET
    print("within budget" if ok else f"OVER BUDGET (≥ {PER_CPU_SECOND_BUDGET:.0f} requests per CPU-second)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
