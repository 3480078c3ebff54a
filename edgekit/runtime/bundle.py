"""An exported bundle: model.onnx, manifest.json (inputs, labels, preprocessing) and tokenizer.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.artifacts import read_json
from edgekit.errors import EdgekitError

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def read_manifest(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.exists():
        raise EdgekitError(f"bundle {folder} does not exist; check the path")
    path = folder / MANIFEST
    if not path.is_file():
        raise EdgekitError(f"{folder} is not an exported bundle (no {MANIFEST}); run 'edgekit export' first")
    return read_json(path, "export the bundle again")


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


def open_session(model_path: Path, providers: Sequence[str] | None = None, threads: int = 0,
                 graph_optimization: str = "all"):
    import onnxruntime as ort

    model_path = Path(model_path)
    if not model_path.is_file():
        raise EdgekitError(f"model file {model_path} is missing; export the bundle again")
    try:
        return ort.InferenceSession(str(model_path), sess_options=session_options(threads, graph_optimization),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"onnxruntime cannot load {model_path}: {first[:300]}; the file may be corrupt or truncated, export it again") from None


class Encoder:
    """Raw examples (texts or images) to model inputs, with the same preprocessing as training."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = Path(folder)
        self.task = manifest["task"]
        self.preprocessing: dict[str, Any] = manifest["preprocessing"]
        self.input_names = [i["name"] for i in manifest["inputs"]]
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
            tokenizer.enable_padding(pad_id=int(self.preprocessing.get("pad_id", 0)),
                                     pad_token=self.preprocessing.get("pad_token", "[PAD]"))
            self._tokenizer = tokenizer
        return self._tokenizer

    def __call__(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        if self.task == "image-classification":
            from edgekit.data.images import preprocess_image

            p = self.preprocessing
            return {"pixel_values": np.stack([preprocess_image(x, int(p["image_size"]), p["mean"], p["std"]) for x in items])}
        encodings = self.tokenizer.encode_batch([str(t) for t in items])
        arrays = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}


class Bundle:
    """Load a bundle and turn raw examples into logits."""

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, threads: int = 0,
                 graph_optimization: str = "all", model_file: str = MODEL_FILE):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.task = self.manifest["task"]
        self.label_names: list[str] = self.manifest["label_names"]
        self.encode = Encoder(self.folder, self.manifest)
        self.session = open_session(self.folder / model_file, providers, threads, graph_optimization)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], inputs)[0]

    def predict(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        import sys

        from tqdm.auto import tqdm

        outputs = []
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc="evaluate", leave=False, disable=not progress, file=sys.stderr):
            outputs.append(self.run(self.encode(items[start:start + batch_size])))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.label_names)), np.float32)
