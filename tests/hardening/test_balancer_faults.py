"""Balancer faults with a real nginx: a crash between writing the upstream file and reloading, a
file changed by hand, nginx not running, a render `nginx -t` rejects. The last good list keeps
serving, the error is logged as an error, and the next tick retries and puts the recorded list in force.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
import structlog

from autoscaler.balancers.nginx import NginxBalancer, parse_upstream, render_upstream
from autoscaler.controller import Adapters, Controller
from autoscaler.domain import Backend, CloudState, Instance, IntentKind
from autoscaler.embedded import EmbeddedNginx
from autoscaler.errors import BalancerError
from autoscaler.executor import WorldExecutor
from autoscaler.files import atomic_write
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.policy.model import NginxBalancerConfig
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore
from autoscaler.testing import wait_until
from autoscaler.testing.controller_rig import POLICY, STREAMS_QUERY, FakeProbe, MovableClock
from autoscaler.testing.embedded_fixtures import TinyBackend

pytestmark = pytest.mark.integration


def backend(server: TinyBackend) -> Backend:
    """The backend of a TinyBackend, its name as instance id."""
    return Backend(address="127.0.0.1", port=server.port, instance_id=server.name)


def served(nginx: EmbeddedNginx, times: int = 10) -> set[str]:
    """Who answered ``times`` requests through nginx (an error status as ``HTTP nnn``)."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        out = set()
        for _ in range(times):
            try:
                response = client.get(nginx.url)
                out.add(response.text if response.status_code == 200 else f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                out.add(type(exc).__name__)
        return out


def wait_served(nginx: EmbeddedNginx, names: set[str]) -> None:
    """Wait until every request through nginx reaches exactly ``names``."""
    wait_until(lambda: served(nginx) == names, timeout_s=15.0, message=f"nginx serves {sorted(names)}")


def test_crash_between_write_and_reload_is_repaired_on_start(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """A controller died after writing the file but before the reload: nginx still routes to the old
    node. The restarted controller's first apply finds the file already matching and reloads anyway."""
    old, new = start_http_backend("node-old"), start_http_backend("node-new")
    config = embedded_nginx.balancer_config()
    NginxBalancer(config).apply([backend(old)])
    wait_served(embedded_nginx, {"node-old"})
    atomic_write(embedded_nginx.upstream_file, render_upstream(config.upstream, config.zone_size,
                                                               [backend(new)]))  # ...and the crash
    assert served(embedded_nginx) == {"node-old"}, "nginx has not loaded the file yet"
    restarted = NginxBalancer(config)
    assert restarted.current() == [backend(new)]
    reloads = embedded_nginx.reload_count()
    restarted.apply([backend(new)])
    embedded_nginx.wait_reloaded(reloads + 1)
    wait_served(embedded_nginx, {"node-new"})
    restarted.apply([backend(new)])  # from then on an unchanged list reloads nothing
    assert embedded_nginx.reload_count() == reloads + 1


def _executor(config: NginxBalancerConfig, store: MemoryStore) -> WorldExecutor:
    """A controller process's executor: a fresh nginx balancer, the shared store."""
    return WorldExecutor(FakeProvider(), NginxBalancer(config), store, MovableClock())


def test_restart_after_a_completed_apply_does_not_reload_an_unchanged_list(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """The last apply's intent completed, none is open: a restarted controller's first apply of the
    same list reloads nothing (a reload closes nginx's idle keep-alive connections). With an apply
    left open by a crash after writing the file, the restart reloads and the written list serves."""
    old, new = start_http_backend("node-old"), start_http_backend("node-new")
    config, store = embedded_nginx.balancer_config(), MemoryStore()
    _executor(config, store).apply_balancer("unit", [backend(old)], tick_id=None, changed=True)
    wait_served(embedded_nginx, {"node-old"})
    reloads = embedded_nginx.reload_count()
    assert not _executor(config, store).apply_balancer("unit", [backend(old)], tick_id=None, changed=False)
    assert embedded_nginx.reload_count() == reloads, "a confirmed list was reloaded again on restart"
    # A crash mid-apply: the intent is recorded and the file written, nginx never reloaded.
    store.open_intent("unit", IntentKind.BALANCER, MovableClock().now(), instance_ids=(new.name,))
    atomic_write(embedded_nginx.upstream_file,
                 render_upstream(config.upstream, config.zone_size, [backend(new)]))
    assert _executor(config, store).apply_balancer("unit", [backend(new)], tick_id=None, changed=False)
    embedded_nginx.wait_reloaded(reloads + 1)
    wait_served(embedded_nginx, {"node-new"})


def _instance(server: TinyBackend) -> Instance:
    return Instance(id=server.name, pool="unit", instance_type="gpu", model_version="v2", launch_token="t",
                    launched_at=datetime(2026, 11, 24, 8, 0, tzinfo=UTC), state=CloudState.RUNNING,
                    address="127.0.0.1", port=server.port)


def controller_on(nginx: EmbeddedNginx, servers: list[TinyBackend]) -> tuple[Controller, FakeProvider]:
    """A controller on the real nginx with ``servers`` as healthy idle nodes of the pool."""
    clock, probe = MovableClock(), FakeProbe()
    provider = FakeProvider(clock=clock)
    for server in servers:
        provider.add_instance(_instance(server))
        probe.health[server.name], probe.streams[server.name] = True, 3.0
    config = nginx.balancer_config()
    policy = parse_policy(POLICY.encode(), "u.yaml").model_copy(update={"balancer": config})
    metrics = FakeMetricsSource()
    metrics.set(STREAMS_QUERY, 7.0)
    adapters = Adapters(provider=provider, balancer=NginxBalancer(config, command_timeout_s=10.0),
                        metrics=metrics, store=MemoryStore(), probe=probe, clock=clock)
    return Controller(lambda: policy, adapters), provider


def test_hand_edited_file_is_rewritten_by_the_next_tick(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """Someone adds a server line by hand: the tick reports it as an error-level log and writes the
    controller's list over it; nginx serves exactly the pool."""
    a, b = start_http_backend("node-a"), start_http_backend("node-b")
    stranger = start_http_backend("stranger")
    controller, _ = controller_on(embedded_nginx, [a, b])
    assert controller.tick().ok
    wait_served(embedded_nginx, {"node-a", "node-b"})
    text = embedded_nginx.upstream_file.read_text()
    embedded_nginx.upstream_file.write_text(text.replace("least_conn;", f"least_conn;\n    server 127.0.0.1:"
                                                         f"{stranger.port};"))
    with structlog.testing.capture_logs() as logs:
        outcome = controller.tick()
    assert any(e["event"] == "balancer_list_unreadable" and e["log_level"] == "error" for e in logs)
    assert outcome.backends and outcome.errors == []
    assert {x.instance_id for x in parse_upstream(embedded_nginx.upstream_file.read_text())} == {"node-a",
                                                                                                  "node-b"}
    wait_served(embedded_nginx, {"node-a", "node-b"})


def test_nginx_not_running_keeps_the_last_good_list_and_retries(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """nginx stopped: every tick's reload fails, logged as an error, the file keeps the last list
    nginx accepted and nothing is terminated; once nginx is back the next tick puts the new list in force."""
    a, b = start_http_backend("node-a"), start_http_backend("node-b")
    controller, provider = controller_on(embedded_nginx, [a])
    assert controller.tick().ok
    wait_served(embedded_nginx, {"node-a"})
    good = embedded_nginx.upstream_file.read_text()
    embedded_nginx.stop()
    provider.add_instance(_instance(b))
    adapters_probe = controller.adapters.probe
    assert isinstance(adapters_probe, FakeProbe)
    adapters_probe.health[b.name], adapters_probe.streams[b.name] = True, 3.0
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            outcome = controller.tick()
            assert any("balancer rejected" in e for e in outcome.errors), outcome.errors
            assert outcome.terminated == {} and outcome.joined == []
            assert embedded_nginx.upstream_file.read_text() == good
    assert sum(1 for e in logs if e["event"] == "balancer_error" and e["log_level"] == "error") == 3
    embedded_nginx.start()
    outcome = controller.tick()
    assert outcome.ok and outcome.joined == ["node-b"], outcome.errors
    wait_served(embedded_nginx, {"node-a", "node-b"})


def test_render_nginx_rejects_keeps_old_list_serving(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """A list `nginx -t` rejects (a zone too small for it) fails the apply; the previous file and
    traffic stay, and an apply nginx accepts afterwards works."""
    a, b = start_http_backend("node-a"), start_http_backend("node-b")
    NginxBalancer(embedded_nginx.balancer_config()).apply([backend(a)])
    wait_served(embedded_nginx, {"node-a"})
    before = embedded_nginx.upstream_file.read_text()
    with pytest.raises(BalancerError, match="too small"):
        NginxBalancer(embedded_nginx.balancer_config(zone_size="1k")).apply([backend(a), backend(b)])
    assert embedded_nginx.upstream_file.read_text() == before
    assert served(embedded_nginx) == {"node-a"}
    NginxBalancer(embedded_nginx.balancer_config()).apply([backend(a), backend(b)])
    wait_served(embedded_nginx, {"node-a", "node-b"})
