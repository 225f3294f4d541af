"""NginxBalancer against a real nginx: the rendered upstream, checked reloads that switch real
traffic, rollback on a rejected config, and graceful handling of requests in flight.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.balancers.nginx import (
    PLACEHOLDER_SERVER,
    NginxBalancer,
    parse_upstream,
    render_upstream,
)
from autoscaler.domain import Backend
from autoscaler.embedded import EmbeddedNginx
from autoscaler.errors import BalancerError
from autoscaler.files import atomic_write
from autoscaler.policy.model import NginxBalancerConfig
from autoscaler.testing import wait_until
from autoscaler.testing.embedded_fixtures import TinyBackend

REFERENCE_BACKENDS = [
    Backend(address="192.168.1.11", port=7860, instance_id="i-node-11", weight=3),
    Backend(address="192.168.1.12", port=7860, instance_id="i-node-12", backup=True),
    Backend(address="192.168.1.10", port=7860, instance_id="i-node-10", weight=3),
]

GOLDEN = """\
# Managed by gpu-autoscaler (nginx balancer): rewritten on every change, edits are lost.
upstream fun_asr_backend {
    zone fun_asr_backend 64k;
    least_conn;
    server 192.168.1.10:7860 weight=3 max_fails=2 fail_timeout=30s;  # instance_id=i-node-10
    server 192.168.1.11:7860 weight=3 max_fails=2 fail_timeout=30s;  # instance_id=i-node-11
    server 192.168.1.12:7860 weight=1 max_fails=2 fail_timeout=30s backup;  # instance_id=i-node-12
}
"""


def backend_for(server: TinyBackend, *, weight: int = 1, backup: bool = False) -> Backend:
    """The Backend pointing at a running TinyBackend, its name as instance id."""
    return Backend(address="127.0.0.1", port=server.port, instance_id=server.name, weight=weight,
                   backup=backup)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for loopback traffic (no proxies from the environment, 10 s timeout)."""
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        yield http


def served_by(client: httpx.Client, nginx: EmbeddedNginx, path: str = "/") -> str:
    """The name of the backend that answered one request through nginx (or the status if not 200)."""
    response = client.get(nginx.url + path)
    return response.text if response.status_code == 200 else f"HTTP {response.status_code}"


def apply_settled(nginx: EmbeddedNginx, balancer: NginxBalancer, backends: list[Backend]) -> None:
    """Apply ``backends`` and wait until nginx's old worker stopped taking new connections."""
    reloads = nginx.reload_count()
    balancer.apply(backends)
    nginx.wait_reloaded(reloads + 1)


def wait_served_by(client: httpx.Client, nginx: EmbeddedNginx, name: str, *, times: int = 5) -> None:
    """Wait until ``times`` consecutive requests through nginx are answered by ``name``."""
    wait_until(lambda: all(served_by(client, nginx) == name for _ in range(times)), timeout_s=10.0,
               message=f"traffic through nginx reaches {name}")


# ---------------------------------------------------------------------------------------- rendering
def test_render_matches_the_reference_deployment_format() -> None:
    """The upstream renders as the reference deployment writes it, plus zone and per-server id comments."""
    assert render_upstream("fun_asr_backend", "64k", REFERENCE_BACKENDS) == GOLDEN


def test_render_then_parse_round_trips() -> None:
    """Parsing a rendered upstream gives back the same backends, every field included."""
    backends = [*REFERENCE_BACKENDS, Backend(address="::1", port=9000, instance_id="i-v6", weight=2,
                                             max_fails=0, fail_timeout_s=5)]
    assert set(parse_upstream(render_upstream("pool_a", "1m", backends))) == set(backends)


def test_empty_list_renders_a_down_placeholder() -> None:
    """No backends render one `down` placeholder server that parsing does not report."""
    text = render_upstream("fun_asr_backend", "64k", [])
    assert f"    {PLACEHOLDER_SERVER}\n" in text
    assert parse_upstream(text) == []


