"""The report's one table layout: columns, cell formatting, Markdown and terminal renderings
(shared by report.md, report.html and the CLI)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{suffix}"


COLUMNS = [
    ("stage", "stage", "s", ""),
    ("model", "model", "s", ""),
    ("runtime", "runtime", "s", ""),
    ("accuracy", "accuracy (%)", ".2f", ""),
    ("retention", "vs teacher (%)", ".1f", ""),
    ("parameters", "params (M)", ".3f", ""),
    ("compression", "compression (x)", ".1f", ""),
    ("size_mb", "size (MB)", ".2f", ""),
    ("p50_ms", "p50 (ms) [95% CI]", ".3f", ""),
    ("p90_ms", "p90 (ms)", ".3f", ""),
    ("first_token_ms", "first token (ms)", ".3f", ""),  # seq2seq bundles: p50 of each
    ("per_token_ms", "per token (ms)", ".3f", ""),
    ("peak_rss_mb", "peak RSS (MB)", ".1f", ""),
    ("energy_mj", "energy (mJ/inference)", ".3f", ""),
    ("device", "latency measured on", "s", ""),
]


# shown only when some row has them (what classifier-only reports would fill with n/a)
GENERATION_COLUMNS = ("first_token_ms", "per_token_ms")


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The columns these rows need: every column, less the seq2seq ones when no row is seq2seq."""
    seq2seq = any(r.get(key) is not None for r in rows for key in GENERATION_COLUMNS)
    return [c for c in COLUMNS if seq2seq or c[0] not in GENERATION_COLUMNS]


def table_cells(row: dict[str, Any], shown: list[tuple[str, str, str, str]] | None = None) -> list[str]:
    cells = []
    for key, _, spec, _ in shown or COLUMNS:
        value = row.get(key)
        if key in ("accuracy", "retention") and value is not None:
            value = value * 100
        if key == "parameters" and value is not None:
            value = value / 1e6
        cell = _fmt(value, spec)
        if key == "p50_ms" and row.get("p50_ci95_ms"):
            low, high = row["p50_ci95_ms"]
            cell += f" [{low:{spec}}, {high:{spec}}]"
        cells.append(cell)
    return cells


def markdown(rows: list[dict[str, Any]], with_run: bool = False) -> str:
    shown = columns(rows)
    titles = (["run"] if with_run else []) + [title for _, title, _, _ in shown]
    header = "| " + " | ".join(titles) + " |"
    rule = (
        "|" + ("---|" if with_run else "") + "|".join("---" if spec == "s" else "---:" for _, _, spec, _ in shown) + "|"
    )
    body = ["| " + " | ".join(([r["run"]] if with_run else []) + table_cells(r, shown)) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def text_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table for the terminal."""
    shown = columns(rows)
    header = [title for _, title, _, _ in shown]
    cells = [table_cells(r, shown) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def sweep_cell_text(entry: dict[str, Any], strategy: str) -> str:
    """One cell of the strategy table: the student's accuracy (%) and its exported file's."""
    acc, exp = entry["accuracy"].get(strategy), entry["exported_accuracy"].get(strategy)
    text = _fmt(acc * 100 if acc is not None else None, ".2f")
    return text + (f" (exported {exp * 100:.2f})" if exp is not None else "")
