"""An exported bundle: the model file(s), manifest.json (inputs, labels, preprocessing) and tokenizer.json.

Formats: ``onnx`` (onnxruntime; torch-free, what runs on the device) and ``torchscript`` (needs torch).
Classifiers have one graph, ``model``; encoder-decoders (T5) have ``encoder`` and ``decoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import registry
from edgekit.artifacts import read_json
from edgekit.errors import EdgekitError
from edgekit.tasks import task_spec

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


MANIFEST_VERSIONS = (1, 2)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The bundle's manifest, checked against its schema: one line of refusal when it does not pass."""
    folder = Path(folder)
    if not folder.exists():
        raise EdgekitError(f"bundle {folder} does not exist; check the path")
    path = folder / MANIFEST
    if not path.is_file():
        raise EdgekitError(f"{folder} is not an exported bundle (no {MANIFEST}); run 'edgekit export' first")
    manifest = read_json(path, "export the bundle again")
    check_manifest(folder, manifest)
    return manifest


def _bad(folder: Path, what: str) -> EdgekitError:
    return EdgekitError(f"bundle {folder}: {MANIFEST} {what}; export the bundle again")


def check_manifest(folder: Path, manifest: Any) -> None:
    """Schema (versioned) and confinement: every file the manifest names is a plain relative name
    that resolves inside the bundle folder (no ../, no absolute path, no link out of it)."""
    if not isinstance(manifest, dict):
        raise _bad(folder, "is not a JSON object")
    version = manifest.get("schema_version", 1)
    if version not in MANIFEST_VERSIONS:
        raise _bad(
            folder,
            f"has schema_version {str(version)[:20]!r}, which this edgekit does not read "
            f"(it reads {', '.join(map(str, MANIFEST_VERSIONS))}); update edgekit or export again",
        )
    tasks = registry.names("task")
    if manifest.get("task") not in tasks:
        raise _bad(folder, f"has task {str(manifest.get('task'))[:40]!r}, not one of {', '.join(tasks)}")
    names = manifest.get("label_names")
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or (len(names) < task_spec(manifest["task"]).min_labels)
    ):
        raise _bad(folder, "has no list of label_names")
    if not isinstance(manifest.get("preprocessing"), dict):
        raise _bad(folder, "has no preprocessing section")
    if manifest.get("format", "onnx") not in registry.names("format"):
        raise _bad(
            folder, f"has format {str(manifest.get('format'))[:40]!r}, not one of {', '.join(registry.names('format'))}"
        )
    graphs = manifest.get("graphs")
    if graphs is not None and (
        not isinstance(graphs, list) or not graphs or not all(isinstance(g, dict) for g in graphs)
    ):
        raise _bad(folder, "has a graphs entry that is not a list of graphs")
    if graphs is None and not isinstance(manifest.get("inputs"), list):
        raise _bad(folder, "lists neither graphs nor inputs")
    root = folder.resolve()
    for graph in graphs_of(manifest):
        name = graph.get("file")
        if not isinstance(name, str) or not name or "\0" in name:
            raise _bad(folder, "names a model file that is not a file name")
        target = (folder / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not target.is_relative_to(root) or target == root:
            raise _bad(folder, f"names {name[:80]!r}, which is outside the bundle; a bundle only reads its own files")
        if not isinstance(graph.get("inputs"), list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in graph["inputs"]
        ):
            raise _bad(folder, f"has no inputs for {name[:80]!r}")


def graphs_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The model files of a bundle: [{name, file, inputs, outputs}] (older manifests: one model.onnx)."""
    if manifest.get("graphs"):
        return manifest["graphs"]
    return [
        {
            "name": "model",
            "file": manifest.get("model_file", MODEL_FILE),
            "inputs": manifest["inputs"],
            "outputs": manifest.get("outputs", [{"name": "logits"}]),
        }
    ]


def model_bytes(folder: Path, manifest: dict[str, Any]) -> int:
    return sum((Path(folder) / g["file"]).stat().st_size for g in graphs_of(manifest))


def session_options(threads: int = 0, graph_optimization: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if graph_optimization not in levels:
        raise EdgekitError(f"graph optimization {graph_optimization!r} is not one of {', '.join(GRAPH_LEVELS)}")
    options.graph_optimization_level = levels[graph_optimization]
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return options


def open_session(
    model_path: Path, providers: Sequence[str] | None = None, threads: int = 0, graph_optimization: str = "all"
):
    import onnxruntime as ort

    model_path = Path(model_path)
    if not model_path.is_file():
        raise EdgekitError(f"model file {model_path} is missing; export the bundle again")
    options = session_options(threads, graph_optimization)  # a bad setting is named as such, not as a corrupt file
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(
            f"onnxruntime cannot load {model_path}: {first[:300]}; the file may be corrupt or truncated, export it again"
        ) from None


class TorchScriptSession:
    """A TorchScript file behind onnxruntime's ``run(outputs, feeds)`` interface (needs torch)."""

    def __init__(self, path: Path, input_names: list[str], threads: int = 0, engine: str | None = None):
        try:
            import torch
        except ImportError:
            raise EdgekitError(
                "this bundle is TorchScript and needs torch: pip install torch "
                "(or export with --format onnx for a torch-free device)"
            ) from None
        import warnings

        path = Path(path)
        if not path.is_file():
            raise EdgekitError(f"model file {path} is missing; export the bundle again")
        if engine:
            if engine not in torch.backends.quantized.supported_engines:
                raise EdgekitError(
                    f"this torch has no {engine!r} quantized engine (it has "
                    f"{', '.join(torch.backends.quantized.supported_engines)}); export for this CPU's engine"
                )
            torch.backends.quantized.engine = engine
        if threads:
            torch.set_num_threads(int(threads))
        self.input_names = list(input_names)
        self._torch = torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(
                f"torch cannot load {path}: {first[:300]}; the file may be corrupt or truncated, export it again"
            ) from None

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names])
        return [out.float().numpy()]

    def get_providers(self) -> list[str]:
        return [f"TorchScript-CPU ({self._torch.backends.quantized.engine})"]


