"""Demand sources: each trace format read from a real slice, scaled, and turned into concurrent streams."""

from __future__ import annotations

import bz2
import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sim_helpers import AZURE, SERVEGEN, TWITTER

from autoscaler.errors import ScenarioError
from autoscaler.simulate.demand import (
    build_demand,
    concurrency,
    expected_concurrency,
    renewal_arrivals,
    thinned_shapes,
)
from autoscaler.simulate.scenario import Workload, load_scenario
from autoscaler.simulate.traces import (
    LAW_GAMMA,
    LAW_WEIBULL,
    fill_zero_gaps,
    read_azure,
    read_csv,
    read_servegen,
    read_twitter,
)
from autoscaler.simulate.workload import ServiceLaw

FIXED_60 = Workload.model_validate({"audio_seconds": {"distribution": "fixed", "mean": 60}})


def _tbz2(path: Path, text: bytes) -> Path:
    with tarfile.open(path, "w:bz2") as archive:
        info = tarfile.TarInfo("workload.txt")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return path


# --------------------------------------------------------------------------------------------- readers
def test_twitter_slice_reads_per_second_counts_and_fills_the_archive_gap() -> None:
    """The twitter slice has 129,600 seconds; its ~28-minute zero gap is replaced by the minutes before it."""
    raw = read_twitter(TWITTER, fill_gaps=False)
    filled = read_twitter(TWITTER)
    assert len(raw.counts) == 129_600
    gap = np.flatnonzero(raw.counts == 0)
    assert gap.size > 1500  # the archive gap near second 84,661
    assert not (filled.counts[gap.min() : gap.max() + 1] == 0).all()
    assert filled.notes and "gaps of zero arrivals" in filled.notes[0]
    assert filled.epoch is not None and filled.epoch.isoformat() == "2021-08-01T00:00:00+00:00"


def test_fill_zero_gaps_copies_the_seconds_before_and_keeps_short_zero_runs() -> None:
    """A long zero run takes the preceding seconds; runs shorter than the threshold stay zero."""
    counts = np.array([1, 2, 3, 4, 0, 0, 0, 5, 0, 6], dtype=np.int64)
    out, gaps, seconds = fill_zero_gaps(counts, min_run=3)
    assert out.tolist() == [1, 2, 3, 4, 2, 3, 4, 5, 0, 6]
    assert (gaps, seconds) == (1, 3)


def test_servegen_slice_reads_every_client_window() -> None:
    """The ServeGen slice holds 12 clients × 144 ten-minute windows with Gamma/Weibull laws."""
    trace = read_servegen(SERVEGEN, "m-large")
    assert (trace.clients, trace.window_s, trace.length_s) == (12, 600, 86_400)
    assert len(trace.rates) == 12 * 144
    assert set(np.unique(trace.laws)) <= {0, LAW_GAMMA, LAW_WEIBULL}
    assert trace.total_rate().shape == (144,)


def test_servegen_folder_layout_reads_like_the_archive(tmp_path: Path) -> None:
    """An unpacked ServeGen folder gives the same windows as its archive."""
    with tarfile.open(SERVEGEN) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = read_servegen(tmp_path, "m-large")
    packed = read_servegen(SERVEGEN, "m-large")
    assert np.array_equal(folder.rates, packed.rates) and np.array_equal(folder.starts, packed.starts)


def test_azure_slice_counts_every_request_per_second() -> None:
    """Azure's per-request timestamps become per-second counts that add up to the 2,000 requests."""
    trace = read_azure(AZURE)
    assert int(trace.counts.sum()) == 2000
    assert trace.epoch is not None and trace.epoch.isoformat() == "2023-11-16T18:15:46+00:00"


def test_csv_rows_hold_until_the_next_timestamp(tmp_path: Path) -> None:
    """A csv value holds from its timestamp to the next; 1-second whole numbers are observed counts."""
    coarse = tmp_path / "coarse.csv"
    coarse.write_text("timestamp,value\n0,2.5\n60,1.0\n120,0.5\n")
    series = read_csv(coarse)
    assert len(series.values) == 180 and not series.whole_counts
    assert series.values[0] == 2.5 and series.values[60] == 1.0 and series.values[179] == 0.5
    fine = tmp_path / "fine.csv"
    fine.write_text("2025-09-01T00:00:00Z,3\n2025-09-01T00:00:01Z,4\n2025-09-01T00:00:02Z,0\n")
    counts = read_csv(fine)
    assert counts.whole_counts and counts.values.tolist() == [3, 4, 0]
    assert counts.epoch is not None and counts.epoch.isoformat() == "2025-09-01T00:00:00+00:00"