def test_render_refuses_text_that_would_change_the_file_structure() -> None:
    """An instance id or address holding `;`, braces, `#` or whitespace is refused before writing."""
    for bad in ("i-1; server 10.0.0.9:80", "i-1 }", "i#1", "i-\n1"):
        with pytest.raises(BalancerError, match="refused"):
            render_upstream("u", "64k", [Backend(address="127.0.0.1", port=1, instance_id=bad)])
    with pytest.raises(BalancerError, match="refused"):
        render_upstream("u", "64k", [Backend(address="10.0.0.1;", port=1, instance_id="i-1")])


def test_render_refuses_duplicates() -> None:
    """Two backends with one instance id, or two on one endpoint, are refused."""
    a = Backend(address="127.0.0.1", port=1000, instance_id="i-a")
    with pytest.raises(BalancerError, match="twice"):
        render_upstream("u", "64k", [a, Backend(address="127.0.0.1", port=1001, instance_id="i-a")])
    with pytest.raises(BalancerError, match="twice"):
        render_upstream("u", "64k", [a, Backend(address="127.0.0.1", port=1000, instance_id="i-b")])


def test_parse_refuses_a_server_line_it_did_not_write() -> None:
    """A hand-written server line without the instance comment fails parsing (no partial list)."""
    text = GOLDEN.replace("}\n", "    server 10.9.9.9:7860;\n}\n")
    with pytest.raises(BalancerError, match="not a server line"):
        parse_upstream(text)


def test_commands_carry_the_configured_prefix_and_config(tmp_path: Path) -> None:
    """nginx is always invoked with the configured -p and -c, so -t checks the whole configuration."""
    config = NginxBalancerConfig(upstream_file=str(tmp_path / "u.conf"), nginx_prefix="/srv/ngx/",
                                 nginx_conf="/srv/ngx/nginx.conf", nginx_binary="/opt/nginx")
    balancer = NginxBalancer(config)
    assert balancer.command("-t") == ["/opt/nginx", "-p", "/srv/ngx/", "-c", "/srv/ngx/nginx.conf", "-t"]
    assert NginxBalancer(NginxBalancerConfig()).command("-s", "reload") == ["nginx", "-s", "reload"]


def test_atomic_write_keeps_the_file_mode(tmp_path: Path) -> None:
    """The upstream file is 0644 when new and keeps an operator's mode on rewrite, with no temporary left."""
    path = tmp_path / "upstream.conf"
    atomic_write(path, "a\n")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    atomic_write(path, "b\n")
    assert (path.read_text(), path.stat().st_mode & 0o777) == ("b\n", 0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["upstream.conf"]


def test_current_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    """Before anything was applied (no upstream file yet), no backend is in force."""
    assert NginxBalancer(NginxBalancerConfig(upstream_file=str(tmp_path / "none.conf"))).current() == []


# ---------------------------------------------------------------------------------- real nginx
@pytest.mark.integration
def test_reload_switches_traffic_to_the_new_backends(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """After apply, requests through nginx reach the new backend and no longer the removed one."""
    old, new = start_http_backend("node-old"), start_http_backend("node-new")
    assert served_by(client, embedded_nginx) == "HTTP 502"  # the empty placeholder upstream
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(old)])
    wait_served_by(client, embedded_nginx, "node-old")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(new)])
    wait_served_by(client, embedded_nginx, "node-new")
    hits_before = old.hits
    assert {served_by(client, embedded_nginx) for _ in range(10)} == {"node-new"}
    assert old.hits == hits_before


@pytest.mark.integration
def test_both_backends_share_traffic(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """Two primaries both receive requests through nginx."""
    a, b = start_http_backend("node-a"), start_http_backend("node-b")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(a), backend_for(b)])
    wait_until(lambda: {served_by(client, embedded_nginx) for _ in range(10)} == {"node-a", "node-b"},
               timeout_s=10.0, message="both backends answer")


