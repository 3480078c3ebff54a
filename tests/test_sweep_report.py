"""`edgekit run` with a sweep (strategies x student sizes), the report's tables and plots, the HTML
page in a real headless Chromium, resume after a kill and reuse of unchanged stages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_user_error, cli_in_process, run_cli, save_tiny_bert

pytestmark = pytest.mark.slow
STRATEGIES = ["labels-only", "straightforward", "successive", "multi-teacher"]


def sweep_recipe(folder: Path, teacher: Path, questions: dict[str, Path], **changes) -> Path:
    recipe = {
        "name": "sweep",
        "task": "text-classification",
        "data": {"train": str(questions["train"]), "test": str(questions["test"]), "max_length": 32},
        "teacher": {"model": str(teacher), "train": {"epochs": 2, "batch_size": 32, "lr": 1e-3}},
        "distill": {"learn_teacher_weights": True, "train": {"epochs": 2, "batch_size": 32, "lr": 1e-3}},
        "sweep": {"strategies": STRATEGIES, "students": [2, 1]},
        "lora": {"enabled": True, "train": {"epochs": 1, "batch_size": 32}},
        "prune": {"method": "l1-unstructured", "amount": 0.3},
        "export": {"precision": "int8"},
        "bench": {"devices": ["cpu"], "runs": 20},
    }
    for key, value in changes.items():
        section, field = key.split("__")
        recipe[section][field] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert4"), minilm_tokenizer_dir, hidden=32, layers=4)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, teacher4, question_files):
    folder = tmp_path_factory.mktemp("sweep")
    recipe = sweep_recipe(folder, teacher4, question_files)
    out = folder / "run"
    proc = run_cli("run", recipe, "--out", out, env={"EDGEKIT_CACHE_DIR": str(folder / "cache")}, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, recipe, proc


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def test_every_cell_is_trained_exported_and_measured(sweep_run):
    out, _, _ = sweep_run
    plan = json.loads((out / "sweep.json").read_text())
    cells = {c["name"]: c for c in plan["cells"]}
    # teacher of 4 layers, largest student 2: the successive chain runs through a 3-layer link
    assert set(cells) == {f"{s}-L{k}" for s in STRATEGIES for k in (2, 1)} | {"successive-L3"}
    assert not cells["successive-L3"]["in_table"]
    assert cells["successive-L2"]["teachers"] == ["successive-L3"]
    assert cells["successive-L1"]["teachers"] == ["successive-L2"]
    assert cells["multi-teacher-L1"]["teachers"] == ["teacher", "successive-L3"]
    for name, cell in cells.items():
        student = meta(out / "sweep" / name / "student")
        assert student["stage"] == "distill"
        assert student["config"]["student"]["layers"] == [int(name.rsplit("L", 1)[1])]
        assert student["config"]["alpha"] == (0.0 if cell["strategy"] == "labels-only" else 0.3)
        if cell["in_table"]:
            assert meta(out / "sweep" / name / "export")["precision"] == "int8"
            assert meta(out / "sweep" / name / "eval")["metrics"]["accuracy"] >= 0
            assert meta(out / "sweep" / name / "bench-cpu")["metrics"]["latency_ms"]["p50"] > 0
    multi = meta(out / "sweep" / "multi-teacher-L2" / "student")
    assert multi["config"]["strategy"] == "multi-teacher" and len(multi["metrics"]["teacher_weights"]) == 2
    # successive links are taught by the previous link: its parent is that stage
    assert meta(out / "sweep" / "successive-L1" / "student")["config"]["teachers"] == [
        str(out / "sweep" / "successive-L2" / "student")
    ]


def test_the_best_cell_goes_on_through_lora_prune_export(sweep_run):
    out, _, _ = sweep_run
    plan = json.loads((out / "sweep.json").read_text())
    table = [c["name"] for c in plan["cells"] if c["in_table"]]
    scores = {
        n: (
            meta(out / "sweep" / n / "student")["metrics"]["val_accuracy"],
            -meta(out / "sweep" / n / "student")["parameters"],
        )
        for n in table
    }
    assert plan["shipped"] == max(scores, key=scores.get)
    assert "validation" in plan["reason"]
    lora = meta(out / "lora")
    assert Path(lora["parent"]["path"]).resolve() == (out / "sweep" / plan["shipped"] / "student").resolve()
    assert meta(out / "pruned")["parent"]["stage"] == "lora"
    assert meta(out / "export")["parent"]["stage"] == "prune"
    assert not (out / "student").exists()


def test_report_has_the_stage_table_strategy_table_and_plots(sweep_run):
    out, _, proc = sweep_run
    report = json.loads((out / "report.json").read_text())
    stages = [r["stage"] for r in report["rows"]]
    assert stages[0] == "teacher" and stages[-3:] == ["lora", "pruned", "export"]
    for name in (f"{s}-L{k}" for s in STRATEGIES for k in (2, 1)):
        runtimes = [r["runtime"] for r in report["rows"] if r["stage"] == name]
        assert runtimes[0] == "pytorch fp32" and runtimes[1].startswith("onnxruntime int8"), runtimes
    for row in report["rows"]:
        assert row["accuracy"] is not None and row["parameters"] > 0
        if row["stage"] != "teacher":
            assert row["compression"] >= 1 and row["retention"] is not None
    sweep = report["sweep"]
    assert sweep["strategies"] == STRATEGIES
    assert [r["student"] for r in sweep["rows"]] == ["L2", "L1"]
    assert sweep["rows"][0]["parameters"] > sweep["rows"][1]["parameters"]
    for row in sweep["rows"]:
        assert set(row["accuracy"]) == set(STRATEGIES) == set(row["exported_accuracy"])
    for plot in ("accuracy_size_latency.png", "params_accuracy.png", "pareto_cpu.png", "confusion_matrix.png"):
        assert plot in report["plots"]
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = report["confusion_matrices"][0]["labels"]
    assert sorted(labels) == ["HUM", "LOC", "NUM"]
    text = (out / "report.md").read_text()
    assert "## Strategies × student sizes" in text and "| student | params (M) | labels-only (%)" in text
    assert "shipped" in text and "Confusion matrix of the shipped model" in text and "pareto_cpu.png" in text
    assert "sweep: shipping" in proc.stderr and "report:" in proc.stdout
    assert text.count("](confusion_matrix.png)") == 1
    by_stage = {r["stage"]: r for r in reversed(report["rows"])}  # a stage's first row: its PyTorch model
    shipped = report["shipped"][0]["cell"]
    # lora, pruned and export rows name the shipped cell's student (pruning records only the architecture)
    assert (
        by_stage["lora"]["model"] == by_stage["pruned"]["model"] == by_stage[shipped]["model"] == "bert-L" + shipped[-1]
    )
    assert by_stage["export"]["model"] == by_stage[shipped]["model"] + ".onnx"


def test_pareto_front():
    from edgekit.report.plots import pareto

    points = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 70.0)]
    assert pareto(points) == [4, 0, 1]


def test_html_report_is_self_contained_and_renders_in_chromium(sweep_run, tmp_path):
    out, _, _ = sweep_run
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") == 4
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed (bash .ci/run installs it)")
    # the page plus a probe that reports, once everything loaded, what the browser made of it
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        "document.body.insertAdjacentHTML('beforeend', '<pre id=probe>' + JSON.stringify({"
        "images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
        "tables: document.querySelectorAll('table').length, title: document.title}) + '</pre>'); });</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--user-data-dir=" + str(tmp_path / "profile"),
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Uncaught" not in proc.stderr and "Failed to load resource" not in proc.stderr
    found = proc.stdout.split('<pre id="probe">')[1].split("</pre>")[0]
    result = json.loads(found.replace("&quot;", '"'))
    assert result == {"images": 4, "decoded": 4, "tables": 4, "title": "edgekit report"}, (
        result
    )  # stages, sweep, where the bytes go, confusion
    assert "<h2>Where the bytes go</h2>" in html and "embeddings (MB)" in html
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--user-data-dir=" + str(tmp_path / "profile2"),
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # tables and plots drew something


def test_kill_then_rerun_resumes_and_reuses_unchanged_stages(sweep_run):
    """Last of the run's tests: it changes the run (prune amount 0.4)."""
    out, recipe, _ = sweep_run
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGEKIT_CACHE_DIR": str(out.parent / "cache")}
    cell_created = {
        p.parent.parent.name: meta(p.parent)["producer"]["created"] for p in out.glob("sweep/*/student/meta.json")
    }
    lora_created = meta(out / "lora")["producer"]["created"]
    args = [
        sys.executable,
        "-m",
        "edgekit.cli.main",
        "run",
        str(recipe),
        "--out",
        str(out),
        "--set",
        "prune.amount=0.4",
    ]
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and child.poll() is None:
        if (out / "pruned" / "meta.json").is_file() and meta(out / "pruned")["config"]["amount"] == 0.4:
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    pruned_created = meta(out / "pruned")["producer"]["created"]
    assert meta(out / "pruned")["config"]["amount"] == 0.4
    assert (
        meta(out / "export")["parent"]["fingerprint"] != meta(out / "pruned")["fingerprint"]
    )  # killed before its export

    proc = run_cli(
        "run", recipe, "--out", out, "--set", "prune.amount=0.4", env={"EDGEKIT_CACHE_DIR": str(out.parent / "cache")}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("distill: reused") == len(cell_created)
    assert "finetune: reused" in proc.stderr and "prune: reused" in proc.stderr
    assert {
        p.parent.parent.name: meta(p.parent)["producer"]["created"] for p in out.glob("sweep/*/student/meta.json")
    } == cell_created
    assert meta(out / "lora")["producer"]["created"] == lora_created
    assert meta(out / "pruned")["producer"]["created"] == pruned_created
    export = meta(out / "export")
    assert export["parent"]["stage"] == "prune"
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob(".*.old-*"))
    pruned = json.loads((out / "report.json").read_text())["rows"]
    assert [r["stage"] for r in pruned][-3:] == ["lora", "pruned", "export"]


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"sweep__strategies": ["fast"]}, ["sweep.strategies[0]", "not one of"]),
        ({"sweep__students": [4]}, ["sweep.students", "not smaller than the teacher's 4"]),
        ({"sweep__students": [2, "mobilenet_v2"]}, ["mix of layer counts and model names"]),
        ({"sweep__ship": "successive-L9"}, ["sweep.ship", "successive-L2"]),
        ({"sweep__successive_via": []}, ["multi-teacher needs a second teacher"]),
        ({"bench__devices": ["t4"]}, ["needs CUDAExecutionProvider"]),
        ({"data__train": "/nonexistent/train.tsv"}, ["/nonexistent/train.tsv"]),
        ({"prune__method": "channels"}, ["channels prunes CNNs"]),
    ],
)
def test_bad_sweep_recipes_fail_before_training(tmp_path, teacher4, question_files, changes, needles):
    recipe = sweep_recipe(tmp_path, teacher4, question_files, **changes)
    proc = cli_in_process("run", recipe, "--out", tmp_path / "out")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def test_unknown_stage_section_fails_before_training(tmp_path, teacher4, question_files):
    recipe = sweep_recipe(tmp_path, teacher4, question_files)
    text = recipe.read_text() + "quantize:\n  bits: 4\n"
    recipe.write_text(text)
    proc = cli_in_process("run", recipe, "--out", tmp_path / "out")
    assert_user_error(proc, "recipe field quantize is unknown", "prune", "sweep")
    assert not (tmp_path / "out").exists()


def test_layer_students_need_a_transformer_teacher(tmp_path):
    proc = cli_in_process(
        "run", "--set", "sweep.strategies=[straightforward]", "--set", "sweep.students=[2]", "--out", tmp_path / "out"
    )
    assert_user_error(proc, "resnet18 is a CNN", "mobilenet_v2")
    assert not (tmp_path / "out").exists()


def test_benchmark_recipes_are_valid():
    """The seed recipes in benchmarks/recipes load, validate and pass every check that needs no download."""
    from edgekit.pipeline import _check_prune_method
    from edgekit.recipe import load_recipe
    from edgekit.sweep import check

    paths = sorted((REPO / "benchmarks" / "recipes").glob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        recipe = load_recipe(path)
        _check_prune_method(recipe)
        if recipe.sweep.active:
            check(recipe, None, cnn_teacher=False)