def open_graph(
    folder: Path,
    manifest: dict[str, Any],
    graph: dict[str, Any],
    providers: Sequence[str] | None = None,
    threads: int = 0,
    graph_optimization: str = "all",
):
    fmt = manifest.get("format", "onnx")
    runtime = registry.get("format", fmt, option="bundle format").can("runtime")
    if runtime == "torchscript":
        engine = (manifest.get("quantization") or {}).get("engine")
        return TorchScriptSession(Path(folder) / graph["file"], [i["name"] for i in graph["inputs"]], threads, engine)
    return open_session(Path(folder) / graph["file"], providers, threads, graph_optimization)


def check_integrity(folder: Path, manifest: dict[str, Any]) -> None:
    """Model files must be the ones the export wrote (catches truncated copies before a runtime does)."""
    from edgekit.artifacts import sha256_file

    expected = manifest.get("sha256")
    for graph in graphs_of(manifest):
        path = Path(folder) / graph["file"]
        if not path.is_file():
            raise EdgekitError(f"model file {path} is missing; export the bundle again")
        want = graph.get("sha256") or (expected if isinstance(expected, str) else None)
        if not isinstance(want, str) or len(want) != 64:
            raise EdgekitError(
                f"bundle {folder}: {MANIFEST} has no sha256 for {graph['file']}; a bundle loads only "
                "when every model file has one: export it again"
            )
        if sha256_file(path) != want:
            raise EdgekitError(
                f"{path} does not match the sha256 in its manifest (corrupt, truncated or replaced); "
                "export the bundle again or copy it whole"
            )


