"""Read labelled text from CSV, TSV and JSONL files (standard library only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from edgekit.errors import EdgekitError

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".jsonl": None, ".json": None}


def read_table(path: str | Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Return the texts and the labels (as names) of a CSV/TSV/JSONL file."""
    path = Path(path)
    rows = _rows(path)
    columns = list(rows[0].keys())
    for column, option in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in columns:
            raise EdgekitError(
                f"data file {path} has no column {column!r} (columns: {', '.join(map(str, columns))}); set {option}"
            )
    texts, labels = [], []
    for number, row in enumerate(rows, start=2):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise EdgekitError(f"data file {path}, row {number}: missing {text_column!r} or {label_column!r}")
        for column, value in ((text_column, text), (label_column, label)):
            if isinstance(value, (list, dict)):
                raise EdgekitError(
                    f"data file {path}, row {number}: {column!r} is a JSON {type(value).__name__}; "
                    "it must be text (or a number for a label)"
                )
        texts.append(str(text))
        labels.append(str(label).strip())
    return texts, labels


def _rows(path: Path) -> list[dict]:
    """The rows of a CSV/TSV/JSONL file, or one clear line for a path that is not one."""
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise EdgekitError(f"data file {path}: unknown format {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    rows = _decoded(
        path,
        lambda: _read_jsonl(path) if TABLE_SUFFIXES[suffix] is None else _read_delimited(path, TABLE_SUFFIXES[suffix]),
    )
    if not rows:
        raise EdgekitError(f"data file {path} has no examples; give a file with a header and at least one row")
    return rows


def _check_file(path: Path) -> None:
    if not path.exists():
        raise EdgekitError(f"data file {path} does not exist; check the path")
    if path.is_dir():
        raise EdgekitError(f"{path} is a folder; text data must be a CSV, TSV or JSONL file")
    if not path.is_file():  # a FIFO or a device would block the read forever
        raise EdgekitError(f"data file {path} is not a regular file (a pipe or device?); give a CSV, TSV or JSONL file")


def _decoded(path: Path, read):
    try:
        return read()
    except UnicodeDecodeError as exc:
        raise EdgekitError(
            f"data file {path} is not UTF-8 text (byte {exc.start}); convert it, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
        ) from None


def read_texts(path: str | Path, text_column: str) -> list[str]:
    """The texts of an unlabeled file: ``.txt`` holds one text per line (no header); a CSV/TSV/JSONL
    file, its ``text_column`` (any label column is not read)."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() == ".txt":
        with open(path, encoding="utf-8-sig") as handle:
            texts = _decoded(path, lambda: [line.rstrip("\r\n") for line in handle])
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise EdgekitError(f"unlabeled file {path} has no texts; give one text per line")
        return texts
    rows = _rows(path)
    columns = list(rows[0].keys())
    if text_column not in columns:
        raise EdgekitError(
            f"unlabeled file {path} has no column {text_column!r} (columns: {', '.join(map(str, columns))}); "
            "it needs the texts: set --text-column, or give a .txt file with one text per line"
        )
    texts = []
    for number, row in enumerate(rows, start=2):
        text = row.get(text_column)
        if isinstance(text, (list, dict)):
            raise EdgekitError(
                f"unlabeled file {path}, row {number}: {text_column!r} is a JSON {type(text).__name__}; it must be text"
            )
        if text is not None and str(text).strip():
            texts.append(str(text))
    if not texts:
        raise EdgekitError(f"unlabeled file {path} has no texts in column {text_column!r}")
    return texts


def _read_delimited(path: Path, delimiter: str) -> list[dict]:
    csv.field_size_limit(1 << 24)
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a UTF-8 BOM is not part of the first column
        reader = csv.DictReader(
            handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        )
        try:
            return [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
        except csv.Error as exc:
            raise EdgekitError(f"data file {path} is not valid {'CSV' if delimiter == ',' else 'TSV'}: {exc}") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgekitError(f"data file {path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EdgekitError(f"data file {path}, line {number}: each line must be a JSON object")
            rows.append(row)
    return rows
