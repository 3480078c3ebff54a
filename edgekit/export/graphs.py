"""What gets exported: the ``Graph`` record, one graph for a classifier (the encoder-decoders' graphs
are in :mod:`edgekit.export.seq2seq_graphs`), and the ONNX and TorchScript writers.

Each graph is a module with positional inputs and one output, plus the names and dynamic axes of
its inputs, so the ONNX and TorchScript exporters treat classifiers and encoder-decoders alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import EdgekitError
from edgekit.models.handle import ModelHandle


@dataclass
class Graph:
    name: str
    module: torch.nn.Module
    inputs: list[str]
    output: str
    example: tuple[torch.Tensor, ...]
    axes: list[dict[int, str]]  # per input: axis -> dimension name
    dtypes: list[str]
    # the TorchScript-based exporter first: for BERT-like encoders (with eager attention) it writes the
    # classic attention pattern that onnxruntime fuses and quantizes well (MiniLM-L6 int8 at sequence 128:
    # 12.6 ms vs 14.0 ms from the torch.export-based graph, whose SDPA decomposition adds IsNaN/Where per
    # layer); and for the T5 decoder, whose reshapes torch.export rejects in this torch
    legacy_first: bool = False
    extra_outputs: tuple[str, ...] = ()  # further outputs after ``output`` (the decoder step's cache)

    @property
    def outputs(self) -> list[str]:
        return [self.output, *self.extra_outputs]

    def describe(self, file: str) -> dict[str, Any]:
        shapes = [[axes.get(i, int(t.shape[i])) for i in range(t.dim())] for t, axes in zip(self.example, self.axes)]
        return {
            "name": self.name,
            "file": file,
            "inputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in zip(self.inputs, self.dtypes, shapes)],
            "outputs": [{"name": name, "dtype": "float32"} for name in self.outputs],
        }


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order, one output: what an ONNX graph wants."""

    def __init__(self, handle: ModelHandle):
        super().__init__()
        self.handle = handle
        self.module = handle.module
        self.names = handle.input_names

    def forward(self, *args):
        return self.handle.logits(dict(zip(self.names, args)))


