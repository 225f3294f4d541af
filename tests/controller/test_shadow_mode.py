"""Shadow mode: the controller decides beside the autoscaler that runs the fleet, records, changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.controller import Controller, launch_spec
from autoscaler.domain import CloudState, IntentKind, IntentStatus
from autoscaler.executor import ShadowExecutor
from autoscaler.store import SqlStore
from autoscaler.testing.controller_rig import STREAMS_QUERY, make_rig


@pytest.fixture(autouse=True)
def _logging_back_to_default() -> Iterator[None]:
    """`once` configures logging onto CliRunner's stderr, closed afterwards: later tests log elsewhere."""
    yield
    structlog.reset_defaults()


def test_shadow_decides_on_the_real_fleet_and_changes_nothing(tmp_path: Path) -> None:
    """The test plays the current autoscaler (launching and terminating by hand); the shadow controller
    records its decision, plan and the real node count every tick, and makes zero world-changing calls,
    writes no lifecycle, and `history` (table, JSON and its --report page) compares both."""
    url = f"sqlite:///{tmp_path / 'shadow.db'}"
    store = SqlStore(url)
    rig = make_rig(store=store)
    shadow = Controller(
        lambda: rig.policy, rig.controller.adapters, executor=ShadowExecutor(store, rig.clock)
    )
    current = rig.provider  # the operator's autoscaler acts on the provider directly
    ids = [i.id for i in current.launch(launch_spec(rig.policy), 2, "theirs-1").instances]
    rig.serve(*(i.id for i in rig.running()))
    real, wanted = [], []
    for step, load in enumerate([7.0, 7.0, 14.0, 14.0, 1.0, 1.0]):
        rig.metrics.set(STREAMS_QUERY, load)
        if step == 3:  # the current autoscaler scales out on its own, a tick later than the shadow
            current.launch(launch_spec(rig.policy), 4, "theirs-2")
            rig.serve(*(i.id for i in rig.running()))
        outcome = shadow.tick()
        assert outcome.ok, outcome.errors
        assert outcome.decision is not None
        real.append(len(current.list_instances("unit")))
        wanted.append(outcome.decision.desired)
        rig.clock.advance(15)
    # Zero world-changing calls from the shadow: only the current autoscaler's two launches.
    assert [c.client_token for c in current.launch_calls] == ["theirs-1", "theirs-2"]
    assert current.terminate_calls == [] and current.stop_calls == [] and current.start_calls == []
    assert rig.balancer.apply_calls == []
    assert store.lifecycles("unit") == {}  # nothing recorded as if the plan had happened
    assert set(ids) <= {i.id for i in current.list_instances("unit")}
    ticks = store.recent_ticks("unit", limit=None)
    assert [t["decision"]["fleet"]["real_nodes"] for t in reversed(ticks)] == real == [2, 2, 2, 6, 6, 6]
    assert [t["decision"]["mode"] for t in ticks] == ["shadow"] * 6
    assert wanted[2] > real[2]  # at 14 streams per node the shadow wanted more, a tick earlier
    assert wanted[5] < real[5]  # and fewer once the load fell
    intents = store.intents("unit")
    assert intents and {i.status for i in intents} == {IntentStatus.SHADOW}
    assert IntentKind.LAUNCH in {i.kind for i in intents}
    store.close()
    result = CliRunner().invoke(app, ["history", "--pool", "unit", "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["shadow_summary"]
    assert summary["ticks"] == 6
    assert summary["node_hours_real"] == round(sum(real) * 15 / 3600, 3)
    assert summary["node_hours_shadow"] == round(sum(wanted) * 15 / 3600, 3)
    assert summary["ticks_shadow_wanted_more"] == sum(w > r for w, r in zip(wanted, real, strict=True))
    assert summary["ticks_shadow_wanted_fewer"] == sum(w < r for w, r in zip(wanted, real, strict=True))
    table = CliRunner().invoke(app, ["history", "--pool", "unit", "--store", url])
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["at", "tick", "shadow", "wants", "real", "nodes"]
    assert lines[-1].startswith("shadow over 6 ticks")
    page = tmp_path / "shadow.html"
    result = CliRunner().invoke(app, ["history", "--pool", "unit", "--store", url, "--report", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    differing = sum(w != r for w, r in zip(wanted, real, strict=True))
    assert "<svg" in html and "shadow wanted" in html and "real fleet" in html
    assert f"Ticks where it differed ({differing}" in html
    assert html.count('<td class="num">') == 3 + 2 * differing  # the summary's figures, then each row's


def test_once_shadow_on_the_local_provider_starts_no_node(tmp_path: Path) -> None:
    """`autoscaler once --shadow` on an empty local pool with min 2 records a launch of 2 as a shadow
    intent and starts no node process."""
    state = tmp_path / "nodes"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"""
pool: sh
provider: {{kind: local, state_dir: {state}}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.1}}]
balancer: {{kind: none}}
metrics: {{url: "http://127.0.0.1:9", timeout: 1s}}
scaling:
  min_nodes: 2
  max_nodes: 4
  checks:
    - {{name: streams, type: target_tracking, query: streams_per_node, target: 7}}
"""
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(app, ["once", "--shadow", "--policy", str(policy), "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["launched"] == [] and any(n.startswith("shadow: would launch 2") for n in payload["notes"])
    store = SqlStore(url)
    try:
        (intent,) = store.intents("sh")
        assert (intent.kind, intent.count, intent.status) == (IntentKind.LAUNCH, 2, IntentStatus.SHADOW)
        assert store.lifecycles("sh") == {}
    finally:
        store.close()
    from autoscaler.policy.load import load_policy
    from autoscaler.providers.local import LocalProvider

    live = [i for i in LocalProvider.for_policy(load_policy(policy)).list_instances("sh")
            if i.state != CloudState.TERMINATED]
    assert live == []


def test_a_shadow_never_takes_the_leader_lock(tmp_path: Path) -> None:
    """On a PostgreSQL store a shadow runtime gets no leader lock (it would make an acting controller a
    follower); the acting runtime of the same policy does."""
    from autoscaler.leader import PostgresLeaderLock, SingleController
    from autoscaler.store import MemoryStore
    from autoscaler.wiring import build_runtime

    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"""
pool: lead
provider: {{kind: local, state_dir: {tmp_path / "nodes"}}}
launch:
  model_version: v1
  instance_types: [{{name: local-gpu, streams: 10, price_per_hour: 0.1}}]
balancer: {{kind: none}}
scaling:
  min_nodes: 1
  max_nodes: 2
  checks:
    - {{name: streams, type: target_tracking, query: streams_per_node, target: 7}}
"""
    )
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    for shadow, kind in ((True, SingleController), (False, PostgresLeaderLock)):
        runtime = build_runtime(policy, url, store=MemoryStore(), shadow=shadow)
        try:
            assert isinstance(runtime.controller.leadership, kind)
            assert runtime.controller.executor.acts is not shadow
        finally:
            runtime.close()
