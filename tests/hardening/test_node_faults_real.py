"""Node faults with real processes: simulated ASR nodes (``autoscaler.node`` processes of the local
provider), their real ``/healthz`` over HTTP, and a real nginx whose upstream file the controller
rewrites. A node that flaps (SIGSTOP / SIGCONT on alternate ticks) stays; a node that dies (SIGKILL)
leaves the upstream and is replaced; a node that hangs while booting (SIGSTOP before it is healthy)
is terminated after the boot timeout and replaced."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from ruamel.yaml import YAML

from autoscaler.balancers.nginx import parse_upstream
from autoscaler.clock import SystemClock
from autoscaler.controller import Adapters, Controller, TickOutcome
from autoscaler.embedded import EmbeddedNginx
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.policy.model import PoolPolicy
from autoscaler.probes import HttpNodeProbe
from autoscaler.providers.local import LocalProvider
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import STREAMS_QUERY
from autoscaler.testing.embedded_fixtures import embedded_nginx  # noqa: F401 - pytest finds fixtures by name
from autoscaler.wiring import build_balancer

BOOT_TIMEOUT_S = 8.0

pytestmark = pytest.mark.long


def node_pid(instance_id: str) -> int:
    """The pid of the node process the local provider started for ``instance_id`` (by its command line)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "autoscaler.node" in cmdline and instance_id in cmdline:
            return int(proc.info["pid"])
    raise AssertionError(f"no process for node {instance_id}")


class Pool:
    """A controller on real nodes and a real nginx, ticked by the test."""

    def __init__(self, policy_for: Callable[[int], PoolPolicy], nginx: EmbeddedNginx) -> None:
        self.min_nodes = 2
        self.policy_for = policy_for
        policy = policy_for(2)
        self.provider = LocalProvider.for_policy(policy, kill_grace_s=1.0)
        self.metrics = FakeMetricsSource()
        self.nginx = nginx
        adapters = Adapters(provider=self.provider, balancer=build_balancer(policy), metrics=self.metrics,
                            store=MemoryStore(), probe=HttpNodeProbe(timeout_s=1.0), clock=SystemClock())
        self.controller = Controller(lambda: self.policy_for(self.min_nodes), adapters)
        self.stopped: set[int] = set()
        self.history: list[TickOutcome] = []

    def terminated(self, instance_id: str) -> str | None:
        """Why ``instance_id`` was terminated, or None if it was not (yet)."""
        return next((o.terminated[instance_id] for o in self.history if instance_id in o.terminated), None)

    def tick(self) -> TickOutcome:
        """One tick at a pool-wide load right at the target (no scaling from the check)."""
        self.metrics.set(STREAMS_QUERY, 7.0)
        outcome = self.controller.tick()
        self.history.append(outcome)
        assert not [e for e in outcome.errors if "boot" not in e], outcome.errors
        return outcome

    def upstream(self) -> set[str]:
        """Instance ids in nginx's upstream file."""
        return {b.instance_id for b in parse_upstream(self.nginx.upstream_file.read_text())}

    def tick_until(self, done: Callable[[], bool], what: str,
                   timeout_s: float) -> tuple[list[TickOutcome], float]:
        """Tick every 0.5 s until ``done()``; return the outcomes and the seconds it took."""
        start, outcomes = time.monotonic(), []
        while not done():
            assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s: {outcomes[-3:]}"
            outcomes.append(self.tick())
            time.sleep(0.5)
        return outcomes, time.monotonic() - start

    def pause(self, pid: int) -> None:
        """SIGSTOP a node: it accepts connections but answers nothing (a hung process)."""
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

    def resume(self, pid: int) -> None:
        """SIGCONT a node stopped by ``pause``."""
        os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)


