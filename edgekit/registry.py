"""One lazy registry for everything that plugs into edgekit.

An entry has a kind (``task``, ``strategy``, ``loss``, ``pruner``, ...), a name, and a target: a
dotted ``module:attribute`` string imported on first use, so listing names never imports torch.
It also names the optional extra its target needs (a missing extra is one line with the
``pip install`` to run) and its capabilities, e.g. which model families a pruner handles.

CLI choices, ``--help`` text and recipe validation read :func:`names`; the built-in entries are
listed once, at the bottom of this module. Device profiles and export presets are the YAML files
shipped in ``devices/`` and ``export/`` (a file dropped there is an entry).

Adding a plugin: write its file, then one ``register(...)`` line here (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

# The modules an extra brings (checked with find_spec, nothing imported).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": (
        "torch",
        "torchvision",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
        "safetensors",
        "onnx",
        "onnxscript",
        "sklearn",
        "sacrebleu",
    ),
    "report": ("matplotlib",),
    "executorch": ("executorch",),
}
# What a kind is called in messages.
KIND_WORDS = {
    "task": "task",
    "strategy": "distillation strategy",
    "sweep-strategy": "sweep strategy",
    "loss": "logit loss",
    "feature-kd": "intermediate-layer KD kind",
    "pruner": "pruning method",
    "quant-mode": "quantization mode",
    "precision": "precision",
    "format": "export format",
    "runner": "bench runner",
    "profile": "device profile",
    "preset": "export preset",
}
_FILE_KINDS = {"profile": "devices", "preset": "export"}  # entries that are shipped YAML files


class MissingExtra(EdgekitError):
    """An optional extra is not installed; the message says what to ``pip install``."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: str | None = None  # "package.module:attribute", imported by load()
    extra: str | None = None
    summary: str = ""
    capabilities: Mapping[str, Any] = field(default_factory=dict)

    def can(self, capability: str, default: Any = None) -> Any:
        return self.capabilities.get(capability, default)

    def load(self) -> Any:
        """The target object, importing its module now (the extra checked first)."""
        if self.target is None:
            raise EdgekitError(f"{KIND_WORDS.get(self.kind, self.kind)} {self.name!r} has no implementation to load")
        require_extra(self.extra, f"the {KIND_WORDS.get(self.kind, self.kind)} {self.name!r}")
        return resolve(self.target)


def resolve(target: str) -> Any:
    """The object a dotted ``package.module:attribute.attribute`` string names, importing the module now."""
    module, _, attribute = target.partition(":")
    value = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        value = getattr(value, part)
    return value


_ENTRIES: dict[str, dict[str, Entry]] = {}


def register(
    kind: str, name: str, target: str | None = None, *, extra: str | None = None, summary: str = "", **capabilities: Any
) -> Entry:
    """Add (or replace) an entry. ``target`` is ``module:attribute``; nothing is imported here."""
    if extra is not None and not all(e in EXTRAS for e in extra.split(",")):
        raise ValueError(f"unknown extra {extra!r} for {kind} {name!r}")
    entry = Entry(kind, name, target, extra, summary, dict(capabilities))
    _ENTRIES.setdefault(kind, {})[name] = entry
    return entry


_SPEC_TARGETS: dict[str, list[str]] = {}  # kinds whose entries are named by the objects they point to


def register_specs(kind: str, *targets: str) -> None:
    """Entries whose name and summary come from the (torch-free) objects at ``targets``: a task's name
    is written once, in its spec file. They are imported when the kind is first listed."""
    _SPEC_TARGETS.setdefault(kind, []).extend(targets)


def _resolve_specs(kind: str) -> None:
    for target in _SPEC_TARGETS.pop(kind, []):
        spec = Entry(kind, target, target).load()
        caps = {k: getattr(spec, k) for k in ("modality", "generates") if hasattr(spec, k)}
        register(kind, spec.name, target, summary=getattr(spec, "summary", ""), **caps)


def unregister(kind: str, name: str) -> None:
    _ENTRIES.get(kind, {}).pop(name, None)


