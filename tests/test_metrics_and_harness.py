import math

import numpy as np
import pytest

from edgekit.bench.harness import percentile, summarize, time_loop
from edgekit.metrics import agreement, classification_metrics, snr_db

VECTOR = [15.0, 20.0, 35.0, 40.0, 50.0]


@pytest.mark.parametrize("q, expected", [(0, 15.0), (40, 29.0), (50, 35.0), (90, 46.0), (99, 49.6), (100, 50.0)])
def test_percentile_linear_interpolation(q, expected):
    # rank = q/100 * (n-1); e.g. q=40: rank 1.6 -> 20 + 0.6 * (35 - 20) = 29
    assert percentile(VECTOR, q) == pytest.approx(expected)
    assert percentile(VECTOR, q) == pytest.approx(np.percentile(VECTOR, q))


def test_percentile_of_unsorted_input_and_empty():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isnan(percentile([], 50))


def test_summary_of_1_to_100():
    stats = summarize([float(v) for v in range(1, 101)])
    assert stats["runs"] == 100
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["min"] == 1.0 and stats["max"] == 100.0
    assert stats["invalid_reasons"] == []


@pytest.mark.parametrize("runs, invalid", [(1, ["p50", "p90", "p99"]), (5, ["p90", "p99"]), (50, ["p99"]), (100, [])])
def test_too_few_runs_invalidate_percentiles(runs, invalid):
    stats = summarize([1.0] * runs)
    assert [reason.split()[0] for reason in stats["invalid_reasons"]] == invalid


def test_unstable_flag_uses_robust_spread():
    steady = [10.0] * 95 + [100.0] * 5  # a few outliers do not make a run unstable
    assert not summarize(steady)["unstable"]
    noisy = list(np.linspace(5, 15, 100))
    assert summarize(noisy)["unstable"]


def test_time_loop_reaches_runs_and_separates_warmup():
    calls = []
    stats = time_loop(lambda: calls.append(1), warmup=3, runs=20, min_seconds=0.0)
    assert stats["runs"] == 20 and len(calls) == 23
    assert stats["warmup_runs"] == 3 and stats["first_inference_ms"] >= 0


def test_time_loop_stops_at_time_limit():
    import time

    stats = time_loop(lambda: time.sleep(0.02), warmup=1, runs=1000, min_seconds=0, max_seconds=0.2)
    assert stats["runs"] < 1000 and stats["stopped_by_time_limit"]


def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_agreement_and_snr():
    ref = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert agreement(ref, ref) == 1.0
    assert agreement(ref, ref[:, ::-1]) == 0.0
    assert snr_db(ref, ref) == 300.0  # identical outputs: capped so manifests stay valid JSON
    assert snr_db(ref, ref * 1.1) == pytest.approx(20.0)