@pytest.fixture
def pool(tmp_path: Path, embedded_nginx: EmbeddedNginx) -> Iterator[Pool]:  # noqa: F811 - the fixture
    """A local pool (min 2) behind the embedded nginx; every node is stopped after the test."""
    balancer = embedded_nginx.balancer_config().model_dump(mode="json", exclude_none=True)

    def policy_for(min_nodes: int) -> PoolPolicy:
        document = {
            "pool": "nodefaults",
            "provider": {"kind": "local", "state_dir": str(tmp_path / "fleet"), "load_delay": 0.5},
            "launch": {"model_version": "fun-asr-nano-2512", "image": {"id": "local"},
                       "instance_types": [{"name": "local-gpu", "streams": 10, "price_per_hour": 0.6}]},
            "balancer": balancer,
            "health": {"timeout": 1.0, "boot_timeout": BOOT_TIMEOUT_S},
            "drain": {"timeout": 30.0},
            "scaling": {"min_nodes": min_nodes, "max_nodes": 4, "tick": 1.0,
                        "checks": [{"name": "streams", "type": "target_tracking", "query": STREAMS_QUERY,
                                    "target": 7}],
                        "behavior": {"scale_in": {"stabilization": 0.0}}},
        }
        text = io.StringIO()
        YAML().dump(document, text)
        return parse_policy(text.getvalue().encode(), "nodefaults.yaml")

    made = Pool(policy_for, embedded_nginx)
    try:
        yield made
    finally:
        for pid in list(made.stopped):
            made.resume(pid)
        made.provider.stop_all("nodefaults")


def test_flapping_dead_and_never_healthy_nodes_with_real_processes(pool: Pool) -> None:
    """Flapping for 8 ticks never leaves nginx; a SIGKILLed node leaves nginx within two ticks and
    is replaced by one launch; a node hung before it was healthy is terminated after the boot timeout
    and replaced; one launch per replaced node."""
    pool.tick_until(lambda: len(pool.upstream()) == 2, "2 nodes serving", 60)
    first, second = sorted(pool.upstream())

    # Flapping: the node hangs on every other tick (its probe times out), answers on the others.
    flapper = node_pid(first)
    for n in range(8):
        pool.pause(flapper) if n % 2 == 0 else pool.resume(flapper)
        outcome = pool.tick()
        assert first in pool.upstream() and not outcome.terminated and not outcome.launched, (n, outcome)
    pool.resume(flapper)

    # Dead: SIGKILL; out of nginx within two ticks and replaced.
    killed_at = len(pool.history)
    os.kill(node_pid(second), signal.SIGKILL)
    left, left_s = pool.tick_until(lambda: second not in pool.upstream(), "dead node leaves nginx", 30)
    # The local provider sees the process gone (a stopped machine), so the node leaves on the first
    # tick; a node whose machine still runs gets the grace count (the flapping case above).
    assert len(left) <= 2, [o.nodes for o in left]
    _, replaced_s = pool.tick_until(lambda: len(pool.upstream()) == 2, "dead node replaced", 60)
    # The local provider lists a node whose process is gone as gone (as a cloud lists a terminated
    # instance), so nothing is left to terminate; a machine still running without its server gets
    # the boot timeout instead (tests/hardening/test_node_faults.py, with fakes).
    assert second not in {i.id for i in pool.provider.list_instances("nodefaults")}
    launched = [i for o in pool.history[killed_at:] for i in o.launched]
    assert len(launched) == 1 and launched[0] in pool.upstream(), launched

    # Never healthy: a third node is launched and hangs before its health check ever passes.
    pool.min_nodes = 3
    before = len(pool.history)
    outcome = pool.tick()
    assert len(outcome.launched) == 1
    stuck = outcome.launched[0]
    pool.pause(node_pid(stuck))
    started = time.monotonic()
    hung: list[TickOutcome] = []

    def stuck_terminated() -> bool:
        return any(stuck in o.terminated for o in hung)

    while not stuck_terminated():
        assert time.monotonic() - started < 60, [o.nodes for o in hung[-3:]]
        hung.append(pool.tick())
        assert stuck not in pool.upstream()
        time.sleep(0.5)
    hung_s = time.monotonic() - started
    why = next(o.terminated[stuck] for o in hung if stuck in o.terminated)
    assert "boot timeout" in why and hung_s >= BOOT_TIMEOUT_S, (why, hung_s)
    pool.stopped.clear()  # terminated: the provider killed it
    _, refilled_s = pool.tick_until(lambda: len(pool.upstream()) == 3, "hung node replaced", 60)
    relaunched = [i for o in pool.history[before + 1:] for i in o.launched]
    assert len(relaunched) == 1, relaunched
    print(f"\nflapping: 8 ticks, 0 removals; dead: out of nginx after {len(left)} tick(s) ({left_s:.1f} s), "
          f"replacement serving {left_s + replaced_s:.1f} s after the kill; hung while booting: "
          f"terminated {hung_s:.1f} s after its launch (boot timeout "
          f"{BOOT_TIMEOUT_S:g} s), replacement serving {refilled_s:.1f} s later")