def graphs_for(handle: ModelHandle, kv_cache: bool = False) -> list[Graph]:
    """The graphs an export of ``handle`` writes (the task's ``graphs`` job), traced in eval mode on CPU;
    ``kv_cache``: encoder-decoders get a decoder step with past keys/values where the model allows."""
    handle.module.cpu().eval()
    config = getattr(handle.module, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = "eager"  # same math; traces without the SDPA mask shortcuts
    job = handle.spec.job("graphs")
    return job(handle, kv_cache=True) if kv_cache and handle.spec.generates else job(handle)


def classifier_graphs(handle: ModelHandle) -> list[Graph]:
    """One graph, ``model``: pixels or token ids in, logits out (batch and sequence dynamic)."""
    if handle.spec.modality == "image":
        example = handle.example_inputs(batch=2)
        return [
            Graph(
                "model",
                _LogitsOnly(handle),
                ["pixel_values"],
                "logits",
                (example["pixel_values"],),
                [{0: "batch"}],
                ["float32"],
            )
        ]
    example = handle.example_inputs(batch=2, seq_len=16)
    example["attention_mask"][1, 12:] = 0  # a padded row, so no all-ones shortcut is baked into a trace
    names = handle.input_names
    return [
        Graph(
            "model",
            _LogitsOnly(handle),
            names,
            "logits",
            tuple(example[n] for n in names),
            [{0: "batch", 1: "sequence"} for _ in names],
            ["int64"] * len(names),
            legacy_first=True,
        )
    ]


@contextlib.contextmanager
def quiet():
    """The exporters print pages of progress and warnings; a failure is reported by edgekit instead."""
    names = (
        "torch.onnx",
        "onnxscript",
        "torch.export",
        "torch.utils._pytree",
        "onnxruntime.quantization.matmul_nbits_quantizer",
    )
    loggers = [logging.getLogger(n) for n in names] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_OP = re.compile(
    r"No ONNX function found for <OpOverload\(op='(aten[.:]+\w+)'|"
    r"(?:Exporting the operator|Unsupported: ONNX export of operator) '?(aten::\w+)"
)


def unsupported_operator(exc: BaseException) -> str | None:
    """The aten operator an exporter could not convert, read from its error (or None)."""
    text = str(exc)
    cause = exc.__cause__
    while cause is not None:
        text += "\n" + str(cause)
        cause = cause.__cause__
    match = _OP.search(text)
    return (match.group(1) or match.group(2)).replace("::", ".") if match else None


def export_onnx(graph: Graph, path: Path, opset: int, arch: str) -> str:
    """Export one graph with dynamic axes; the torch.export-based exporter first, the TorchScript-based
    one second (or the other way round, ``graph.legacy_first``), the second when the first fails.
    Returns the exporter used."""
    dims: dict[str, Any] = {}
    for axes in graph.axes:
        for name in axes.values():
            if name not in dims:
                low = 1 if name in ("batch", "target") else 2
                dims[name] = torch.export.Dim(name, min=low, max=4096)
    shapes = tuple({i: dims[n] for i, n in axes.items()} for axes in graph.axes)
    first_error: BaseException | None = None
    graph.module.eval()  # the exporters restore the wrapper's mode on every submodule afterwards: eval, not train
    for dynamo in (False, True) if graph.legacy_first else (True, False):
        try:
            with quiet():
                if dynamo:
                    torch.onnx.export(
                        graph.module,
                        graph.example,
                        str(path),
                        input_names=graph.inputs,
                        output_names=graph.outputs,
                        dynamic_shapes=shapes if len(shapes) > 1 else (shapes[0],),
                        opset_version=opset,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        graph.module,
                        graph.example,
                        str(path),
                        input_names=graph.inputs,
                        output_names=graph.outputs,
                        opset_version=min(opset, 18),
                        dynamo=False,
                        dynamic_axes={n: a for n, a in zip(graph.inputs, graph.axes)},
                    )
            _drop_value_info(path)
            return "torch.export" if dynamo else "torchscript-trace"
        except Exception as exc:  # noqa: BLE001 - exporter errors have many types; reported below
            first_error = first_error or exc
            op = unsupported_operator(exc)
            if op is not None:
                raise EdgekitError(
                    f"cannot export {arch} to ONNX opset {opset}: operator {op} has no ONNX conversion; replace it in "
                    "the model (or export with --format torchscript), or try a newer torch/onnxscript"
                ) from None
    message = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
    raise EdgekitError(
        f"cannot export {arch} ({graph.name}) to ONNX opset {opset}: {message[:300]}; "
        "try --format torchscript or another --preset opset"
    ) from None


def write_onnx(graph: Graph, path: Path, job) -> str:
    """The ``onnx`` format's writer: one fp32 graph at the preset's opset; returns the exporter used."""
    return export_onnx(graph, path, int(job.preset.opset), job.handle.arch)


def write_torchscript(graph: Graph, path: Path, job) -> str:
    """The ``torchscript`` format's writer: one graph traced and frozen."""
    export_torchscript(graph, path, job.handle.arch)
    return "torch.jit.trace+freeze"


def _drop_value_info(path: Path) -> None:
    """The torch.export-based exporter can leave intermediate shapes recorded at the example's sizes,
    which later contradict shape inference (seen on BERT: 'differ in dimension 0: (32) vs (2)').
    Intermediate shapes are re-inferred by every consumer, so they are dropped."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def export_torchscript(graph: Graph, path: Path, arch: str) -> None:
    """Trace one graph, freeze it (weights become constants) and save it."""
    try:
        with quiet(), torch.no_grad():
            traced = torch.jit.trace(graph.module.eval(), graph.example, check_trace=False, strict=False)
            torch.jit.save(torch.jit.freeze(traced), str(path))
    except Exception as exc:  # noqa: BLE001
        op = unsupported_operator(exc)
        message = (
            f"operator {op} cannot be traced"
            if op
            else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        )
        raise EdgekitError(
            f"cannot export {arch} ({graph.name}) to TorchScript: {message}; try --format onnx"
        ) from None
