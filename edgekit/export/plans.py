"""Quantization plans for the accuracy budget (:mod:`edgekit.export.budget`): the weights a plan can
move to higher precision (``Weight``, one per quantized MatMul/Gemm/Conv weight or embedding table), the
graphs a plan builds (``build_mixed`` for dynamic int8/int4, ``StaticPlans`` for static int8), how a
candidate is scored (``LabelScore``: accuracy; ``GenerationScore``: BLEU of greedy generations), and the
``Planner`` that probes each weight's sensitivity and builds and scores the trials of a search."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

LADDERS = {"int4": ("int4", "int8", "fp32"), "int8": ("int8", "fp32")}


@dataclasses.dataclass
class Weight:
    """One quantized weight: the plan's key for it (the node that reads it; ``<graph file>:<node>`` when
    the bundle has several graphs), its op, its fp32 bytes, the preset's precision, and where it is."""

    node: str
    op: str
    nbytes: int
    base: str
    graph: str = ""  # the graph file
    name: str = ""  # the node's name in that graph


STATIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers static int8 plans: those with a weight


def quantized_weights(
    path: Path, precision: str, embeddings: str, static_fp32: list[str] | None = None
) -> list[Weight]:
    """The weights the preset quantizes in the fp32 graph at ``path``, in graph order: MatMul and Gemm
    nodes with a constant weight, and Gathers of a constant table (embeddings). Static int8
    (``static_fp32``: the nodes the preset keeps fp32 there, e.g. the first convolution): every
    Conv, Gemm and MatMul with a constant weight, but those."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) * 4 for t in graph.initializer}
    found = []
    for node in graph.node:
        if static_fp32 is not None:
            if node.op_type in STATIC_OPS and len(node.input) > 1 and node.input[1] in sizes:
                if node.name and node.name not in static_fp32:
                    found.append(Weight(node.name, node.op_type, sizes[node.input[1]], "int8", path.name, node.name))
            continue
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in sizes:
            base = precision if node.op_type == "MatMul" else "int8"  # Gemms are int8 under int4 too
            weight = node.input[1]
        elif node.op_type == "Gather" and node.input[0] in sizes:
            base, weight = (embeddings if embeddings in LADDERS else None), node.input[0]
        else:
            continue
        if base is not None and node.name:
            found.append(Weight(node.name, node.op_type, sizes[weight], base, path.name, node.name))
    return found


def build_mixed(prepared: Path, out: Path, plan: dict[str, str], quant: dict[str, Any], reduce_range: bool) -> None:
    """The graph with each weight of ``plan`` at its precision (the others fp32): int8 weights by
    dynamic quantization, then int4 ones block-wise (MatMulNBits / GatherBlockQuantized)."""
    from edgekit.export.graphs import quiet
    from edgekit.export.onnx import _scratch_directory, block_quantize, dynamic_int8

    int4 = [n for n, p in plan.items() if p == "int4"]
    # onnxruntime turns a Gemm into <name>_MatMul + Add before quantizing it: both names are given
    int8 = [name for n, p in plan.items() if p == "int8" for name in (n, f"{n}_MatMul")]
    prepared, out = Path(prepared).resolve(), Path(out).resolve()
    with quiet(), _scratch_directory():  # int8 first: after the block pass Gemms are split and stay fp32
        if int8:
            dynamic_int8(prepared, out, quant, reduce_range, ["MatMul", "Gather"], int8)
        block_quantize(out if int8 else prepared, out, quant, ("MatMul", "Gather"), nodes=int4)


class StaticPlans:
    """Static int8 graphs of one prepared graph for the budget: one calibration (its ranges cached in
    ``scratch``) for every probe and plan; plans get the output bias correction when the preset has it."""

    def __init__(
        self, prepared: Path, scratch: Path, quant: dict[str, Any], reduce_range: bool, calibration, kept_fp32
    ):
        self.prepared, self.quant, self.reduce_range = Path(prepared).resolve(), quant, reduce_range
        self.calibration, self.kept_fp32 = calibration, list(kept_fp32)
        self.cache = (Path(scratch) / f"budget-calibration-{self.prepared.stem}.json").resolve()

    def __call__(self, out: Path, plan: dict[str, str], probe: bool) -> None:
        from edgekit.export.graphs import quiet
        from edgekit.export.onnx import _scratch_directory, correct_output_bias, static_int8

        out = Path(out).resolve()
        if probe and not plan:  # a probe of another graph's layer: this one stays fp32
            out.write_bytes(self.prepared.read_bytes())
            return
        fp32 = self.kept_fp32 + [n for n, p in plan.items() if p == "fp32"]
        args = (self.prepared, out, self.quant, self.reduce_range, self.calibration)
        with quiet(), _scratch_directory():
            if probe:  # only the probed layer quantized
                static_int8(*args, only=list(plan), cache=self.cache)
            else:
                static_int8(*args, exclude=fp32, cache=self.cache)
                if self.quant["bias_correction"]:
                    correct_output_bias(self.prepared, out, self.calibration)


def _logits(path: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    from edgekit.runtime.bundle import open_session

    session = open_session(path, threads=0)
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in b.items() if k in names})[0] for b in batches])


def count_examples(batches: list[dict[str, np.ndarray]]) -> int:
    return sum(len(next(iter(b.values()))) for b in batches)


def first_examples(batches: list[dict[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    """The first ``limit`` examples of ``batches`` (the last batch cut to fit)."""
    kept, count = [], 0
    for batch in batches:
        if count >= limit:
            break
        size = len(next(iter(batch.values())))
        kept.append({k: v[: limit - count] for k, v in batch.items()} if count + size > limit else batch)
        count += min(size, limit - count)
    return kept


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(((reference.astype(np.float64) - other) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    return 200.0 if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


class LabelScore:
    """A classifier's budget metric: accuracy (0-1) of its one graph's logits on the validation split."""

    metric = "accuracy"

    def __init__(self, graph: str, batches: list[dict[str, np.ndarray]], labels: np.ndarray):
        self.graph, self.batches, self.labels = graph, batches, labels

    def outputs(self, folder: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
        return _logits(Path(folder) / self.graph, batches)

    def score(self, folder: Path) -> float:
        return _accuracy(self.outputs(folder, self.batches), self.labels)

    def score_on(self, session, folder: Path) -> float:
        """The same accuracy, of logits computed on a target (``session``: edgekit.targets)."""
        from edgekit.targets import validate_on

        return _accuracy(np.concatenate(validate_on(session, folder, self.batches)), self.labels)


class GenerationScore:
    """An encoder-decoder's budget metric: corpus BLEU (0-1, shown as 0-100 points) of the bundle's greedy
    generations against the validation references; probes compare teacher-forced decoder logits."""

    metric = "bleu"

    def __init__(self, batches, references: list[str], tokenizer, limit: int):
        self.batches, self.references, self.tokenizer, self.limit = batches, references, tokenizer, limit

    def outputs(self, folder: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
        from edgekit.runtime.bundle import Bundle

        bundle = Bundle(folder, verify=False)  # a scratch candidate (manifest, graphs)
        return np.concatenate([bundle.run(b).ravel() for b in batches])  # batches differ in target length

    def score(self, folder: Path) -> float:
        from edgekit.runtime.bundle import Bundle

        bundle = Bundle(folder, verify=False)
        return self._bleu([bundle.greedy(batch, self.limit) for batch in self.batches])

    def score_on(self, session, folder: Path) -> float:
        """The same BLEU, of greedy tokens generated on a target (``session``: edgekit.targets)."""
        from edgekit.targets import validate_on

        return self._bleu(validate_on(session, folder, self.batches, generate=self.limit))

    def _bleu(self, ids: list[np.ndarray]) -> float:
        from edgekit.metrics import generation_metrics

        decode = self.tokenizer.decode
        texts = [decode([int(t) for t in row[1:]], skip_special_tokens=True).strip() for batch in ids for row in batch]
        return generation_metrics(texts, self.references)["bleu"] / 100


class Planner:
    """One budget search over the bundle folder ``prepared`` (fp32 graphs, pre-processed for quantization)."""

    def __init__(self, prepared: Path, weights: list[Weight], build, scorer, new_folder):
        """``build(folder, plan, probe)`` writes every graph of ``plan`` (weight key -> precision) into
        ``folder``; ``probe``: the plan names the one weight a sensitivity probe quantizes. ``scorer``:
        LabelScore or GenerationScore; ``new_folder(name)``: an empty candidate bundle folder."""
        self.prepared, self.weights = Path(prepared), weights
        self.base = {w.node: w.base for w in weights}  # the preset's precision of each weight
        self.build, self.scorer, self.new_folder = build, scorer, new_folder
        self.fp32_score = scorer.score(prepared)
        self.trials: dict[int, dict[str, Any]] = {}

    def sensitivity(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Each weight's SNR (dB) of the outputs when only it is quantized, at each precision it can
        have below fp32 (int4 and int8 for an int4 weight), lowest first."""
        from tqdm.auto import tqdm

        reference = self.scorer.outputs(self.prepared, batches)
        probe = self.new_folder("budget-probe")
        probes = [(w, level) for w in self.weights for level in LADDERS[w.base][:-1]]
        ranked = []
        for w, level in tqdm(probes, desc="budget: sensitivity", unit="probe", leave=False):
            self.build(probe, {w.node: level}, True)
            snr = round(_snr_db(reference, self.scorer.outputs(probe, batches)), 2)
            ranked.append({"node": w.node, "precision": level, "snr_db": snr})
        shutil.rmtree(probe, ignore_errors=True)
        ranked.sort(key=lambda r: r["snr_db"])
        return ranked

    def moves(self, ranked: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(weight, precision) steps: the noisiest (weight, precision) pair is lifted one step first, so
        a weight int8 cannot save goes on to fp32 before a robust one leaves int4. A weight's second step
        never comes before its first."""
        current = dict(self.base)
        pending: dict[str, list[str]] = {}
        out = []

        def lift(node: str) -> None:
            ladder = LADDERS[self.base[node]]
            current[node] = ladder[ladder.index(current[node]) + 1]
            out.append((node, current[node]))
            if current[node] in pending.get(node, []):
                pending[node].remove(current[node])
                lift(node)

        for r in ranked:
            if r["precision"] == current[r["node"]]:
                lift(r["node"])
            else:  # its step from a precision the weight has not reached yet
                pending.setdefault(r["node"], []).append(r["precision"])
        return out

    def plan(self, moves: list[tuple[str, str]]) -> dict[str, str]:
        plan = dict(self.base)
        for node, precision in moves:
            plan[node] = precision
        return plan

    def float_share(self, plan: dict[str, str]) -> float:
        total = sum(w.nbytes for w in self.weights) or 1
        return sum(w.nbytes for w in self.weights if plan[w.node] == "fp32") / total

    def trial(self, k: int, moves: list[tuple[str, str]], first: Path | None = None) -> dict[str, Any]:
        """The drop (points) of the plan after the first ``k`` moves (``first``: the k=0 bundle as built)."""
        if k in self.trials:
            return self.trials[k]
        folder = first if first is not None and k == 0 else self.new_folder(f"budget-{k}")
        if folder != first:
            self.build(folder, self.plan(moves[:k]), False)
        score = self.scorer.score(folder)
        self.trials[k] = {
            "moves": k,
            "path": folder,
            "score": score,
            **({"accuracy": score} if self.scorer.metric == "accuracy" else {}),
            "drop_points": round((self.fp32_score - score) * 100, 4),
            "model_bytes": sum(p.stat().st_size for p in folder.glob("*.onnx")),
            "float_share": round(self.float_share(self.plan(moves[:k])), 4),
        }
        return self.trials[k]
