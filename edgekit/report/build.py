"""Collect the rows of one or more run folders and write report.md, report.json and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.artifacts import is_stage, read_json, write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.layout import (
    EVAL,
    EXPORT,
    LORA,
    PRUNED,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    STUDENT,
    SWEEP_JSON,
    TEACHER,
    bench_folders,
    find_stages,
    sweep_cell_folder,
)
from edgekit.records import StageMeta, read_meta
from edgekit.report.plots import slug, write_confusion_plot, write_params_plot, write_pareto_plots, write_plot
from edgekit.report.tables import _fmt, markdown, sweep_cell_text

MB = 1e6


def _model_bytes(meta: StageMeta) -> int:
    return sum(
        f["bytes"]
        for name, f in meta.files.items()
        if name.startswith("model/") and name.endswith((".safetensors", ".bin"))
    )


def collect_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per model the run produced: teacher, student (or every sweep cell's student and its
    exported bundle), lora, pruned, and the shipped bundle (one row per bench device)."""
    run_dir = Path(run_dir)
    found = find_stages(run_dir)
    metas = {name: read_meta(path) for name, path in found.items()}
    run = run_dir.name
    sweep = read_sweep(run_dir)
    rows: list[dict[str, Any]] = []
    cell_metas: dict[str, StageMeta] = {}
    if sweep:
        for cell in sweep["cells"]:
            student_dir = sweep_cell_folder(run_dir, cell["folder"]) / STUDENT
            if cell["in_table"] and is_stage(student_dir):
                cell_metas[cell["name"]] = read_meta(student_dir)
    student = metas.get(STUDENT) or (cell_metas.get(sweep["shipped"]) if sweep else None)
    if TEACHER in metas:
        rows.append(_torch_row(run, TEACHER, metas[TEACHER]))
    else:
        t = next(
            (m.details["teacher"] for m in [student, *cell_metas.values()] if m and m.details.get("teacher")), None
        )
        if t:
            rows.append(
                {
                    "run": run,
                    "stage": "teacher",
                    "model": t["arch"],
                    "runtime": "pytorch fp32",
                    "accuracy": t["accuracy"],
                    "parameters": t["parameters"],
                    "size_mb": None,
                    "p50_ms": None,
                    "p90_ms": None,
                    "peak_rss_mb": None,
                    "device": None,
                }
            )
    if sweep:
        for cell in sweep["cells"]:
            if cell["name"] not in cell_metas:
                continue
            folder = sweep_cell_folder(run_dir, cell["folder"])
            tags = {
                "cell": cell["name"],
                "strategy": cell["strategy"],
                "student": cell["label"],
                "shipped": cell["name"] == sweep["shipped"],
            }
            meta = cell_metas[cell["name"]]
            rows.append({**_torch_row(run, cell["name"], meta), **tags})
            rows += [{**row, **tags} for row in _export_rows(run, cell["name"], folder, meta)]
    elif student:
        rows.append({**_torch_row(run, "student", student), "strategy": student.config.get("strategy")})
    for name in (LORA, PRUNED):
        if name in metas:
            rows.append(_torch_row(run, name, metas[name]))
    if EXPORT in metas:
        rows += _export_rows(run, EXPORT, run_dir, student)
    teacher_acc = rows[0]["accuracy"] if rows and rows[0]["stage"] == "teacher" else None
    teacher_params = rows[0]["parameters"] if rows and rows[0]["stage"] == "teacher" else None
    for row in rows:
        row["retention"] = row["accuracy"] / teacher_acc if teacher_acc and row["accuracy"] is not None else None
        row["compression"] = teacher_params / row["parameters"] if teacher_params and row["parameters"] else None
    return rows


