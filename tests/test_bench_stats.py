"""Benchmark statistics: intervals that cover the truth, A/B verdicts in interleaved rounds, load
scenarios (offline, server with a rate search) and energy per inference from recorded meters."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_bench_local import make_bundle

from conftest import assert_user_error, run_cli

# --- intervals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("q,n", [(50, 25), (50, 200), (90, 200), (99, 1000)])
def test_percentile_intervals_cover_the_true_percentile_at_their_confidence(q, n):
    """Simulated benchmarks with known noise (log-normal, the shape latencies have): the 95% interval
    covers the true percentile in about 95% of them, neither much less (too narrow) nor all (too wide)."""
    from edgekit.bench.stats import quantile_interval

    z = {50: 0.0, 90: 1.2815515655446004, 99: 2.3263478740408408}[q]
    truth = 3.0 * np.exp(0.4 * z)  # ms: median 3 ms, sigma 0.4
    rng = np.random.default_rng(q + n)
    trials = 400
    covered = 0
    for _ in range(trials):
        low, high = quantile_interval(3.0 * rng.lognormal(0, 0.4, n), q)
        covered += low <= truth <= high
    assert 0.92 <= covered / trials <= 0.99


def test_intervals_need_enough_runs_and_say_so():
    from edgekit.bench.harness import summarize
    from edgekit.bench.stats import mean_interval, quantile_interval

    rng = np.random.default_rng(0)
    assert quantile_interval(rng.random(100), 99) is None  # all 100 runs below p99 happens in 37% of runs
    assert quantile_interval(rng.random(367), 99) is None and quantile_interval(rng.random(368), 99) is not None
    assert quantile_interval([1.0], 50) is None and mean_interval(rng.random(10)) is None
    data = rng.normal(10, 1, 4000)
    low, high = mean_interval(data)
    assert low < 10 < high and high - low < 0.1
    stats = summarize(list(rng.lognormal(0, 0.2, 120)))
    iv = stats["intervals"]
    assert iv["p50"][0] <= stats["p50"] <= iv["p50"][1] and iv["p99"] is None
    assert any("p99" in reason for reason in iv["missing"])


# --- A/B comparison -----------------------------------------------------------------------------------


def _work(loops: int):
    def run() -> None:  # CPU work: whatever else the machine does slows both sides alike
        total = 0
        for i in range(loops):
            total += i
        return None

    return run


def test_interleaved_rounds_find_a_planted_2x():
    from edgekit.bench.stats import interleaved_rounds, ratio_verdict

    timings = interleaved_rounds({"a": _work(20000), "b": _work(40000)}, rounds=40, per_round=4)
    assert [len(r) for r in timings["a"]] == [4] * 40
    slower = ratio_verdict(timings["a"], timings["b"], baseline="a", other="b")
    assert slower["different"] and "b is" in slower["verdict"] and "slower than a" in slower["verdict"]
    assert 1.6 < 1 / slower["speedup"] < 2.4 and slower["interval"][1] < 1 / 1.5
    faster = ratio_verdict(timings["b"], timings["a"], baseline="b", other="a")
    assert faster["different"] and "a is" in faster["verdict"] and "faster than b" in faster["verdict"]


class _LoadedMachine:
    """A virtual clock on a machine whose load rises 1% a call and jumps at random: each job costs its work
    times the load of the moment. Two equal jobs timed on real CPUs under pytest-xdist differ by chance
    now and then (a 95% interval excludes the truth 5% of the time); this one is seeded, so the test
    checks the statistics, not the luck of a run."""

    def __init__(self, seed: int = 0) -> None:
        self.now, self.calls, self.rng = 0.0, 0, np.random.default_rng(seed)

    def load(self) -> float:
        return math.exp(self.calls * 0.01) * (1.0 + 0.2 * float(self.rng.random() < 0.1))

    def clock(self) -> float:
        return self.now

    def job(self, work: float):
        def run() -> None:
            self.calls += 1
            self.now += work * self.load() * float(self.rng.lognormal(0, 0.05))

        return run


def test_equal_jobs_show_no_difference_though_the_load_drifts():
    from edgekit.bench.stats import interleaved_rounds, ratio_verdict

    for seed in range(5):
        machine = _LoadedMachine(seed)
        runners = {"a": machine.job(1e-3), "b": machine.job(1e-3), "c": machine.job(1.5e-3)}
        timings = interleaved_rounds(runners, rounds=40, per_round=4, clock=machine.clock)
        same = ratio_verdict(timings["a"], timings["b"], baseline="a", other="b")
        assert not same["different"] and same["verdict"].startswith("no difference beyond noise"), same
        assert 0.97 < same["speedup"] < 1.03  # the alternating order cancels the drift
        slower = ratio_verdict(timings["a"], timings["c"], baseline="a", other="c")
        assert slower["different"] and 1.4 < 1 / slower["speedup"] < 1.6, slower


def test_the_verdict_follows_the_interval():
    from edgekit.bench.stats import ratio_verdict

    rng = np.random.default_rng(1)
    base = [list(10 + rng.normal(0, 0.1, 9)) for _ in range(20)]
    noisy = [list(10 * f + rng.normal(0, 0.1, 9)) for f in rng.normal(1, 0.2, 20)]  # 20% round-to-round noise
    verdict = ratio_verdict(base, noisy)
    assert verdict["interval"][0] < 1 < verdict["interval"][1] and not verdict["different"]
    small = [[x / 1.01 for x in r] for r in base]  # 1% faster, precisely: real, but under the resolution
    verdict = ratio_verdict(base, small)
    assert verdict["interval"][0] > 1 and not verdict["different"] and "resolution" in verdict["verdict"]
    verdict = ratio_verdict(base, small, min_effect=0.0)
    assert verdict["different"] and "1.01x faster" in verdict["verdict"]
    with pytest.raises(ValueError):
        ratio_verdict(base[:1], small[:1])


@pytest.fixture()
def bundles(tmp_path):
    import shutil

    small = make_bundle(tmp_path / "small", hidden=16)
    shutil.copytree(small, tmp_path / "copy" / "small")
    return small, tmp_path / "copy" / "small", make_bundle(tmp_path / "large", hidden=512)


def test_compare_of_two_copies_of_one_bundle_says_no_difference(bundles, tmp_path, block_torch):
    small, copy, _ = bundles
    proc = run_cli("bench", small, copy, "--compare", "--json", tmp_path / "c.json", env=block_torch)
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "c.json").read_text())
    (ratio,) = document["compare"]["ratios"]
    assert ratio["baseline"] == "small" and ratio["other"] == "small'" and ratio["rounds"] >= 20
    assert not ratio["different"], ratio
    assert f"compare ({ratio['rounds']} interleaved rounds, 95% CI): no difference beyond noise" in proc.stdout
    assert [r["name"] for r in document["results"]] == ["small", "small'"]
    for result in document["results"]:
        low, high = result["latency_ci95_ms"]["p50"]
        assert low <= result["latency_ms"]["p50"] <= high and result["peak_rss_mb"] is None
        assert result["runs"] >= 100 and result["format"] == "onnx"


def test_compare_finds_the_larger_model_slower(bundles, tmp_path):
    small, _, large = bundles
    proc = run_cli("bench", small, large, "--compare", "--rounds", "10", "--json", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "c.json").read_text())
    (ratio,) = document["compare"]["ratios"]
    assert ratio["different"] and ratio["speedup"] < 1 and "large is" in ratio["verdict"]
    assert ratio["rounds"] == 10 and document["compare"]["runs_per_round"] >= 10  # --rounds as given


# --- load scenarios -----------------------------------------------------------------------------------


def _sleeper(ms: float):
    def run() -> None:  # a fake model that takes `ms` per query, whatever the load
        time.sleep(ms / 1e3)

    return run


def test_server_search_finds_the_rate_bound_of_a_slow_model():
    """A 5 ms model serves at most 200 queries/s; queueing makes a 40 ms p99 hold only below that."""
    from edgekit.bench.stats import find_server_rate, server_run

    model = _sleeper(5)
    t0 = time.perf_counter()
    for _ in range(20):
        model()
    service_ms = (time.perf_counter() - t0) * 1e3 / 20
    found = find_server_rate(model, 40, 1.0, service_ms=service_ms, tolerance=0.1)
    assert found["holds"] and found["best"]["holds"] and found["best"]["latency_ms"]["p99"] <= 40
    assert 0.25 * found["capacity_qps"] < found["max_rate_qps"] < found["capacity_qps"]
    assert all(not t["holds"] for t in found["trials"] if t["rate_qps"] > found["max_rate_qps"])
    over = server_run(model, 1.5 * found["capacity_qps"], 1.0, p99_bound_ms=40)
    assert not over["holds"] and over["stopped_early"] and over["latency_ms"]["p99"] is None
    assert "over 40 ms" in over["early_stop"]
    # arrivals are Poisson: exponential gaps with the asked mean
    from edgekit.bench.stats import poisson_arrivals

    gaps = np.diff(poisson_arrivals(100, 50))
    assert gaps.mean() == pytest.approx(0.01, rel=0.05) and gaps.std() == pytest.approx(0.01, rel=0.1)


def test_a_server_run_issues_the_queries_a_p99_needs_even_at_a_low_rate():
    from edgekit.bench.stats import find_server_rate, server_run

    run = server_run(_sleeper(1), 50, 1.0)  # 50 queries/s for 1 s would be ~50 queries
    assert run["queries"] == run["planned_queries"] == 100 and run["issued_over_s"] > 1.0
    assert "holds" not in run and run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0.9
    hopeless = find_server_rate(_sleeper(5), 1, 0.5, service_ms=5, trials=3)  # p99 of 1 ms under 5 ms service
    assert not hopeless["holds"] and hopeless["max_rate_qps"] is None and "no rate tried held" in hopeless["reason"]


def test_bench_scenarios_through_the_cli(bundles, tmp_path, block_torch):
    small = bundles[0]
    proc = run_cli(
        "bench", small, "--scenario", "server", "--rate", "300", "--duration", "1", "--p99-bound", "50",
        "--json", tmp_path / "s.json", env=block_torch,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    server = json.loads((tmp_path / "s.json").read_text())["server"]
    assert server["target_rate_qps"] == 300 and server["queries"] >= 200 and server["holds"] is True
    assert "server at 300 queries/s for 1 s" in proc.stdout and "holds the 50 ms bound" in proc.stdout
    proc = run_cli("bench", small, "--scenario", "offline", "--json", tmp_path / "o.json", env=block_torch)
    assert proc.returncode == 0, proc.stderr
    offline = json.loads((tmp_path / "o.json").read_text())["offline"]
    from edgekit.bench.stats import offline_threads

    assert len(offline["cells"]) == 3 * len(offline_threads())
    assert offline["best"]["items_per_second"] == max(c["items_per_second"] for c in offline["cells"])
    assert "offline: best" in proc.stdout and "items/s" in proc.stdout


@pytest.mark.parametrize(
    "args,words",
    [
        (["--scenario", "server", "--rate", "0"], ["--rate", "positive"]),
        (["--scenario", "server", "--rate", "nan"], ["--rate", "finite"]),
        (["--scenario", "server", "--p99-bound", "inf"], ["--p99-bound", "finite"]),
        (["--scenario", "server", "--rate", "5", "--duration", "0"], ["--duration", "positive"]),
        (["--scenario", "server"], ["--rate", "--p99-bound"]),
        (["--rate", "5"], ["--scenario server"]),
        (["--scenario", "burst"], ["single-stream", "offline", "server"]),
        (["--compare"], ["two or more bundles"]),
    ],
)
def test_bad_scenario_options_are_one_line(bundles, args, words):
    proc = run_cli("bench", bundles[0], *args)
    assert_user_error(proc, *words)


# --- energy -------------------------------------------------------------------------------------------


class Counter:
    """A recorded RAPL package domain: energy_uj advances at `watts`, by `per_call` joules at each call of
    `step`, and wraps at max_energy_range_uj like the kernel's counter. With `thread`, a thread advances
    it in the background (a bench in another process reads it); without, `sleep` and `step` advance it
    by the time they took, so the planted joules do not depend on how busy the machine is."""

    def __init__(self, root: Path, watts: float, per_call: float = 0.0, wrap: int = 2**32, thread: bool = False):
        self.zone = root / "intel-rapl:0"
        (root / "intel-rapl:0:0").mkdir(parents=True)  # a subzone (core): not counted
        (root / "intel-rapl:0:0" / "name").write_text("core\n")
        self.zone.mkdir()
        (self.zone / "name").write_text("package-0\n")
        (self.zone / "max_energy_range_uj").write_text(f"{wrap}\n")
        self.wrap, self.watts, self.per_call = wrap, watts, per_call
        self.micro = wrap - 1_000_000  # starts near the wrap
        self.last = time.perf_counter()
        self.lock = threading.Lock()
        self._write()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True) if thread else None
        if self.thread:
            self.thread.start()

    def _write(self) -> None:
        tmp = self.zone / "energy_uj.tmp"
        tmp.write_text(f"{int(self.micro) % self.wrap}\n")
        os.replace(tmp, self.zone / "energy_uj")

    def _add(self, joules: float) -> None:
        with self.lock:
            self.micro += joules * 1e6
            self._write()

    def _tick(self) -> None:
        last = time.perf_counter()
        while not self.stop.wait(0.005):
            now = time.perf_counter()
            self._add(self.watts * (now - last))
            last = now

    def _accrue(self, extra: float = 0.0) -> None:
        """The energy of the time since the last reading of the clock (constant power), plus ``extra``."""
        now = time.perf_counter()
        self._add(self.watts * (now - self.last) + extra)
        self.last = now

    def sleep(self, seconds: float) -> None:
        self._accrue()
        time.sleep(seconds)
        self._accrue()

    def step(self) -> None:
        time.sleep(0.002)
        self._accrue(self.per_call)

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()


def test_rapl_energy_matches_the_planted_joules_with_idle_subtracted(tmp_path, monkeypatch):
    from edgekit.bench import energy

    counter = Counter(tmp_path / "powercap", watts=3.0, per_call=0.002)  # 3 W idle, 2 mJ per inference
    monkeypatch.setenv("EDGEKIT_POWERCAP_ROOT", str(tmp_path / "powercap"))
    measured = energy.measure(counter.step, ["rapl"], seconds=0.6, sleep=counter.sleep)
    assert measured["meter"] == "RAPL (package-0)" and measured["reason"] is None
    assert measured["idle_watts"] == pytest.approx(3.0, rel=0.05)
    assert measured["energy_mj_per_inference"] == pytest.approx(2.0, rel=0.1)  # the counter wrapped on the way
    assert measured["gross_energy_mj_per_inference"] > measured["energy_mj_per_inference"]


def test_pmic_rails_are_summed_and_integrated(tmp_path, monkeypatch):
    """A recorded ``vcgencmd pmic_read_adc``: its rails' current x voltage is the power, 4 W idle, then
    10 W once inferences start; the energy per inference is the 6 W difference times the time per call."""
    from edgekit.bench import energy

    readings = tmp_path / "adc.txt"

    def rails(watts: float) -> str:
        return (
            "     3V7_WL_SW_A current(0)=0.00390372A\n"
            f"        VDD_CORE_A current(7)={watts / 0.8:.8f}A\n"
            "     3V7_WL_SW_V volt(8)=0.00000000V\n"
            "        VDD_CORE_V volt(15)=0.80000000V\n"
            "          EXT5V_V volt(24)=5.15600000V\n"
        )

    readings.write_text(rails(4.0))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "vcgencmd"
    tool.write_text(f'#!/bin/sh\n[ "$1" = pmic_read_adc ] || exit 1\ncat "{readings}"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert energy.pmic_watts(rails(4.0)) == pytest.approx(4.0)

    def step() -> None:
        if "=5.0" in readings.read_text():  # still idle
            readings.write_text(rails(10.0))  # 10 W / 0.8 V = 12.5 A on the core rail
        time.sleep(0.01)

    measured = energy.measure(step, ["rapl", "pmic"], seconds=1.0)
    assert measured["meter"].startswith("Raspberry Pi 5 PMIC") and measured["idle_watts"] == pytest.approx(
        4.0, rel=1e-3
    )
    per_call_s = measured["seconds"] / measured["inferences"]
    assert measured["energy_mj_per_inference"] == pytest.approx(6.0 * per_call_s * 1e3, rel=0.2)
    assert measured["active_watts"] == pytest.approx(10.0, rel=0.2)


def test_nvml_counter(monkeypatch):
    """NVML's total-energy counter (mJ) through a recorded pynvml: 2 J per call, 50 W idle."""
    import types

    from edgekit.bench import energy

    state = {"mj": 1_000_000.0, "t": time.perf_counter()}

    def counter(handle) -> float:
        now = time.perf_counter()
        state["mj"] += 50.0 * (now - state["t"]) * 1e3
        state["t"] = now
        return int(state["mj"])

    fake = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"Tesla T4",
        nvmlDeviceGetTotalEnergyConsumption=counter,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def step() -> None:
        time.sleep(0.005)
        state["mj"] += 2000.0

    measured = energy.measure(step, ["nvml"], seconds=0.5)
    assert measured["meter"] == "NVML total energy (Tesla T4)"
    assert measured["energy_mj_per_inference"] == pytest.approx(2000.0, rel=0.1)


