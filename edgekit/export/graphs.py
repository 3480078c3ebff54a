"""What gets exported: one graph for a classifier; for T5-style models an encoder and a decoder, or
(ONNX) an encoder, the cross-attention cache and a decoder step with a KV cache.

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


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class FullDecoder(torch.nn.Module):
    """Decoder logits for every position of ``decoder_input_ids`` given the encoder's states (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, hidden, attention_mask):
        return self.model(
            encoder_outputs=(hidden,),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits


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


def cache_refusal(model) -> str | None:
    """Why the cached decoder step cannot be built for ``model`` (None: it can). The step is written for
    T5's layout: relative position bias in the first decoder block only, self-attention, cross-attention
    and feed-forward sub-layers (T5, flan-T5, T5 v1.1; not mT5's UMT5 variant or BART)."""
    blocks = getattr(getattr(model, "decoder", None), "block", None)
    if blocks is None or not len(blocks):
        return f"{type(model).__name__} is not T5-shaped (no decoder.block)"
    for index, block in enumerate(blocks):
        layers = getattr(block, "layer", [])
        if len(layers) != 3 or not hasattr(layers[0], "SelfAttention") or not hasattr(layers[1], "EncDecAttention"):
            return f"decoder block {index} is not T5's self-attention, cross-attention, feed-forward"
        if bool(layers[0].SelfAttention.has_relative_attention_bias) != (index == 0):
            return "the decoder has relative position bias in more blocks than the first (UMT5-style)"
    return None


def _heads(x: torch.Tensor, attention) -> torch.Tensor:
    """(batch, length, heads*d_kv) -> (batch, heads, length, d_kv)."""
    return x.view(x.shape[0], x.shape[1], attention.n_heads, attention.key_value_proj_dim).transpose(1, 2)


def cache_names(kind: str, layers: int) -> list[str]:
    """The per-layer cache tensors of a decoder step, keys and values apart (``past``, ``present`` or
    ``cross``): ``past_key_0, past_value_0, past_key_1, ...``. One tensor each, so a step reads and writes
    them in place of slicing (and copying) a stacked cache every token."""
    return [f"{kind}_{part}_{index}" for index in range(layers) for part in ("key", "value")]


class _CrossKV(torch.nn.Module):
    """The cross-attention keys and values of every decoder block, computed once per source: 2 x layers
    tensors (batch, heads, source, d_kv) in ``cache_names("cross", layers)`` order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden):
        out = []
        for block in self.model.decoder.block:
            attention = block.layer[1].EncDecAttention
            out += [_heads(attention.k(hidden), attention), _heads(attention.v(hidden), attention)]
        return tuple(out)


class _DecoderStep(torch.nn.Module):
    """One decoder position with a KV cache: the next token's logits (batch, 1, vocab), then each block's
    self-attention keys and values grown by one position (batch, heads, past + 1, d_kv). Inputs: the
    token, the source mask, the past keys/values and the cross keys/values (``cache_names`` order; the
    past may have length 0, the first step). Same arithmetic as T5's eager attention: no query scaling,
    the first block's relative position bias shared by all blocks, the source padding masked in
    cross-attention."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, attention_mask, *cache):
        decoder = self.model.decoder
        layers = len(decoder.block)
        past, cross = cache[: 2 * layers], cache[2 * layers :]
        x = decoder.embed_tokens(decoder_input_ids)
        position = past[0].shape[2]
        first = decoder.block[0].layer[0].SelfAttention
        relative = torch.arange(position + 1, device=x.device)[None, :] - position
        bucket = first._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=first.relative_attention_num_buckets,
            max_distance=first.relative_attention_max_distance,
        )
        bias = first.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, heads, 1, past + 1)
        source_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        batch = x.shape[0]
        present = []
        for index, block in enumerate(decoder.block):
            layer = block.layer[0]
            attention = layer.SelfAttention
            normed = layer.layer_norm(x)
            query = _heads(attention.q(normed), attention)
            key = torch.cat([past[2 * index], _heads(attention.k(normed), attention)], dim=2)
            value = torch.cat([past[2 * index + 1], _heads(attention.v(normed), attention)], dim=2)
            present += [key, value]
            weights = torch.softmax((query @ key.transpose(-1, -2) + bias).float(), dim=-1).type_as(query)
            x = x + attention.o((weights @ value).transpose(1, 2).reshape(batch, 1, -1))
            layer = block.layer[1]
            attention = layer.EncDecAttention
            query = _heads(attention.q(layer.layer_norm(x)), attention)
            scores = query @ cross[2 * index].transpose(-1, -2) + source_mask
            weights = torch.softmax(scores.float(), dim=-1).type_as(query)
            x = x + attention.o((weights @ cross[2 * index + 1]).transpose(1, 2).reshape(batch, 1, -1))
            x = block.layer[2](x)
        x = decoder.final_layer_norm(x)
        if self.model.config.tie_word_embeddings:
            x = x * (self.model.model_dim**-0.5)
        return (self.model.lm_head(x), *present)


