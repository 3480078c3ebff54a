"""The report's PNG plots (matplotlib, Agg): accuracy against size and latency, parameters, the
Pareto front of a sweep, and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgekitError("plots need matplotlib: pip install 'edgekit[report]'") from None
    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _label(row: dict[str, Any]) -> str:
    return f"{row['stage']}\n{row['runtime']}"


def write_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against size on disk and against p50 latency, every row that has them."""
    plt = _pyplot()
    usable = [r for r in rows if r["accuracy"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "size_mb", "size on disk (MB)"), (axes[1], "p50_ms", "p50 latency, batch 1 (ms)")):
        for row in usable:
            if row.get(key) is None:
                continue
            ax.scatter(row[key], row["accuracy"] * 100, s=60)
            ax.annotate(
                _label(row), (row[key], row["accuracy"] * 100), fontsize=7, textcoords="offset points", xytext=(6, 4)
            )
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs size")
    axes[1].set_title("accuracy vs latency")
    return _save(fig, path)


def write_params_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Parameters against accuracy, one line per distillation strategy (PyTorch students), the teacher as a star."""
    students = [
        r for r in rows if r.get("strategy") and r["runtime"].startswith("pytorch") and r["accuracy"] is not None
    ]
    if not students:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in students):
        points = sorted(
            (r["parameters"] / 1e6, r["accuracy"] * 100, r.get("student") or r["model"])
            for r in students
            if r["strategy"] == strategy
        )
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
    teacher = next((r for r in rows if r["stage"] == "teacher" and r["accuracy"] is not None), None)
    if teacher:
        ax.scatter(
            [teacher["parameters"] / 1e6],
            [teacher["accuracy"] * 100],
            marker="*",
            s=180,
            color="black",
            label=f"teacher ({teacher['model']})",
            zorder=3,
        )
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("parameters vs accuracy per strategy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher),
    by increasing latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_pareto_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy against p50 latency of the exported bundles, one plot per bench device, the Pareto front drawn."""
    plt = _pyplot()
    paths = []
    devices = dict.fromkeys(
        r["device"]
        for r in rows
        if r.get("device") and r["stage"] != "teacher" and not r["runtime"].startswith("pytorch")
    )
    for device in devices:
        measured = [
            r for r in rows if r.get("device") == device and r["p50_ms"] is not None and r["accuracy"] is not None
        ]
        if not measured:
            continue
        points = [(r["p50_ms"], r["accuracy"] * 100) for r in measured]
        front = pareto(points)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=40, color="tab:gray", label="bundle")
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            marker="o",
            color="tab:red",
            drawstyle="steps-post",
            label="Pareto front",
        )
        for row, (x, y) in zip(measured, points):
            ax.annotate(row["stage"], (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(f"p50 latency on {device}, batch 1 (ms)")
        ax.set_ylabel("accuracy of the exported file (%)")
        ax.set_title(f"accuracy vs latency on {device}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"pareto_{slug(device)}.png"))
    return paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def write_confusion_plot(labels: list[str], matrix: list[list[int]], path: Path) -> Path:
    plt = _pyplot()
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    peak = max((max(row) for row in matrix), default=0)
    if len(labels) <= 30:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > peak / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix of the shipped model")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)
