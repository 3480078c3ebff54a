"""An exported bundle: the model file(s), manifest.json (inputs, labels, preprocessing) and tokenizer.json.

Formats (registry ``format`` entries): ``onnx`` (onnxruntime; torch-free, what runs on the device),
``torchscript`` (needs torch) and ``executorch`` (``.pte``, ExecuTorch's runtime: :mod:`edgekit.runtime.executorch`).
Classifiers have one graph, ``model``; encoder-decoders (T5) have ``encoder`` and ``decoder``, or (ONNX
exports with a KV cache) ``encoder``, ``cross_kv`` and ``decoder_step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import registry
from edgekit.errors import EdgekitError
from edgekit.records import MANIFEST, MODEL_FILE, Manifest, ModelFile, read_manifest
from edgekit.tasks import task_spec

__all__ = ["MANIFEST", "MODEL_FILE", "TOKENIZER_FILE", "Bundle", "Encoder", "Manifest", "read_manifest"]

TOKENIZER_FILE = "tokenizer.json"

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def default_threads() -> int:
    """The thread count a runtime gets when none is asked for: ``OMP_NUM_THREADS`` where it is set to a
    positive number (PyTorch honours it too, so eager and exported models are compared on the same
    cores; two jobs sharing a machine each get their share instead of spinning on each other's), else
    0, the runtime's own default of every core."""
    import os

    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 0


def session_options(threads: int = 0, graph_optimization: str = "all", spinning: bool = True):
    """onnxruntime options: the optimization level, intra-op threads (default: OMP_NUM_THREADS), and
    whether idle worker threads spin after a run. A graph run once before another graph's loop (a T5
    encoder before the decoder steps) must not spin: its threads would hold the cores the next graph
    needs (measured: the first ~10 cached int8 decoder steps of a T5-small ran at 2x their time)."""
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
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def open_session(
    model_path: Path,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    graph_optimization: str = "all",
    spinning: bool = True,
):
    import onnxruntime as ort

    model_path = Path(model_path)
    if not model_path.is_file():
        raise EdgekitError(f"model file {model_path} is missing; export the bundle again")
    # a bad setting is named as such, not as a corrupt file
    options = session_options(threads, graph_optimization, spinning)
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

    @classmethod
    def open(cls, path: Path, input_names: list[str], threads: int, manifest: Manifest) -> TorchScriptSession:
        return cls(path, input_names, threads, (manifest.quantization or {}).get("engine"))


# the graph of a multi-graph bundle that runs once per generated token
LOOPED_GRAPHS = ("decoder_step", "decoder")


def open_graph(
    folder: Path,
    manifest: Manifest,
    graph: ModelFile,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    graph_optimization: str = "all",
):
    """The session that runs ``graph``: onnxruntime's, or the one the format entry names (``session``).
    In a bundle of several graphs only the one run in a loop (the decoder) keeps spinning threads."""
    session = registry.get("format", manifest.format, option="bundle format").can("session")
    if session is None:
        spinning = len(manifest.graphs) == 1 or graph.name in LOOPED_GRAPHS
        return open_session(Path(folder) / graph.file, providers, threads, graph_optimization, spinning)
    return registry.resolve(session).open(Path(folder) / graph.file, graph.input_names, threads, manifest)


def check_integrity(folder: Path, manifest: Manifest) -> None:
    """Model files must be the ones the export wrote (catches truncated copies before a runtime does)."""
    from edgekit.artifacts import sha256_file

    for graph in manifest.graphs:
        path = Path(folder) / graph.file
        if not path.is_file():
            raise EdgekitError(f"model file {path} is missing; export the bundle again")
        want = graph.sha256 or manifest.sha256
        if not isinstance(want, str) or len(want) != 64:
            raise EdgekitError(
                f"bundle {folder}: {MANIFEST} has no sha256 for {graph.file}; a bundle loads only "
                "when every model file has one: export it again"
            )
        if sha256_file(path) != want:
            raise EdgekitError(
                f"{path} does not match the sha256 in its manifest (corrupt, truncated or replaced); "
                "export the bundle again or copy it whole"
            )


class Encoder:
    """Raw examples (texts or images) to model inputs, with the same preprocessing as training."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = Path(folder)
        self.task = manifest.task
        self.preprocessing: dict[str, Any] = manifest.preprocessing
        self.spec = task_spec(self.task)
        self.input_names = manifest.graphs[0].input_names
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
        self.task = self.manifest.task
        self.format = self.manifest.format
        self.label_names: list[str] = self.manifest.label_names
        self.encode = Encoder(self.folder, self.manifest)
        if verify:
            check_integrity(self.folder, self.manifest)
        self.sessions = {
            g.name: open_graph(self.folder, self.manifest, g, providers, threads, graph_optimization)
            for g in self.manifest.graphs
        }
        self.session = next(iter(self.sessions.values()))
        if self.cached and "past" in self._graph("decoder_step").input_names:
            raise EdgekitError(
                f"{self.folder} holds a decoder step with one stacked cache tensor (edgekit before per-layer "
                "keys and values); export the bundle again"
            )

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits: of the classifier, or (encoder-decoders) of the decoder for given ``decoder_input_ids``
        (teacher forcing: every position's logits, through the cache one position at a time when the
        bundle has one)."""
        if not self.encode.spec.generates:
            return self.session.run(["logits"], inputs)[0]
        targets = inputs["decoder_input_ids"]
        state = self.begin(inputs)
        if not self.cached:
            return self.decode_step(targets, state["hidden"], state["mask"])
        return np.concatenate([self.advance(state, targets[:, i : i + 1])[:, None] for i in range(targets.shape[1])], 1)

    @property
    def cached(self) -> bool:
        """Whether this encoder-decoder bundle decodes with a KV cache (a ``decoder_step`` graph)."""
        return "decoder_step" in self.sessions

    def decode_step(self, decoder_ids: np.ndarray, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits of every position of ``decoder_ids`` from the cacheless ``decoder`` graph."""
        return self.sessions["decoder"].run(
            ["logits"], {"decoder_input_ids": decoder_ids, "hidden": hidden, "attention_mask": mask}
        )[0]

    def begin(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Encode a batch of sources for decoding: the encoder's states (and the cross-attention cache).
        ``feeds`` may hold more than the encoder reads (e.g. a parity batch's decoder_input_ids)."""
        hidden = self.sessions["encoder"].run(["hidden"], {k: feeds[k] for k in self.encode.input_names})[0]
        state: dict[str, Any] = {"hidden": hidden, "mask": feeds["attention_mask"], "ids": None}
        if self.cached:
            names = self._graph("cross_kv").outputs
            cross = self.sessions["cross_kv"].run([o["name"] for o in names], {"hidden": hidden})
            state["cross"] = {o["name"]: value for o, value in zip(names, cross)}
            _, heads, _, d_kv = cross[0].shape
            state["past"] = {
                "past" + name[len("cross") :]: np.zeros((len(hidden), heads, 0, d_kv), dtype=np.float32)
                for name in state["cross"]
            }
        return state

    def _graph(self, name: str) -> ModelFile:
        return next(g for g in self.manifest.graphs if g.name == name)

    def advance(self, state: dict[str, Any], ids: np.ndarray) -> np.ndarray:
        """Feed the next decoder token of each row (batch, 1); the logits (batch, vocab) that follow it.
        With the cache this runs one position (the per-layer keys and values grown by it); without, the
        whole decoder over every token so far."""
        if self.cached:
            present = ["present" + name[len("past") :] for name in state["past"]]
            logits, *grown = self.sessions["decoder_step"].run(
                ["logits", *present],
                {"decoder_input_ids": ids, "attention_mask": state["mask"], **state["past"], **state["cross"]},
            )
            state["past"] = dict(zip(state["past"], grown))
            return logits[:, -1]
        state["ids"] = ids if state["ids"] is None else np.concatenate([state["ids"], ids], axis=1)
        return self.decode_step(state["ids"], state["hidden"], state["mask"])[:, -1]

    def greedy(self, feeds: dict[str, np.ndarray], limit: int) -> np.ndarray:
        """Greedy token ids (batch, 1 + up to ``limit``), the decoder start token first; rows that ended
        (EOS) are padded until every row has."""
        p = self.manifest.preprocessing
        start_id, eos, pad = int(p["decoder_start_id"]), p.get("eos_id"), int(p.get("pad_id", 0))
        state = self.begin(feeds)
        rows = len(state["hidden"])
        ids = np.full((rows, 1), start_id, dtype=np.int64)
        done = np.zeros(rows, dtype=bool)
        for _ in range(limit):
            step = self.advance(state, ids[:, -1:]).argmax(-1)
            step = np.where(done, pad, step)
            ids = np.concatenate([ids, step[:, None]], axis=1)
            done |= step == eos if eos is not None else False
            if done.all():
                break
        return ids

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
        """Greedy decoding with the exported graphs: one decoder step per token with the KV cache, or
        (bundles without one) the whole decoder re-run for each token."""
        import sys

        from tqdm.auto import tqdm

        limit = int(max_new_tokens or self.manifest.preprocessing.get("max_target_length", 128))
        texts: list[str] = []
        for start in tqdm(
            range(0, len(items), batch_size), desc="generate", leave=False, disable=not progress, file=sys.stderr
        ):
            ids = self.greedy(self.encode(items[start : start + batch_size]), limit)
            texts += [
                self.encode.tokenizer.decode([int(t) for t in row[1:]], skip_special_tokens=True).strip() for row in ids
            ]
        return texts