def test_unreadable_or_missing_meters_give_null_with_the_reason(tmp_path, monkeypatch):
    from edgekit.bench import energy

    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").mkdir()  # reading it fails, as a counter the kernel refuses to read does
    monkeypatch.setenv("EDGEKIT_POWERCAP_ROOT", str(tmp_path / "powercap"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no vcgencmd
    measured = energy.measure(lambda: None, ["rapl", "nvml", "pmic"], seconds=0.1)
    assert measured["energy_mj_per_inference"] is None
    assert "energy_uj cannot be read" in measured["reason"] and "vcgencmd is not on PATH" in measured["reason"]
    assert energy.measure(lambda: None, [], seconds=1)["reason"].startswith("the device profile lists no")


def test_bench_reports_energy_from_a_recorded_rapl_tree(bundles, tmp_path, block_torch):
    counter = Counter(tmp_path / "powercap", watts=5.0, thread=True)
    try:
        proc = run_cli(
            "bench", bundles[0], "--runs", "20", "--json", tmp_path / "e.json",
            env={**block_torch, "EDGEKIT_POWERCAP_ROOT": str(tmp_path / "powercap")},
        )  # fmt: skip
    finally:
        counter.close()
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["energy"]["meter"] == "RAPL (package-0)"
    assert result["energy"]["idle_watts"] == pytest.approx(5.0, rel=0.3)  # a thread of this process ticks it
    assert abs(result["energy_mj_per_inference"]) < 1.0  # a constant 5 W is all idle: nothing is left
    assert "mJ per inference by RAPL (package-0)" in proc.stdout
    proc = run_cli("bench", bundles[0], "--runs", "20", "--json", tmp_path / "n.json", env=block_torch)
    result = json.loads((tmp_path / "n.json").read_text())
    assert result["energy_mj_per_inference"] is None and "no RAPL package domain" in result["energy"]["reason"]
    assert "energy not measured" in proc.stdout


def test_profile_energy_settings_are_checked(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\nenergy_meters: [rapl, watt-o-meter]\n")
    proc = run_cli("bench", tmp_path, "--device", profile)
    assert_user_error(proc, "energy_meters watt-o-meter unknown", "rapl, nvml, pmic")


def test_a_device_side_bench_is_given_the_same_compare_and_scenario_options():
    """--host and --emulate run `edgekit bench` on the device with the options of the request."""
    from edgekit.bench.runners import Request

    auto = Request(compare={"rounds": None, "min_effect": 0.03}).bench_args()
    assert auto == ["--compare", "--min-effect", "0.03"]  # the device picks its own rounds
    fixed = Request(runs=50, compare={"rounds": 8, "min_effect": 0.05}).bench_args()
    assert fixed == ["--runs", "50", "--compare", "--min-effect", "0.05", "--rounds", "8"]
    server = {"name": "server", "rate": None, "duration": 10.0, "p99_bound_ms": 25.0}
    assert Request(scenario=server).bench_args() == [
        "--scenario",
        "server",
        "--duration",
        "10.0",
        "--p99-bound",
        "25.0",
    ]
    assert Request(scenario={"name": "offline"}).bench_args() == ["--scenario", "offline"]