def entries(kind: str) -> list[Entry]:
    if kind in _FILE_KINDS:
        from edgekit.resources import list_named

        return [Entry(kind, n, None, None, f"{_FILE_KINDS[kind]}/{n}.yaml") for n in list_named(_FILE_KINDS[kind])]
    if kind in _SPEC_TARGETS:
        _resolve_specs(kind)
    if kind not in _ENTRIES:
        raise KeyError(f"no registry kind {kind!r}")
    return list(_ENTRIES[kind].values())


def names(kind: str, **capabilities: Any) -> tuple[str, ...]:
    """The names of ``kind``, in registration order; keyword filters keep entries whose capability
    equals the value (or, for a list capability, contains it)."""
    out = []
    for e in entries(kind):
        ok = True
        for key, want in capabilities.items():
            have = e.capabilities.get(key)
            ok = ok and (want in have if isinstance(have, (list, tuple, set, frozenset)) else have == want)
        if ok:
            out.append(e.name)
    return tuple(out)


def choices(kind: str, **capabilities: Any) -> str:
    """``a, b or c``: the names as help text says them."""
    items = list(names(kind, **capabilities))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" or {items[-1]}"


def get(kind: str, name: str, *, option: str | None = None) -> Entry:
    """The entry, or one clear line naming the allowed values (``option`` is how the user gave it)."""
    for e in entries(kind):
        if e.name == name:
            return e
    said = option or KIND_WORDS.get(kind, kind)
    raise EdgekitError(f"{said} {str(name)[:60]!r} is not one of {', '.join(names(kind))}")


def load(kind: str, name: str, *, option: str | None = None) -> Any:
    return get(kind, name, option=option).load()