def read_sweep(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SWEEP_JSON
    return read_json(path, "re-run 'edgekit run' on this folder") if path.is_file() else None


def _export_rows(run: str, stage: str, folder: Path, student: StageMeta | None) -> list[dict[str, Any]]:
    """The bundle in ``folder/export``, one row per ``folder/bench-*`` device (or one unmeasured row)."""
    if not is_stage(folder / EXPORT):
        return []
    export = read_meta(folder / EXPORT)
    accuracy = read_meta(folder / EVAL).metrics.get("accuracy") if is_stage(folder / EVAL) else None
    benches = [read_meta(p) for p in bench_folders(folder)]
    quant = (export.details.get("quantization") or {}).get("mode")
    writer = registry.get("format", export.details.get("format", "onnx"), option="bundle format")
    precision = export.details.get("precision") or ("int8" if quant else "fp32")
    runtime, suffix = writer.can("runtime"), writer.can("suffix")
    base = {
        "run": run,
        "stage": stage,
        "model": f"{model_name(student) if student else 'model'}{suffix}",
        "runtime": f"{runtime} {precision}" + (f" {quant}" if precision == "int8" and quant else ""),
        "accuracy": accuracy,
        "parameters": export.parameters,
        "size_mb": export.details["model_bytes"] / MB,
    }
    breakdown, budget = export.details.get("size_breakdown"), (export.details.get("quantization") or {}).get("budget")
    extras = {"size_breakdown": breakdown} if breakdown else {}
    if budget:  # the accuracy budget's plan, without the per-weight lists (those are in the manifest)
        extras["budget"] = {
            k: budget.get(k)
            for k in ("max_drop_points", "drop_points", "metric", "fp32_score", "score", "fp32_accuracy", "accuracy")
            + ("examples",)
            + ("precision_counts", "returned_count", "weights", "float_share")
        }
    rows = []
    for bench in benches or [None]:
        metrics = bench.metrics if bench else {}
        lat = metrics.get("latency_ms") or {}
        generation = metrics.get("generation") or {}
        rows.append(
            {
                **base,
                "p50_ms": lat.get("p50"),
                "p50_ci95_ms": (metrics.get("latency_ci95_ms") or {}).get("p50"),
                "p90_ms": lat.get("p90"),
                "first_token_ms": (generation.get("time_to_first_token_ms") or {}).get("p50"),
                "per_token_ms": (generation.get("per_token_ms") or {}).get("p50"),
                "peak_rss_mb": metrics.get("peak_rss_mb"),
                "energy_mj": metrics.get("energy_mj_per_inference"),
                "device": bench.config["device"] if bench else None,
                **extras,
            }
        )
    return rows


BYTES_COLUMNS = ("embeddings", "layers", "head", "quantization parameters", "other weights")


def bytes_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """Where each bundle's bytes go (MB): the model's components and the bundle's other files."""
    seen, body = set(), []
    for row in rows:
        sizes = row.get("size_breakdown")
        key = (row["run"], row["stage"])
        if not sizes or key in seen:
            continue
        seen.add(key)
        parts = sizes.get("components") or {}
        model = sum(parts.values()) if parts else None
        cells = [f"{parts[c] / MB:.2f}" if c in parts else "n/a" for c in BYTES_COLUMNS]
        rest = sizes["bundle_bytes"] - (model if model is not None else 0)
        body.append([row["stage"], f"{sizes['bundle_bytes'] / MB:.2f}", *cells, f"{rest / MB:.2f}"])
    if not body:
        return None
    header = ["bundle", "whole (MB)", *(f"{c} (MB)" for c in BYTES_COLUMNS), "files besides weights (MB)"]
    return header, body


def budget_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per bundle exported within an accuracy budget (--max-drop)."""
    from edgekit.metrics import budget_score_phrase

    lines, seen = [], set()
    for row in rows:
        b = row.get("budget")
        if not b or (row["run"], row["stage"]) in seen:
            continue
        seen.add((row["run"], row["stage"]))
        counts = ", ".join(f"{n} {k}" for k, n in sorted((b.get("precision_counts") or {}).items()))
        lines.append(
            f"{row['stage']}: {budget_score_phrase(b)} on "
            f"{b['examples']} examples, drop {b['drop_points']:.2f} points (budget {b['max_drop_points']:g}); "
            f"weights {counts}; {b['returned_count']} of {b['weights']} returned to higher precision."
        )
    return lines


def model_name(meta: StageMeta) -> str:
    """What a stage's model is called in tables: its model spec, or for distilled students the
    student's description (e.g. ``bert-L3`` for a derived student)."""
    name = meta.config.get("model") or meta.details.get("student_model") or meta.config.get("strategy", "model")
    path = Path(str(name))
    if is_stage(path):
        return model_name(read_meta(path))  # a stage folder (e.g. LoRA of a sweep cell): what that stage holds
    parent = Path(meta.parent.path) if meta.parent else None
    if meta.stage == "prune" and not path.exists() and parent is not None and is_stage(parent):
        return model_name(read_meta(parent))  # pruning records the architecture only: name what it pruned
    return path.name if path.exists() else str(name)


def _torch_row(run: str, stage: str, meta: StageMeta) -> dict[str, Any]:
    lat = meta.metrics.get("latency_ms") or {}
    return {
        "run": run,
        "stage": stage,
        "model": model_name(meta),
        "runtime": "pytorch fp32",
        "accuracy": meta.metrics.get("accuracy"),
        "parameters": meta.parameters,
        "size_mb": _model_bytes(meta) / MB,
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "peak_rss_mb": None,
        "device": "cpu (in process)" if lat else None,
    }


def sweep_table(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The seeds' Table II: rows student sizes (with parameters), columns strategies; PyTorch accuracy
    of each student, and the accuracy of its exported file."""
    cells = [r for r in rows if r.get("cell")]
    if not cells:
        return None
    strategies = list(dict.fromkeys(r["strategy"] for r in cells))
    students = list(dict.fromkeys(r["student"] for r in cells))
    table = []
    for student in students:
        entry: dict[str, Any] = {"student": student, "parameters": None, "accuracy": {}, "exported_accuracy": {}}
        for r in cells:
            if r["student"] != student:
                continue
            if r["runtime"].startswith("pytorch"):
                entry["parameters"] = r["parameters"]
                entry["accuracy"][r["strategy"]] = r["accuracy"]
            else:
                entry["exported_accuracy"][r["strategy"]] = r["accuracy"]
        table.append(entry)
    return {"strategies": strategies, "rows": table}


def sweep_markdown(table: dict[str, Any], shipped: str | None) -> list[str]:
    head = "| student | params (M) | " + " | ".join(f"{s} (%)" for s in table["strategies"]) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(table["strategies"])]
    for entry in table["rows"]:
        cells = []
        for s in table["strategies"]:
            text = sweep_cell_text(entry, s)
            if shipped == f"{s}-{entry['student']}":
                text = f"**{text}** shipped"
            cells.append(text)
        lines.append(
            f"| {entry['student']} | {_fmt(entry['parameters'] / 1e6 if entry['parameters'] else None, '.3f')} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def write_report(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """report.md, report.html and report.json (with the plots) in ``out`` for the stages of ``run_dirs``."""
    out = Path(out)
    rows = [row for run_dir in run_dirs for row in collect_rows(run_dir)]
    if not rows:
        raise EdgekitError("no stages with metrics found; run 'edgekit run' first")
    out.mkdir(parents=True, exist_ok=True)
    plots, confusions = _plots(rows, run_dirs, out)
    sweeps = [(Path(r).name, read_sweep(r)) for r in run_dirs]
    table = sweep_table(rows)
    multi = len(run_dirs) > 1
    sections: dict[str, Any] = {
        "runs": [str(Path(r)) for r in run_dirs],
        "note": (
            "Accuracy is measured on the evaluation split (test when present); an exported row's accuracy is that "
            "of the exported file on its runtime. Latency is batch 1, steady state after warm-up; retention is "
            "accuracy / the teacher's, compression the teacher's parameters / the row's."
        ),
        "tables": [],
    }
    sizes = bytes_table(rows)
    if sizes:
        sections["tables"].append({"title": "Where the bytes go", "header": sizes[0], "rows": sizes[1]})
    budgets = budget_lines(rows)
    if budgets:
        sections["budgets"] = budgets
    text = _markdown_report(rows, sweeps, table, sections, plots, confusions, multi)
    write_text_atomic(out / REPORT_MD, "\n".join(text) + "\n")
    from edgekit.report.html import render

    write_text_atomic(out / REPORT_HTML, render(rows, table, sweeps, plots, confusions, sections, multi))
    document = {
        "schema_version": 2,
        "runs": sections["runs"],
        "rows": rows,
        "plots": [p.name for p in plots.values()],
        "sweep": table,
        "shipped": [{"run": run, "cell": s["shipped"], "reason": s["reason"]} for run, s in sweeps if s],
        "confusion_matrices": [{k: c[k] for k in ("run", "labels", "matrix", "plot")} for c in confusions],
        "html": "report.html",
    }
    write_json_atomic(out / REPORT_JSON, document)
    return document


def _plots(rows: list[dict[str, Any]], run_dirs: list[Path], out: Path) -> tuple[dict[str, Path], list[dict]]:
    """Every plot of the report written into ``out`` (title -> file), and the runs' confusion matrices
    (each with the name of its plot)."""
    plots = {"accuracy vs size and latency": write_plot(rows, out / "accuracy_size_latency.png")}
    params_plot = write_params_plot(rows, out / "params_accuracy.png")
    if params_plot:
        plots["parameters vs accuracy per strategy"] = params_plot
    for path in write_pareto_plots(rows, out):
        plots[f"accuracy vs latency on {path.stem.removeprefix('pareto_')} (Pareto front)"] = path
    confusions = _confusions(run_dirs)
    for c in confusions:
        name = "confusion_matrix.png" if len(confusions) == 1 else f"confusion_matrix_{slug(c['run'])}.png"
        c["plot"] = write_confusion_plot(c["labels"], c["matrix"], out / name).name
        plots[f"confusion matrix ({c['run']})"] = out / c["plot"]
    return plots, confusions


def _markdown_report(rows, sweeps, table, sections, plots, confusions, multi: bool) -> list[str]:
    """report.md's lines: the stage table, the strategy grid of sweeps, the extra tables, the budget
    lines, the plots and the confusion matrices."""
    shipped = next((s["shipped"] for _, s in sweeps if s), None)
    text = [
        "# edgekit report",
        "",
        f"Runs: {', '.join(sections['runs'])}",
        "",
        sections["note"],
        "",
        "## Stages",
        "",
        markdown(rows, with_run=multi),
        "",
    ]
    if table:
        text += ["## Strategies × student sizes", ""]
        for run, s in sweeps:
            if s:
                text += [f"{run}: shipped **{s['shipped']}**, {s['reason']}.", ""]
        text += [*sweep_markdown(table, shipped), ""]
    for extra in sections["tables"]:
        text += [f"## {extra['title']}", "", "| " + " | ".join(extra["header"]) + " |"]
        text += ["|---|" + "---:|" * (len(extra["header"]) - 1)]
        text += ["| " + " | ".join(r) + " |" for r in extra["rows"]] + [""]
    if sections.get("budgets"):
        text += ["## Quantization within an accuracy budget", "", *(f"- {line}" for line in sections["budgets"]), ""]
    text += (
        ["## Plots", ""]
        + [f"![{title}]({path.name})" for title, path in plots.items() if not title.startswith("confusion matrix")]
        + [""]
    )  # that one: in its own section
    for c in confusions:
        text += _confusion_markdown(c)
    return text


def _confusions(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """The confusion matrix of each run's shipped bundle (its eval stage)."""
    found = []
    for run_dir in run_dirs:
        path = Path(run_dir) / EVAL
        if not is_stage(path):
            continue
        metrics = read_meta(path).metrics
        labels, matrix = metrics.get("labels"), metrics.get("confusion_matrix")
        if labels and matrix:
            found.append({"run": Path(run_dir).name, "labels": list(labels), "matrix": matrix})
    return found


def _confusion_markdown(c: dict[str, Any]) -> list[str]:
    lines = [
        f"## Confusion matrix of the shipped model ({c['run']}, rows: true, columns: predicted)",
        "",
        "| true \\ predicted | " + " | ".join(c["labels"]) + " |",
        "|---|" + "---:|" * len(c["labels"]),
    ]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(c["labels"], c["matrix"])]
    return lines + ["", f"![confusion matrix]({c['plot']})", ""]