@pytest.mark.integration
def test_backup_serves_only_when_the_primary_is_down(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """With least_conn the backup gets no traffic while the primary answers, and all of it after."""
    primary, backup = start_http_backend("node-primary"), start_http_backend("node-backup")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(primary), backend_for(backup, backup=True)])
    wait_served_by(client, embedded_nginx, "node-primary", times=10)
    assert backup.hits == 0
    primary.stop()
    wait_served_by(client, embedded_nginx, "node-backup")


@pytest.mark.integration
def test_rejected_config_keeps_the_old_file_and_the_old_traffic(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """A list nginx -t rejects raises BalancerError with nginx's message; file and traffic stay."""
    old, new = start_http_backend("node-old"), start_http_backend("node-new")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(old)])
    wait_served_by(client, embedded_nginx, "node-old")
    text_before = embedded_nginx.upstream_file.read_text()
    reloads_before = embedded_nginx.settled_reload_count()

    # A zone nginx finds too small passes rendering and fails `nginx -t`.
    small_zone = NginxBalancer(embedded_nginx.balancer_config(zone_size="1k"), command_timeout_s=10.0)
    with pytest.raises(BalancerError, match=r"too small") as caught:
        small_zone.apply([backend_for(new)])

    assert isinstance(caught.value.__cause__, subprocess.CalledProcessError)
    assert embedded_nginx.upstream_file.read_text() == text_before
    assert nginx_balancer.current() == [backend_for(old)]
    assert embedded_nginx.settled_reload_count() == reloads_before
    assert {served_by(client, embedded_nginx) for _ in range(5)} == {"node-old"}
    assert new.hits == 0


@pytest.mark.integration
def test_too_small_zone_is_rejected_by_nginx(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """A zone size nginx refuses fails the check; the placeholder upstream stays in force."""
    balancer = NginxBalancer(embedded_nginx.balancer_config(zone_size="1k"))
    text_before = embedded_nginx.upstream_file.read_text()
    with pytest.raises(BalancerError, match="too small"):
        balancer.apply([backend_for(start_http_backend("node-a"))])
    assert embedded_nginx.upstream_file.read_text() == text_before
    assert served_by(client, embedded_nginx) == "HTTP 502"


@pytest.mark.integration
def test_failed_reload_restores_the_previous_file(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """A failed reload (nginx not running) restores the previous file; BalancerError names the cause."""
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(start_http_backend("node-a"))])
    text_before = embedded_nginx.upstream_file.read_text()
    embedded_nginx.stop()
    with pytest.raises(BalancerError, match=r"(?s)-s reload.*nginx\.pid"):
        nginx_balancer.apply([backend_for(start_http_backend("node-b"))])
    assert embedded_nginx.upstream_file.read_text() == text_before


@pytest.mark.integration
def test_request_in_flight_completes_after_its_backend_is_removed(
    embedded_nginx: EmbeddedNginx, nginx_balancer: NginxBalancer,
    start_http_backend: Callable[[str], TinyBackend], client: httpx.Client,
) -> None:
    """A long request to a backend removed by a reload still completes with 200 (graceful reload)."""
    leaving, staying = start_http_backend("node-leaving"), start_http_backend("node-staying")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(leaving)])
    wait_served_by(client, embedded_nginx, "node-leaving")
    hits_before = leaving.hits
    outcome: dict[str, httpx.Response | BaseException] = {}

    def long_request() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=20.0) as http:
                outcome["response"] = http.get(embedded_nginx.url + "/slow?seconds=3")
        except httpx.HTTPError as exc:
            outcome["response"] = exc

    worker = threading.Thread(target=long_request)
    worker.start()
    wait_until(lambda: leaving.hits > hits_before, timeout_s=5.0,
               message="the long request reached its backend")
    apply_settled(embedded_nginx, nginx_balancer, [backend_for(staying)])
    wait_served_by(client, embedded_nginx, "node-staying")
    assert worker.is_alive(), "the long request ended before the reload took effect; the test proves nothing"
    worker.join(timeout=20.0)

    response = outcome["response"]
    assert isinstance(response, httpx.Response), f"the request in flight failed: {response!r}"
    assert response.status_code == 200
    assert response.text == "node-leaving"
