"""Typed records of the JSON files one package writes and another reads.

- :class:`StageMeta`: a stage folder's ``meta.json`` (stage, config, metrics, parameters, lineage,
  files), written by :func:`write_meta` and read by :func:`read_meta` / :meth:`StageMeta.read`.
- :class:`Manifest` (with its :class:`ModelFile` entries): a bundle's ``manifest.json``, written by
  :meth:`Manifest.write` and read by :meth:`Manifest.read`.

Each has a schema version, is validated on read (a bad file is one line naming the field and the
fix) and is written by one method. Sections whose keys depend on the stage, the task or the format
(``config``, ``metrics``, ``preprocessing``, ``quantization``, ``parity``) stay mappings behind a
named attribute; other top-level keys a stage adds (a distill stage's ``teacher`` and ``links``, a
prune stage's ``parameters_before``) are its ``details``, written beside the common fields so the
files read as before. Presets and profiles, YAML files a user may write, are records of their own
loaders (:class:`edgekit.export.presets.Preset`, :class:`edgekit.bench.profiles.Profile`).

Standard library and the core only: the device path reads manifests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgekit import __version__, registry
from edgekit.artifacts import META_FILE, check_fields, file_table, read_json, write_json_atomic
from edgekit.errors import EdgekitError
from edgekit.tasks import task_spec

META_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
MANIFEST_VERSIONS = (1, 2)  # 1: one model.onnx named by top-level inputs/outputs/model_file
MODEL_FILE = "model.onnx"


# --------------------------------------------------------------------------- meta.json


@dataclass(frozen=True)
class Lineage:
    """The stage a folder was made from: where it was, what it was, and its fingerprint."""

    path: str
    stage: str | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, folder: Path) -> Lineage:
        meta = read_meta(folder) if (Path(folder) / META_FILE).is_file() else None
        return cls(str(Path(folder).resolve()), meta.stage if meta else None, meta.fingerprint if meta else None)

    @classmethod
    def from_json(cls, data: Any) -> Lineage | None:
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return None
        return cls(data["path"], data.get("stage"), data.get("fingerprint"))

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "stage": self.stage, "fingerprint": self.fingerprint}


@dataclass
class StageMeta:
    """What a finished stage folder holds and how it was made (``meta.json``)."""

    stage: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    parameters: int | None = None
    fingerprint: str | None = None
    parent: Lineage | None = None
    producer: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    size_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = META_VERSION
    path: Path | None = field(default=None, compare=False)  # the folder it was read from or written to

    @classmethod
    def read(cls, folder: Path) -> StageMeta:
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise EdgekitError(
                f"{folder} is not an edgekit stage folder (no {META_FILE}); pass a folder written by an edgekit command"
            )
        return cls.from_json(read_json(path, "re-run the stage that wrote it"), path)

    @classmethod
    def from_json(cls, data: Any, path: Path) -> StageMeta:
        check_fields(data, {"stage": str, "config": dict, "metrics": dict}, path)
        parameters = data.get("parameters")
        if parameters is not None and (isinstance(parameters, bool) or not isinstance(parameters, int)):
            raise EdgekitError(f"{path}: parameters must be a whole number; re-run the stage that wrote it")
        version = data.get("schema_version", META_VERSION)
        if version != META_VERSION:
            raise EdgekitError(
                f"{path}: schema_version {str(version)[:20]!r} is not one this edgekit reads ({META_VERSION}); "
                "update edgekit or re-run the stage that wrote it"
            )
        known = {f.name for f in fields(cls)} - {"details", "path", "parent"}
        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        return cls(
            stage=data["stage"],
            config=data["config"],
            metrics=data["metrics"],
            parameters=parameters,
            fingerprint=data.get("fingerprint") if isinstance(data.get("fingerprint"), str) else None,
            parent=Lineage.from_json(data.get("parent")),
            producer=data.get("producer") if isinstance(data.get("producer"), dict) else {},
            files=files,
            size_bytes=int(data.get("size_bytes") or 0),
            details={k: v for k, v in data.items() if k not in known and k != "parent"},
            path=Path(path).parent,
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "schema_version": self.schema_version,
            "stage": self.stage,
            "producer": self.producer,
            "parent": self.parent.to_json() if self.parent else None,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "metrics": self.metrics,
            "parameters": self.parameters,
            "files": self.files,
        }
        data.update(self.details)
        data["size_bytes"] = self.size_bytes
        return data

    def write(self, folder: Path) -> StageMeta:
        """The one writer of meta.json: the file table and size are taken from the folder now."""
        folder = Path(folder)
        self.files = file_table(folder)
        self.size_bytes = sum(entry["bytes"] for entry in self.files.values())
        write_json_atomic(folder / META_FILE, self.to_json())
        self.path = folder
        return self


def write_meta(
    folder: Path,
    *,
    stage: str,
    config: dict[str, Any],
    parent: Path | None = None,
    metrics: dict[str, Any] | None = None,
    parameters: int | None = None,
    extra: dict[str, Any] | None = None,
    fingerprint_value: str | None = None,
) -> StageMeta:
    """Write ``meta.json`` describing a finished stage folder and return it."""
    return StageMeta(
        stage=stage,
        config=config,
        metrics=metrics or {},
        parameters=parameters,
        fingerprint=fingerprint_value,
        parent=None if parent is None else Lineage.of(Path(parent)),
        producer={"tool": "edgekit", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        details=dict(extra or {}),
    ).write(folder)


def read_meta(folder: Path) -> StageMeta:
    return StageMeta.read(folder)


# --------------------------------------------------------------------------- manifest.json


def _bad(folder: Path, what: str) -> EdgekitError:
    return EdgekitError(f"bundle {folder}: {MANIFEST} {what}; export the bundle again")


@dataclass
class ModelFile:
    """One model file of a bundle: classifiers have ``model``; encoder-decoders ``encoder`` and ``decoder``."""

    name: str
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    sha256: str | None = None
    exporter: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> ModelFile:
        name = data.get("file")
        if not isinstance(name, str) or not name or "\0" in name:
            raise _bad(folder, "names a model file that is not a file name")
        root = Path(folder).resolve()
        target = (Path(folder) / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not target.is_relative_to(root) or target == root:
            raise _bad(folder, f"names {name[:80]!r}, which is outside the bundle; a bundle only reads its own files")
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs
        ):
            raise _bad(folder, f"has no inputs for {name[:80]!r}")
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            outputs = [{"name": "logits"}]
        sha = data.get("sha256")
        exporter = data.get("exporter")
        return cls(
            name=str(data.get("name") or "model"),
            file=name,
            inputs=inputs,
            outputs=outputs,
            sha256=sha if isinstance(sha, str) else None,
            exporter=exporter if isinstance(exporter, str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "file": self.file, "inputs": self.inputs, "outputs": self.outputs}
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        if self.exporter is not None:
            data["exporter"] = self.exporter
        return data


@dataclass
class Manifest:
    """A bundle's ``manifest.json``: what the files are, how inputs are made, and how it was checked."""

    task: str
    label_names: list[str]
    preprocessing: dict[str, Any]
    graphs: list[ModelFile]
    format: str = "onnx"
    precision: str | None = None
    preset: str | None = None
    opset: int | None = None
    arch: str | None = None
    quantization: dict[str, Any] | None = None
    graph_optimization: dict[str, Any] | None = None
    parameters: int | None = None
    sizes: dict[str, Any] = field(default_factory=dict)  # model_bytes, fp32_model_bytes, breakdown
    sha256: str | None = None  # of the one model file (single-graph bundles)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # keys a newer edgekit added: kept, written back
    schema_version: int = MANIFEST_VERSION

    @property
    def model_file(self) -> str:
        return self.graphs[0].file

    @property
    def quant_mode(self) -> str:
        return (self.quantization or {}).get("mode", "none")

    def model_bytes(self, folder: Path) -> int:
        return sum((Path(folder) / g.file).stat().st_size for g in self.graphs)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The bundle's manifest, checked against its schema: one line of refusal when it does not pass."""
        folder = Path(folder)
        if not folder.exists():
            raise EdgekitError(f"bundle {folder} does not exist; check the path")
        path = folder / MANIFEST
        if not path.is_file():
            raise EdgekitError(f"{folder} is not an exported bundle (no {MANIFEST}); run 'edgekit export' first")
        return cls.from_json(read_json(path, "export the bundle again"), folder)

    @classmethod
    def from_json(cls, data: Any, folder: Path) -> Manifest:
        """Schema (versioned) and confinement: every file the manifest names is a plain relative name
        that resolves inside the bundle folder (no ../, no absolute path, no link out of it)."""
        if not isinstance(data, dict):
            raise _bad(folder, "is not a JSON object")
        version = data.get("schema_version", 1)
        if version not in MANIFEST_VERSIONS:
            raise _bad(
                folder,
                f"has schema_version {str(version)[:20]!r}, which this edgekit does not read "
                f"(it reads {', '.join(map(str, MANIFEST_VERSIONS))}); update edgekit or export again",
            )
        tasks = registry.names("task")
        if data.get("task") not in tasks:
            raise _bad(folder, f"has task {str(data.get('task'))[:40]!r}, not one of {', '.join(tasks)}")
        names = data.get("label_names")
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or len(names) < task_spec(data["task"]).min_labels
        ):
            raise _bad(folder, "has no list of label_names")
        if not isinstance(data.get("preprocessing"), dict):
            raise _bad(folder, "has no preprocessing section")
        formats = registry.names("format")
        if data.get("format", "onnx") not in formats:
            raise _bad(folder, f"has format {str(data.get('format'))[:40]!r}, not one of {', '.join(formats)}")
        graphs = data.get("graphs")
        if graphs is not None and (
            not isinstance(graphs, list) or not graphs or not all(isinstance(g, dict) for g in graphs)
        ):
            raise _bad(folder, "has a graphs entry that is not a list of graphs")
        if graphs is None:  # schema 1: one model file named at the top level
            if not isinstance(data.get("inputs"), list):
                raise _bad(folder, "lists neither graphs nor inputs")
            graphs = [
                {
                    "name": "model",
                    "file": data.get("model_file", MODEL_FILE),
                    "inputs": data["inputs"],
                    "outputs": data.get("outputs"),
                    "sha256": data.get("sha256"),
                }
            ]
        typed = {f.name for f in fields(cls)} | {"inputs", "outputs", "model_file"}
        return cls(
            task=data["task"],
            label_names=names,
            preprocessing=data["preprocessing"],
            graphs=[ModelFile.from_json(g, folder) for g in graphs],
            format=data.get("format", "onnx"),
            precision=_str(data.get("precision")),
            preset=_str(data.get("preset")),
            opset=data.get("opset") if isinstance(data.get("opset"), int) else None,
            arch=_str(data.get("arch")),
            quantization=data.get("quantization") if isinstance(data.get("quantization"), dict) else None,
            graph_optimization=_dict_or_none(data.get("graph_optimization")),
            parameters=data.get("parameters") if isinstance(data.get("parameters"), int) else None,
            sizes=data.get("sizes") if isinstance(data.get("sizes"), dict) else {},
            sha256=_str(data.get("sha256")),
            parity=data.get("parity") if isinstance(data.get("parity"), dict) else {},
            lineage=data.get("lineage") if isinstance(data.get("lineage"), list) else [],
            versions=data.get("versions") if isinstance(data.get("versions"), dict) else {},
            details={k: v for k, v in data.items() if k not in typed},
            schema_version=version,
        )

    def to_json(self) -> dict[str, Any]:
        graphs = [g.to_json() for g in self.graphs]
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "format": self.format,
            "precision": self.precision,
            "preset": self.preset,
            "opset": self.opset,
            "task": self.task,
            "arch": self.arch,
            "label_names": self.label_names,
            "preprocessing": self.preprocessing,
            "graphs": graphs,
            # schema 1 readers (edgekit before graphs) find the first model's inputs and the last one's outputs
            "inputs": graphs[0]["inputs"],
            "outputs": graphs[-1]["outputs"],
            "model_file": graphs[0]["file"],
            "quantization": self.quantization,
            "graph_optimization": self.graph_optimization,
            "parameters": self.parameters,
            "sizes": self.sizes,
            "sha256": self.sha256,
            "parity": self.parity,
            "lineage": self.lineage,
            "versions": self.versions,
        }
        data.update(self.details)
        return data

    def write(self, folder: Path) -> Manifest:
        """The one writer of manifest.json."""
        write_json_atomic(Path(folder) / MANIFEST, self.to_json())
        return self


def read_manifest(folder: Path) -> Manifest:
    return Manifest.read(folder)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
