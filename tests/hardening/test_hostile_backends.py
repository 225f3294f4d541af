"""Hostile values from the provider's inventory never reach nginx's file, and one bad node never
blocks the pool: it is left out with a reason while healthy nodes join a real nginx.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from autoscaler.balancers.nginx import NginxBalancer, render_upstream
from autoscaler.controller import Adapters, Controller
from autoscaler.domain import Backend, CloudState, Instance, backend_problem
from autoscaler.embedded import EmbeddedNginx
from autoscaler.errors import BalancerError
from autoscaler.metrics.fake import FakeMetricsSource
from autoscaler.policy.load import parse_policy
from autoscaler.providers.fake import FakeProvider
from autoscaler.store import MemoryStore
from autoscaler.testing.controller_rig import POLICY, STREAMS_QUERY, FakeProbe, MovableClock, make_rig
from autoscaler.testing.embedded_fixtures import TinyBackend

#: Text that would end a directive, open or close a block, start a comment or a new line, or
#: smuggle a NUL or a quote into nginx's configuration.
HOSTILE_TEXT = [
    "x;", "x; server 10.6.6.6:80", "x{", "x}", "} server 10.6.6.6:80 {", "x\n", "x\nserver 10.6.6.6:80;",
    "x\x00", "x\x00y", "x'", 'x"', "x#", "x y", "x\ty", "x\r", "x\\", "", " ", "fe80::1%eth0;",
    "1.2.3.4\n", "i-" + "a" * 300,
]
HOSTILE_PORTS: list[object] = [-1, 0, 65536, 70000, 2**63, True, "80", 80.5]
GOOD = Backend(address="10.0.0.1", port=7860, instance_id="i-good")
FIELDS_OF_TEXT = ("address", "instance_id")
FIELDS_OF_NUMBERS = {"port": HOSTILE_PORTS, "weight": [0, -1, 10**9, True, "3"],
                     "max_fails": [-1, 10**9, "2"], "fail_timeout_s": [-1, 10**9, "30"]}


def hostile_backends() -> list[Backend]:
    """The good backend with one field replaced by each hostile value, for every field nginx writes."""
    out = [dataclasses.replace(GOOD, **{f: text}) for f in FIELDS_OF_TEXT for text in HOSTILE_TEXT]
    out += [dataclasses.replace(GOOD, **{f: v}) for f, values in FIELDS_OF_NUMBERS.items() for v in values]
    return out


def test_every_hostile_field_is_refused_before_rendering() -> None:
    """Each hostile address, id, port or number is refused with a reason; nothing reaches the text."""
    backends = hostile_backends()
    assert len(backends) > 50
    for bad in backends:
        assert backend_problem(bad), bad
        with pytest.raises(BalancerError, match="refused"):
            render_upstream("u", "64k", [GOOD, bad])
    settings = [("u;", "64k"), ("u", "64k;"), ("u\n", "64k"), ("u", "6\x004k"), ("u}", "1m"), ("u", "")]
    for name, zone in settings:
        with pytest.raises(BalancerError):
            render_upstream(name, zone, [GOOD])


def test_valid_shapes_still_render() -> None:
    """IPv4 and IPv6 addresses and cloud instance ids pass and render one line each; a host name
    (which nginx would resolve at every reload) does not."""
    ok = [
        Backend(address="10.0.0.1", port=1, instance_id="i-0abc123"),
        Backend(address="fd00::7", port=65535, instance_id="local-3f2a.b_c"),
    ]
    assert all(backend_problem(b) is None for b in ok)
    text = render_upstream("u", "64k", ok)
    assert text.count("server ") == 2 and "[fd00::7]:65535" in text
    assert backend_problem(Backend(address="node-1.pool.internal", port=7860, instance_id="i-xyz"))


def _instance(instance_id: str, address: str, port: int) -> Instance:
    return Instance(id=instance_id, pool="unit", instance_type="gpu", model_version="v2", launch_token="t",
                    launched_at=datetime(2026, 11, 24, 8, 0, tzinfo=UTC), state=CloudState.RUNNING,
                    address=address, port=port)


@pytest.mark.integration
def test_one_hostile_node_does_not_block_healthy_nodes_joining_real_nginx(
    embedded_nginx: EmbeddedNginx, start_http_backend: Callable[[str], TinyBackend],
) -> None:
    """With hostile nodes in the inventory, the healthy ones join nginx and serve; each bad one is
    left out with its reason in the tick's errors, and the file holds no hostile text."""
    a, b = start_http_backend("node-a"), start_http_backend("node-b")
    clock, store, probe = MovableClock(), MemoryStore(), FakeProbe()
    provider = FakeProvider(clock=clock)
    hostile = {
        "node-port-neg": ("127.0.0.1", -1), "node-port-big": ("127.0.0.1", 70000),
        "node-addr": ("127.0.0.1;server 10.6.6.6:80", 7860), "node-nul\x00x": ("127.0.0.1", 7861),
        "node}brace": ("127.0.0.1", 7862), 'node"quote': ("127.0.0.1\n", 7863),
    }
    for iid, (address, port) in hostile.items():
        provider.add_instance(_instance(iid, address, port))
    for server in (a, b):
        provider.add_instance(_instance(server.name, "127.0.0.1", server.port))
    for iid in [*hostile, a.name, b.name]:
        probe.health[iid], probe.streams[iid] = True, 0  # a liar probe: the inventory is what is hostile
    config = embedded_nginx.balancer_config()
    policy = parse_policy(POLICY.encode(), "u.yaml").model_copy(update={"balancer": config})
    metrics = FakeMetricsSource()
    metrics.set(STREAMS_QUERY, 7.0)
    adapters = Adapters(provider=provider, balancer=NginxBalancer(config), metrics=metrics, store=store,
                        probe=probe, clock=clock)
    controller = Controller(lambda: policy, adapters)
    outcome = controller.tick()
    assert sorted(outcome.joined) == ["node-a", "node-b"]
    refused = [e for e in outcome.errors if "left out of the balancer" in e]
    assert len(refused) == len(hostile), outcome.errors
    text = embedded_nginx.upstream_file.read_text()
    assert "10.6.6.6" not in text and "\x00" not in text and "70000" not in text and "}brace" not in text
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        embedded_nginx.wait_reloaded(1)
        served = {client.get(embedded_nginx.url).text for _ in range(20)}
    assert served == {"node-a", "node-b"}
    assert not any(i in outcome.terminated for i in ("node-a", "node-b"))


def test_nodes_the_balancer_never_accepted_are_not_serving_capacity() -> None:
    """While the balancer rejects every change, healthy launched nodes count as booting, not ready."""
    rig = make_rig()
    rig.metrics.set(STREAMS_QUERY, 30.0)
    rig.controller.tick()
    ids = [i.id for i in rig.running()]
    rig.serve(*ids)
    for _ in range(3):
        rig.clock.advance(15)
        rig.balancer.next_apply_error = BalancerError("nginx -t failed")
        outcome = rig.controller.tick()
        assert outcome.decision is not None
        assert outcome.decision.ready == 0, outcome.decision.summary()
        assert rig.balancer.current() == []
    rig.clock.advance(15)
    outcome = rig.controller.tick()  # the balancer accepts again: they join...
    assert sorted(outcome.joined) == sorted(ids)
    rig.clock.advance(15)
    outcome = rig.controller.tick()  # ...and only now count as serving
    assert outcome.decision is not None and outcome.decision.ready == len(ids)