class Encoder:
    """Raw examples (texts or images) to model inputs, with the same preprocessing as training."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = Path(folder)
        self.task = manifest["task"]
        self.preprocessing: dict[str, Any] = manifest["preprocessing"]
        self.spec = task_spec(self.task)
        self.input_names = [i["name"] for i in graphs_of(manifest)[0]["inputs"]]
        if self.spec.generates:  # the encoder's inputs; the decoder's come from generation
            self.input_names = ["input_ids", "attention_mask"]
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = self.folder / TOKENIZER_FILE
            if not path.is_file():
                raise EdgekitError(f"bundle {self.folder} has no {TOKENIZER_FILE}; export it again")
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.enable_truncation(int(self.preprocessing["max_length"]))
            tokenizer.enable_padding(
                pad_id=int(self.preprocessing.get("pad_id", 0)), pad_token=self.preprocessing.get("pad_token", "[PAD]")
            )
            self._tokenizer = tokenizer
        return self._tokenizer

    def __call__(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        if self.spec.modality == "image":
            from edgekit.data.images import preprocess_image

            p = self.preprocessing
            return {
                "pixel_values": np.stack(
                    [preprocess_image(x, int(p["image_size"]), p["mean"], p["std"]) for x in items]
                )
            }
        encodings = self.tokenizer.encode_batch([str(t) for t in items])
        arrays = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}


class Bundle:
    """Load a bundle and turn raw examples into logits (classifiers) or generated text (encoder-decoders)."""

    def __init__(
        self,
        folder: str | Path,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        graph_optimization: str = "all",
        verify: bool = True,
    ):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.task = self.manifest["task"]
        self.format = self.manifest.get("format", "onnx")
        self.label_names: list[str] = self.manifest["label_names"]
        self.encode = Encoder(self.folder, self.manifest)
        if verify:
            check_integrity(self.folder, self.manifest)
        self.sessions = {
            g["name"]: open_graph(self.folder, self.manifest, g, providers, threads, graph_optimization)
            for g in graphs_of(self.manifest)
        }
        self.session = next(iter(self.sessions.values()))

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits: of the classifier, or (encoder-decoders) of the decoder for given ``decoder_input_ids``."""
        if not self.encode.spec.generates:
            return self.session.run(["logits"], inputs)[0]
        hidden = self.sessions["encoder"].run(
            ["hidden"], {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        )[0]
        return self.decode_step(inputs["decoder_input_ids"], hidden, inputs["attention_mask"])

    def decode_step(self, decoder_ids: np.ndarray, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.sessions["decoder"].run(
            ["logits"], {"decoder_input_ids": decoder_ids, "hidden": hidden, "attention_mask": mask}
        )[0]

    def predict(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        import sys

        from tqdm.auto import tqdm

        outputs = []
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc="evaluate", leave=False, disable=not progress, file=sys.stderr):
            outputs.append(self.run(self.encode(items[start : start + batch_size])))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.label_names)), np.float32)

    def generate(
        self, items: Sequence[str], batch_size: int = 16, max_new_tokens: int | None = None, progress: bool = False
    ) -> list[str]:
        """Greedy decoding with the exported encoder and decoder (no KV cache: each step re-runs the decoder)."""
        import sys

        from tqdm.auto import tqdm

        p = self.manifest["preprocessing"]
        start_id, eos = int(p["decoder_start_id"]), p.get("eos_id")
        limit = int(max_new_tokens or p.get("max_target_length", 128))
        texts: list[str] = []
        for start in tqdm(
            range(0, len(items), batch_size), desc="generate", leave=False, disable=not progress, file=sys.stderr
        ):
            feeds = self.encode(items[start : start + batch_size])
            hidden = self.sessions["encoder"].run(["hidden"], feeds)[0]
            ids = np.full((len(hidden), 1), start_id, dtype=np.int64)
            done = np.zeros(len(hidden), dtype=bool)
            for _ in range(limit):
                step = self.decode_step(ids, hidden, feeds["attention_mask"])[:, -1].argmax(-1)
                step = np.where(done, int(p.get("pad_id", 0)), step)
                ids = np.concatenate([ids, step[:, None]], axis=1)
                done |= step == eos if eos is not None else False
                if done.all():
                    break
            texts += [
                self.encode.tokenizer.decode([int(t) for t in row[1:]], skip_special_tokens=True).strip() for row in ids
            ]
        return texts