# ------------------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "truncated.tbz2",
            lambda p: p.write_bytes(TWITTER.read_bytes()[:5000]),
            "not a readable twitter trace",
        ),
        ("letters.tbz2", lambda p: _tbz2(p, b"12 13 x7 14"), "value 3 (second 2) is 'x7'"),
        ("negative.tbz2", lambda p: _tbz2(p, b"12 -1 14"), "value 2"),
        ("empty.tbz2", lambda p: _tbz2(p, b""), "workload.txt is empty"),
        ("plain.tbz2", lambda p: p.write_bytes(bz2.compress(b"1 2 3")), "not a readable twitter trace"),
    ],
)
def test_malformed_twitter_trace_is_a_scenario_error(
    tmp_path: Path, name: str, make: Callable[[Path], object], message: str
) -> None:
    """A corrupt archive or a bad token in workload.txt is a ScenarioError naming the problem."""
    path = tmp_path / name
    make(path)
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_twitter(path)


def _servegen_archive(path: Path, rows: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = rows.encode()
        info = tarfile.TarInfo("data/language/m-large/chunk-0-trace.csv")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("0,5.0,1.0,Gamma,1.0,0.2\n600,5.0,1.0,Gamma,1.0\n", r"chunk-0-trace.csv:2: expected 6 columns"),
        ("0,5.0,1.0,Gamma,1.0,0.2\n600,five,1.0,Gamma,1.0,0.2\n", r"chunk-0-trace.csv:2: not a number"),
        (
            "0,5.0,1.0,Pareto,1.0,0.2\n600,5.0,1.0,Gamma,1.0,0.2\n",
            r"chunk-0-trace.csv:1: unknown inter-arrival law",
        ),
        ("0,5.0,1.0,Gamma,-1.0,0.2\n600,5.0,1.0,Gamma,1.0,0.2\n", r"chunk-0-trace.csv:1: the Gamma shape"),
    ],
)
def test_malformed_servegen_rows_name_file_and_line(tmp_path: Path, rows: str, message: str) -> None:
    """A bad ServeGen row is reported with its file and line."""
    with pytest.raises(ScenarioError, match=message):
        read_servegen(_servegen_archive(tmp_path / "sg.tar.gz", rows), "m-large")


def test_servegen_without_the_model_is_a_scenario_error() -> None:
    """Asking for a model the archive does not hold says so."""
    with pytest.raises(ScenarioError, match="no data/\\*/m-small/chunk"):
        read_servegen(SERVEGEN, "m-small")


def test_malformed_azure_and_csv_rows_name_the_line(tmp_path: Path) -> None:
    """A bad timestamp or value is reported with its line; timestamps must increase."""
    azure = tmp_path / "azure.csv.gz"
    azure.write_bytes(gzip.compress(b"TIMESTAMP,a,b\n2023-11-16 18:15:46.1,1,2\nyesterday,1,2\n"))
    with pytest.raises(ScenarioError, match=r"azure.csv.gz:3: 'yesterday' is not a timestamp"):
        read_azure(azure)
    bad_value = tmp_path / "v.csv"
    bad_value.write_text("t,v\n0,1\n1,lots\n")
    with pytest.raises(ScenarioError, match=r"v.csv:3: value 'lots' is not a number"):
        read_csv(bad_value)
    backwards = tmp_path / "b.csv"
    backwards.write_text("0,1\n10,1\n5,1\n")
    with pytest.raises(ScenarioError, match=r"b.csv:3: timestamps must increase"):
        read_csv(backwards)
    missing = tmp_path / "nope.csv"
    with pytest.raises(ScenarioError, match="no such trace file"):
        read_csv(missing)


