"""Collect the rows of one or more run folders and write report.md, report.json and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.artifacts import read_meta, write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError

MB = 1e6


def _model_bytes(meta: dict[str, Any]) -> int:
    return sum(f["bytes"] for name, f in meta["files"].items()
               if name.startswith("model/") and name.endswith((".safetensors", ".bin")))


def collect_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per model the run produced: teacher, student, exported bundle (per bench device)."""
    from edgekit.pipeline import find_stages

    found = find_stages(run_dir)
    metas = {name: read_meta(path) for name, path in found.items()}
    rows: list[dict[str, Any]] = []
    run = Path(run_dir).name
    student = metas.get("student")
    if "teacher" in metas:
        rows.append(_torch_row(run, "teacher", metas["teacher"]))
    elif student and student.get("teacher"):
        t = student["teacher"]
        rows.append({"run": run, "stage": "teacher", "model": t["arch"], "runtime": "pytorch fp32",
                     "accuracy": t["accuracy"], "parameters": t["parameters"], "size_mb": None, "p50_ms": None,
                     "p90_ms": None, "peak_rss_mb": None, "device": None})
    if student:
        rows.append(_torch_row(run, "student", student))
    for name in ("lora", "pruned"):
        if name in metas:
            rows.append(_torch_row(run, name, metas[name]))
    if "export" in metas:
        export = metas["export"]
        accuracy = metas["eval"]["metrics"]["accuracy"] if "eval" in metas else None
        benches = [m for name, m in metas.items() if name.startswith("bench-")]
        quant = (export.get("quantization") or {}).get("mode")
        fmt = export.get("format", "onnx")
        precision = export.get("precision") or ("int8" if quant else "fp32")
        runtime = "onnxruntime" if fmt == "onnx" else "torchscript"
        suffix = ".onnx" if fmt == "onnx" else ".pt"
        base = {"run": run, "stage": "export", "model": f"{model_name(student) if student else 'model'}{suffix}",
                "runtime": f"{runtime} {precision}" + (f" {quant}" if precision == "int8" and quant else ""), "accuracy": accuracy,
                "parameters": export["parameters"], "size_mb": export["model_bytes"] / MB}
        for bench in benches or [None]:
            lat = (bench or {}).get("metrics", {}).get("latency_ms") or {}
            rows.append({**base, "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"),
                         "peak_rss_mb": (bench or {}).get("metrics", {}).get("peak_rss_mb"),
                         "device": bench["config"]["device"] if bench else None})
    teacher_acc = rows[0]["accuracy"] if rows and rows[0]["stage"] == "teacher" else None
    teacher_params = rows[0]["parameters"] if rows and rows[0]["stage"] == "teacher" else None
    for row in rows:
        row["retention"] = row["accuracy"] / teacher_acc if teacher_acc and row["accuracy"] is not None else None
        row["compression"] = teacher_params / row["parameters"] if teacher_params and row["parameters"] else None
    return rows


def model_name(meta: dict) -> str:
    """What a stage's model is called in tables: its model spec, or for distilled students the
    student's description (e.g. ``bert-L3`` for a derived student)."""
    name = meta["config"].get("model") or meta.get("student_model") or meta["config"].get("strategy", "model")
    return Path(str(name)).name if Path(str(name)).exists() else str(name)


def _torch_row(run: str, stage: str, meta: dict[str, Any]) -> dict[str, Any]:
    lat = meta["metrics"].get("latency_ms") or {}
    return {"run": run, "stage": stage, "model": model_name(meta), "runtime": "pytorch fp32",
            "accuracy": meta["metrics"].get("accuracy"), "parameters": meta["parameters"],
            "size_mb": _model_bytes(meta) / MB, "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"),
            "peak_rss_mb": None, "device": "cpu (in process)" if lat else None}


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{suffix}"


COLUMNS = [
    ("stage", "stage", "s", ""), ("model", "model", "s", ""), ("runtime", "runtime", "s", ""),
    ("accuracy", "accuracy (%)", ".2f", ""), ("retention", "vs teacher (%)", ".1f", ""),
    ("parameters", "params (M)", ".3f", ""), ("compression", "compression (x)", ".1f", ""),
    ("size_mb", "size (MB)", ".2f", ""), ("p50_ms", "p50 (ms)", ".3f", ""), ("p90_ms", "p90 (ms)", ".3f", ""),
    ("peak_rss_mb", "peak RSS (MB)", ".1f", ""), ("device", "latency measured on", "s", ""),
]


def table_cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for key, _, spec, _ in COLUMNS:
        value = row.get(key)
        if key in ("accuracy", "retention") and value is not None:
            value = value * 100
        if key == "parameters" and value is not None:
            value = value / 1e6
        cells.append(_fmt(value, spec))
    return cells


def markdown(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title, _, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if spec == "s" else "---:" for _, _, spec, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def text_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table for the terminal."""
    header = [title for _, title, _, _ in COLUMNS]
    cells = [table_cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgekitError("plots need matplotlib: pip install 'edgekit[report]'") from None
    usable = [r for r in rows if r["accuracy"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "size_mb", "size on disk (MB)"), (axes[1], "p50_ms", "p50 latency, batch 1 (ms)")):
        for row in usable:
            if row.get(key) is None:
                continue
            ax.scatter(row[key], row["accuracy"] * 100, s=60)
            ax.annotate(f"{row['stage']}\n{row['runtime']}", (row[key], row["accuracy"] * 100), fontsize=8,
                        textcoords="offset points", xytext=(6, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs size")
    axes[1].set_title("accuracy vs latency")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    out = Path(out)
    rows = [row for run_dir in run_dirs for row in collect_rows(run_dir)]
    if not rows:
        raise EdgekitError("no stages with metrics found; run 'edgekit run' first")
    out.mkdir(parents=True, exist_ok=True)
    plot = write_plot(rows, out / "accuracy_size_latency.png")
    confusion = _confusion_section(run_dirs)
    text = "\n".join([
        "# edgekit report", "",
        f"Runs: {', '.join(str(Path(r)) for r in run_dirs)}", "",
        "Accuracy is measured on the evaluation split (test when present); the exported row's accuracy is that of "
        "the exported file on onnxruntime. Latency is batch 1, steady state after warm-up.", "",
        markdown(rows), "",
        f"![accuracy vs size and latency]({plot.name})", "",
        *confusion,
    ])
    write_text_atomic(out / "report.md", text + "\n")
    document = {"schema_version": 1, "runs": [str(r) for r in run_dirs], "rows": rows, "plots": [plot.name]}
    write_json_atomic(out / "report.json", document)
    return document


def _confusion_section(run_dirs: list[Path]) -> list[str]:
    lines = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "eval"
        if not (path / "meta.json").is_file():
            continue
        metrics = read_meta(path)["metrics"]
        labels, matrix = metrics.get("labels"), metrics.get("confusion_matrix")
        if not labels or not matrix:
            continue
        lines += [f"## Confusion matrix of the shipped model ({Path(run_dir).name}, rows: true, columns: predicted)", "",
                  "| true \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, matrix)]
        lines.append("")
    return lines
