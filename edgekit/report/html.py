"""report.html: one self-contained page (plots embedded as data URIs, no scripts, no external files)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from edgekit.report.tables import columns, sweep_cell_text, table_cells

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1b1f24; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.shipped td { background: #fff8c5; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.85rem; color: #57606a; }
p.note { color: #57606a; font-size: 0.9rem; }
"""


def _table(header: list[str], body: list[list[str]], numeric: list[bool], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = []
    for i, row in enumerate(body):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if num else f"<td>{escape(c)}</td>" for c, num in zip(row, numeric)
        )
        lines.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _image(path: Path, title: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(title)}</figcaption></figure>"
    )


def render(
    rows: list[dict[str, Any]],
    table: dict[str, Any] | None,
    sweeps: list[tuple[str, dict | None]],
    plots: dict[str, Path],
    confusions: list[dict[str, Any]],
    sections: dict[str, Any],
    multi: bool,
) -> str:
    shown = columns(rows)
    header = (["run"] if multi else []) + [title for _, title, _, _ in shown]
    numeric = ([False] if multi else []) + [spec != "s" for _, _, spec, _ in shown]
    body = [([r["run"]] if multi else []) + table_cells(r, shown) for r in rows]
    classes = ["shipped" if r.get("shipped") else "" for r in rows]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>edgekit report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>edgekit report</h1>",
        f"<p>Runs: {escape(', '.join(sections['runs']))}</p>",
        f'<p class="note">{escape(sections["note"])}</p>',
        "<h2>Stages</h2>",
        _table(header, body, numeric, classes),
    ]
    if table:
        parts.append("<h2>Strategies × student sizes</h2>")
        for run, s in sweeps:
            if s:
                parts.append(
                    f"<p>{escape(run)}: shipped <strong>{escape(s['shipped'])}</strong>, {escape(s['reason'])}.</p>"
                )
        shipped = {s["shipped"] for _, s in sweeps if s}
        t_header = ["student", "params (M)"] + [f"{s} (%)" for s in table["strategies"]]
        t_body = []
        for entry in table["rows"]:
            line = [entry["student"], f"{entry['parameters'] / 1e6:.3f}" if entry["parameters"] else "n/a"]
            for s in table["strategies"]:
                text = sweep_cell_text(entry, s)
                if f"{s}-{entry['student']}" in shipped:
                    text += " shipped"
                line.append(text)
            t_body.append(line)
        parts.append(_table(t_header, t_body, [False] + [True] * (len(t_header) - 1)))
    for extra in sections.get("tables", []):
        parts.append(f"<h2>{escape(extra['title'])}</h2>")
        parts.append(_table(extra["header"], extra["rows"], [False] + [True] * (len(extra["header"]) - 1)))
    if sections.get("budgets"):
        parts.append("<h2>Quantization within an accuracy budget</h2>")
        parts += [f"<p>{escape(line)}</p>" for line in sections["budgets"]]
    parts.append("<h2>Plots</h2>")
    parts += [_image(path, title) for title, path in plots.items() if not title.startswith("confusion matrix")]
    for c in confusions:
        parts.append(f"<h2>Confusion matrix of the shipped model ({escape(c['run'])})</h2>")
        parts.append('<p class="note">rows: true label, columns: predicted label</p>')
        parts.append(
            _table(
                ["true \\ predicted", *c["labels"]],
                [[label, *map(str, row)] for label, row in zip(c["labels"], c["matrix"])],
                [False] + [True] * len(c["labels"]),
            )
        )
        parts.append(_image(plots[f"confusion matrix ({c['run']})"], f"confusion matrix ({c['run']})"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