# --------------------------------------------------------------------------------------- concurrency
def test_concurrency_matches_counting_each_stream() -> None:
    """Difference arrays give the same streams per second as counting every stream one by one."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.8, 400).astype(np.int64)
    law = ServiceLaw(Workload())
    warmup = 100
    got = concurrency(counts, law, np.random.default_rng(11), warmup=warmup)
    durations = law.draw(np.random.default_rng(11), int(counts.sum()))
    expected = np.zeros(300, dtype=np.int64)
    arrival = 0
    for second, n in enumerate(counts):
        for _ in range(n):
            begin, end = second - warmup, second - warmup + int(durations[arrival])
            for t in range(max(begin, 0), min(end, 300)):
                expected[t] += 1
            arrival += 1
    assert np.array_equal(got, expected)


def test_expected_concurrency_is_rate_times_mean_service_in_steady_state() -> None:
    """A constant rate λ with fixed 60 s service gives λ × 60 expected streams (Little's law)."""
    law = ServiceLaw(FIXED_60)
    rates = np.full(1000, 0.5)
    expected = expected_concurrency(rates, law, warmup=law.warmup_s())
    assert np.allclose(expected, 30.0)


def test_thinned_shapes_give_the_thinned_squared_cv() -> None:
    """Thinning to p turns CV² into 1 + p(CV² − 1): exact for Gamma, within 1 % for Weibull."""
    laws = np.array([LAW_GAMMA, LAW_WEIBULL], dtype=np.int8)
    shapes = thinned_shapes(laws, np.array([0.25, 0.5]), 0.1)
    assert shapes[0] == pytest.approx(1 / (1 + 0.1 * (4 - 1)))
    samples = np.random.default_rng(5).weibull(shapes[1], 400_000)
    cv2 = samples.var() / samples.mean() ** 2
    assert cv2 == pytest.approx(1 + 0.1 * (5.0 - 1), rel=0.03)  # Weibull(0.5) has CV² = 5


def test_renewal_arrivals_keep_each_window_rate() -> None:
    """Synthesized arrivals average each window's rate and stay inside their window."""
    starts = np.array([0, 600, 1200], dtype=np.int64)
    rates = np.array([2.0, 0.5, 0.0])
    laws = np.array([LAW_GAMMA, LAW_WEIBULL, LAW_GAMMA], dtype=np.int8)
    shapes = np.array([0.5, 0.7, 1.0])
    counts = np.zeros(3)
    runs = 40
    for seed in range(runs):
        times = renewal_arrivals(starts, rates, laws, shapes, window_s=600, rng=np.random.default_rng(seed))
        counts += np.bincount((times // 600).astype(np.int64), minlength=3)[:3]
    assert counts[0] / runs == pytest.approx(1200, rel=0.1)
    assert counts[1] / runs == pytest.approx(300, rel=0.15)
    assert counts[2] == 0


# -------------------------------------------------------------------------------------------- scaling
def test_peak_nodes_scales_each_source_to_the_requested_peak(write_scenario: Callable[..., Path]) -> None:
    """peak_nodes N makes the realised peak need exactly N nodes, for counts, windows and requests."""
    for demand, peak in [
        ({"format": "twitter", "path": str(TWITTER), "start": "1h", "duration": "6h", "peak_nodes": 12}, 12),
        (
            {
                "format": "servegen",
                "path": str(SERVEGEN),
                "model": "m-large",
                "start": "0s",
                "duration": "12h",
                "peak_nodes": 9,
            },
            9,
        ),
        ({"format": "azure", "path": str(AZURE), "start": "0s", "duration": "5m", "peak_nodes": 4}, 4),
    ]:
        scenario = load_scenario(write_scenario(demand=demand | {"peak_nodes": peak}))
        built = build_demand(scenario, streams_per_node=10)
        assert -(-int(built.streams.max()) // 10) == peak, demand["format"]
        assert built.duration_s == int(scenario.spec.demand.duration.total_seconds())


def test_fixed_scale_thins_observed_counts(write_scenario: Callable[..., Path]) -> None:
    """scale 0.1 keeps about a tenth of the twitter slice's arrivals in the window."""
    scenario = load_scenario(write_scenario(demand={"peak_nodes": None, "scale": 0.1}))
    built = build_demand(scenario, streams_per_node=10)
    window = read_twitter(TWITTER).counts[3600 : 3600 + 6 * 3600]
    assert built.arrivals == pytest.approx(0.1 * window.sum(), rel=0.02)
    assert built.scale == 0.1


def test_same_seed_same_demand_and_another_seed_differs(write_scenario: Callable[..., Path]) -> None:
    """The demand depends only on the scenario and its seed."""
    first = build_demand(load_scenario(write_scenario("a.yaml")), 10)
    again = build_demand(load_scenario(write_scenario("b.yaml")), 10)
    other = build_demand(load_scenario(write_scenario("c.yaml", seed=8)), 10)
    assert np.array_equal(first.streams, again.streams)
    assert not np.array_equal(first.streams, other.streams)


def test_streams_kind_csv_is_used_as_concurrency(tmp_path: Path, write_scenario: Callable[..., Path]) -> None:
    """A csv of concurrent streams is replayed as it is, times the scale."""
    trace = tmp_path / "streams.csv"
    trace.write_text("timestamp,value\n" + "".join(f"{t * 60},{10 + t}\n" for t in range(120)))
    scenario = load_scenario(
        write_scenario(
            demand={
                "format": "csv",
                "path": str(trace),
                "kind": "streams",
                "start": "0s",
                "duration": "2h",
                "peak_nodes": None,
                "scale": 2.0,
            }
        )
    )
    built = build_demand(scenario, 10)
    assert built.streams[0] == 20 and built.streams[-1] == 2 * (10 + 119)
    assert built.arrivals is None


def test_window_outside_the_trace_is_a_scenario_error(write_scenario: Callable[..., Path]) -> None:
    """A window that runs past the trace's end says how long the trace is."""
    scenario = load_scenario(write_scenario(demand={"start": "1d", "duration": "1d"}))
    with pytest.raises(
        ScenarioError, match=r"runs past the end of the trace twitter-1.5d.tbz2, which is 129600 s"
    ):
        build_demand(scenario, 10)