def encoder_decoder_graphs(handle: ModelHandle, kv_cache: bool = False) -> list[Graph]:
    """``encoder`` (ids -> hidden states), then either ``decoder`` (target ids, hidden -> logits of every
    position; each generated token re-runs it) or, with ``kv_cache`` and a T5-shaped model, ``cross_kv``
    (hidden -> the cross-attention keys/values, once per source) and ``decoder_step`` (one token, the
    cache -> its logits and the grown cache)."""
    model = handle.module
    example = handle.example_inputs(batch=2, seq_len=12)
    ids, mask = example["input_ids"], example["attention_mask"]
    mask[1, 9:] = 0
    with torch.no_grad():
        hidden = _Encoder(model)(ids, mask)
    encoder = Graph(
        "encoder",
        _Encoder(model),
        ["input_ids", "attention_mask"],
        "hidden",
        (ids, mask),
        [{0: "batch", 1: "source"}] * 2,
        ["int64", "int64"],
    )
    if kv_cache and cache_refusal(model) is None:
        with torch.no_grad():
            cross = _CrossKV(model)(hidden)
        layers = len(model.decoder.block)
        _, heads, _, d_kv = cross[0].shape
        past = tuple(torch.randn(2, heads, 3, d_kv) for _ in range(2 * layers))
        step_ids = torch.randint(5, int(model.config.vocab_size), (2, 1))
        cross_names, past_names = cache_names("cross", layers), cache_names("past", layers)
        cross_axes, past_axes = {0: "batch", 2: "source"}, {0: "batch", 2: "past"}
        return [
            encoder,
            Graph(
                "cross_kv",
                _CrossKV(model),
                ["hidden"],
                cross_names[0],
                (hidden,),
                [{0: "batch", 1: "source"}],
                ["float32"],
                extra_outputs=tuple(cross_names[1:]),
            ),
            Graph(
                "decoder_step",
                _DecoderStep(model),
                ["decoder_input_ids", "attention_mask", *past_names, *cross_names],
                "logits",
                (step_ids, mask, *past, *cross),
                [{0: "batch"}, {0: "batch", 1: "source"}] + [past_axes] * len(past) + [cross_axes] * len(cross),
                ["int64", "int64"] + ["float32"] * (len(past) + len(cross)),
                legacy_first=True,  # the past axis starts at 0, which torch.export's dimensions do not allow
                extra_outputs=tuple(cache_names("present", layers)),
            ),
        ]
    decoder_ids = torch.randint(5, int(model.config.vocab_size), (2, 5))
    return [
        encoder,
        Graph(
            "decoder",
            FullDecoder(model),
            ["decoder_input_ids", "hidden", "attention_mask"],
            "logits",
            (decoder_ids, hidden, mask),
            [{0: "batch", 1: "target"}, {0: "batch", 1: "source"}, {0: "batch", 1: "source"}],
            ["int64", "float32", "int64"],
            legacy_first=True,
        ),
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