def missing_modules(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extra(extra: str | None, what: str) -> None:
    """One line naming the extra(s) to install when ``extra``'s modules (``train`` or ``train,executorch``)
    are not all importable."""
    if extra is None:
        return
    parts = extra.split(",")
    missing = {e: missing_modules(e) for e in parts}
    names = [m for e in parts for m in missing[e]]
    if names:
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        core = "; this is a core install, as on a device" if missing.get("train") else ""
        lacking = [e for e in parts if missing[e]]
        raise MissingExtra(
            f"{what} needs the {' and '.join(lacking)} extra{'s' if len(lacking) > 1 else ''} "
            f"({shown} not installed here{core}): pip install 'edgekit[{extra}]'"
        )


# ---------------------------------------------------------------------------------------------------
# Built-in entries: the one list of names. Capabilities are read by the code that dispatches on them.

# Tasks: each is a spec object in edgekit/tasks/ (torch-free; its name, facts and jobs live there).
register_specs(
    "task", "edgekit.tasks.classification:IMAGE", "edgekit.tasks.classification:TEXT", "edgekit.tasks.text2text:SPEC"
)

# Distillation strategies (edgekit distill --strategy). teachers: how many; chain: student.layers is
# a chain of links; seq2seq: works for encoder-decoders; student: "model" (one is given) or "self" (a
# quantized copy of the teacher).
register(
    "strategy",
    "straightforward",
    extra="train",
    teachers="one",
    chain=False,
    seq2seq=True,
    student="model",
    summary="one teacher -> student (Hinton KD)",
)
register(
    "strategy",
    "successive",
    extra="train",
    teachers="one",
    chain=True,
    seq2seq=True,
    student="model",
    summary="teacher -> link 1 -> link 2 ..., each link taught by the one before",
)
register(
    "strategy",
    "multi-teacher",
    extra="train",
    teachers="many",
    chain=False,
    seq2seq=False,
    student="model",
    summary="weighted ensemble of teachers (fixed or learned weights) -> student",
)
register(
    "strategy",
    "self-quantized",
    extra="train",
    teachers="one",
    chain=False,
    seq2seq=False,
    student="self",
    summary="a model into a 4-bit NF4 copy of itself with LoRA",
)

# Sweep columns (the seeds' Table II), trained in this order. taught_by: who teaches a cell's student
# ("teacher"; "chain": the cell before it in the successive chain; "ensemble": the teacher and a second
# teacher, distill.teachers or the chain's first link); distill_as: the distill strategy each cell runs;
# labels_only: alpha 0, the same student and budget with no teacher signal.
register(
    "sweep-strategy",
    "labels-only",
    taught_by="teacher",
    distill_as="straightforward",
    labels_only=True,
    summary="the same student on labels alone",
)
register(
    "sweep-strategy",
    "straightforward",
    taught_by="teacher",
    distill_as="straightforward",
    labels_only=False,
    summary="teacher -> student",
)
register(
    "sweep-strategy",
    "successive",
    taught_by="chain",
    distill_as="straightforward",
    labels_only=False,
    summary="teacher -> halfway link -> student",
)
register(
    "sweep-strategy",
    "multi-teacher",
    taught_by="ensemble",
    distill_as="multi-teacher",
    labels_only=False,
    summary="teacher and the chain's first link -> student",
)

# Logit losses: f(student_logits, teacher_logits, labels, temperature, alpha, **options) -> loss. Labels
# of -1 mark unlabeled transfer examples (no label term). options: the loss's own settings
# (distill.loss_options) and their defaults, passed as keyword arguments.
register(
    "loss",
    "hinton",
    "edgekit.train.losses:kd_loss",
    extra="train",
    options={},
    summary="(1 - alpha) CE(labels) + alpha T^2 KL(teacher_T || student_T)",
)
register(
    "loss",
    "dkd",
    "edgekit.train.dkd:dkd_loss",
    extra="train",
    options={"target_weight": 1.0, "nontarget_weight": 8.0},  # the paper's alpha and beta (Zhao et al., 2022)
    summary="Decoupled KD: (1 - alpha) CE + alpha T^2 (target_weight TCKD + nontarget_weight NCKD)",
)

# Intermediate-layer KD terms (distill.features: {kind: weight}); all in edgekit/distill/features.py.
# families: the model families whose pairs it matches.
_FEATURES = "edgekit.distill.features:IntermediateKD"
register(
    "feature-kd",
    "hidden",
    _FEATURES,
    extra="train",
    families=("hf",),
    summary="layer outputs by MSE through a learned projection (TinyBERT)",
)
register(
    "feature-kd",
    "attention",
    _FEATURES,
    extra="train",
    families=("hf",),
    summary="attention distributions by KL, head by head (TinyBERT; same head count)",
)
register(
    "feature-kd",
    "relation",
    _FEATURES,
    extra="train",
    families=("hf",),
    summary="query/key/value self-relations of the last layer by KL (MiniLMv2; any widths and heads)",
)
register(
    "feature-kd",
    "hint",
    _FEATURES,
    extra="train",
    families=("torchvision",),
    summary="feature maps at shared strides by MSE through a 1x1 adapter (FitNets; CNNs)",
)

# Pruning methods (edgekit prune --method). families: the model families it handles; structured:
# removes rows/heads/channels (the file shrinks) rather than zeroing weights.
register(
    "pruner",
    "l1-unstructured",
    "edgekit.compress.prune:l1_unstructured",
    extra="train",
    families=("hf", "torchvision"),
    structured=False,
    prunes="any model",
    needs="a model",
    summary="zero the smallest weights of every Linear/Conv (shapes stay)",
)
register(
    "pruner",
    "heads",
    "edgekit.compress.structured:prune_heads",
    extra="train",
    families=("hf",),
    structured=True,
    prunes="transformers",
    needs="a BERT-like or ViT model",
    summary="remove attention heads",
)
register(
    "pruner",
    "ffn",
    "edgekit.compress.structured:prune_ffn",
    extra="train",
    families=("hf",),
    structured=True,
    prunes="transformers",
    needs="a BERT-like or ViT model",
    summary="remove feed-forward neurons",
)
register(
    "pruner",
    "channels",
    "edgekit.compress.structured:prune_channels",
    extra="train",
    families=("torchvision",),
    structured=True,
    prunes="CNNs",
    needs="a torchvision CNN (ResNet, MobileNet)",
    summary="remove conv channels",
)

register(
    "pruner",
    "vocab",
    "edgekit.compress.vocab:prune_vocab",
    extra="train",
    families=("hf",),
    structured=True,
    prunes="text models",
    needs="a text model with a fast tokenizer (BERT-like encoders, T5)",
    summary="keep only the tokens the training data uses: embeddings (and T5's LM head) and tokenizer rebuilt (--amount unused)",
    amount=False,  # takes no --amount
    seq2seq=True,  # handles encoder-decoders
    validates=True,  # proves itself on the validation split
)

# Quantization modes and precisions of an export preset.
register("quant-mode", "auto", summary="static for CNNs, dynamic for transformers")
register("quant-mode", "dynamic", summary="int8 weights, activations quantized at run time")
register("quant-mode", "static", summary="int8 weights and activations, calibrated")
register("precision", "int8", summary="8-bit integer weights (and activations)")
register(
    "precision",
    "int4",
    formats=("onnx",),
    summary="4-bit block-wise weights (MatMulNBits) and embeddings (GatherBlockQuantized); activations float",
)
register("precision", "fp16", formats=("onnx",), summary="half precision (GPUs)")
register("precision", "fp32", summary="full precision")

# Export formats. target: the fp32 writer, (graph, path, export job) -> the exporter used; lossy: the
# int8/fp16 candidates' writer, (job, fp32 folder, calibration split) -> candidates; session: the class
# that runs the file (none: onnxruntime); presets: the default preset per precision; opset: the preset's
# opset applies; torch_free: the device needs no torch to run it; kv_cache: encoder-decoders are written
# with a cached decoder step (edgekit.export.seq2seq_graphs.encoder_decoder_graphs).
register(
    "format",
    "onnx",
    "edgekit.export.graphs:write_onnx",
    extra="train",
    lossy="edgekit.export.candidates:onnx_candidates",
    suffix=".onnx",
    runtime="onnxruntime",
    title="ONNX",
    precisions=("int8", "int4", "fp16", "fp32"),
    presets={"int8": "cpu-int8", "int4": "cpu-int4", "fp32": "onnx-fp32", "fp16": "t4-fp16"},
    opset=True,
    torch_free=True,
    kv_cache=True,
    summary="ONNX graph run by onnxruntime (torch-free on the device)",
)
register(
    "format",
    "torchscript",
    "edgekit.export.graphs:write_torchscript",
    extra="train",
    lossy="edgekit.export.candidates:torchscript_candidates",
    session="edgekit.runtime.bundle:TorchScriptSession",
    suffix=".pt",
    runtime="torchscript",
    title="TorchScript",
    precisions=("int8", "fp32"),
    presets={"int8": "torchscript-int8", "fp32": "torchscript-fp32"},
    torch_free=False,
    summary="TorchScript module run by torch.jit (needs torch on the device)",
)
register(
    "format",
    "executorch",
    "edgekit.export.executorch:write_pte",
    extra="train,executorch",
    lossy="edgekit.export.executorch:int8_candidates",
    session="edgekit.runtime.executorch:ExecuTorchSession",
    runtime_version="edgekit.runtime.executorch:runtime_version",
    suffix=".pte",
    runtime="executorch",
    title="ExecuTorch",
    precisions=("int8", "fp32"),
    presets={"int8": "executorch-xnnpack-int8", "fp32": "executorch-fp32"},
    torch_free=False,
    summary="ExecuTorch program (.pte) with XNNPACK, run by ExecuTorch's runtime (pip install executorch; loads torch)",
)

# Where a bench or eval runs (edgekit.bench.runners.choose): selected_by is the CLI option that picks the
# runner (none: the default); bench_data says whether the bench takes real inputs (--data) there.
register(
    "runner",
    "local",
    "edgekit.bench.runners:LOCAL",
    selected_by=None,
    bench_data=True,
    summary="this machine, a child process per bundle",
)
register(
    "runner",
    "ssh",
    "edgekit.bench.runners:SSH",
    selected_by="host",
    bench_data=False,
    no_data_hint="; copy the data file to the device and run 'edgekit bench' there",
    summary="a device over SSH (edgekit's core installed there)",
)
register(
    "runner",
    "emulated",
    "edgekit.emulate.run:EMULATED",
    selected_by="emulate",
    bench_data=False,
    no_data_hint=" yet; bench on synthetic inputs, or eval with --data",
    summary="an emulated aarch64 Raspberry Pi (qemu-user)",
)
