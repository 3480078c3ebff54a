"""ExecuTorch export: ``.pte`` programs run by ExecuTorch's runtime with the XNNPACK backend.

fp32: ``torch.export`` of each graph with dynamic batch (1 to :data:`MAX_BATCH`) and sequence (2 to
the tokenizer's max_length) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``.pte``.
What XNNPACK does not take runs on ExecuTorch's portable kernels; the manifest says which operators.

Both: a program is planned for sequences up to the tokenizer's ``max_length``, so a learned position
table keeps only the rows such a sequence can index (MiniLM: 128 of 512; exact, and said in the manifest).

int8 (PT2E): embeddings become int8 per row with fp16 row scales (ExecuTorch's ``embedding_byte``
kernel), so the file is no larger than the int8 ONNX; then the XNNPACK quantizer: for transformers, int8 per-channel weights of
every Linear with activations quantized at run time (``mode: dynamic``); for CNNs, static int8 of
convolutions and linears calibrated on training data (``mode: static``; the first convolution stays fp32
when the preset says ``first_conv_fp32``; with ``bias_correction`` the logits' mean int8 shift on the
calibration data is subtracted at the output, as on the ONNX path). ``mode: auto`` picks by the model.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.errors import EdgekitError
from edgekit.export.graphs import Graph, graphs_for, quiet, unsupported_operator

_NOT_CORE = re.compile(r"Operator (?:torch\._ops\.)?([\w.]+) is not in Core ATen")
MAX_BATCH = 32  # the largest batch a program is planned for; the runtime runs larger ones in slices
EXPORTER = "torch.export+executorch (xnnpack)"


def _program_module(graph: Graph, handle) -> torch.nn.Module:
    """What is exported for ``graph`` (the same wrapper the ONNX and TorchScript writers export)."""
    return graph.module.eval()


def _restore_integer_constants(module: torch.fx.GraphModule) -> int:
    """PT2E's prepare turns scalar operands into 0-d float tensors, also where they meet integer tensors
    (transformers' attention-mask and position arithmetic: ``arange + 0``), and the integer result
    turns float and cannot index. Those constants are given back their integer type; returns how many."""
    fixed = 0
    for node in module.graph.nodes:
        if node.op != "get_attr" or not str(node.target).startswith("_tensor_constant"):
            continue
        value = getattr(module, node.target)
        if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()):
            continue
        for user in node.users:
            others = [a for a in user.args if isinstance(a, torch.fx.Node) and a is not node]
            dtypes = [a.meta["val"].dtype for a in others if isinstance(a.meta.get("val"), torch.Tensor)]
            integer = dtypes and not dtypes[0].is_floating_point and dtypes[0] is not torch.bool
            if integer and float(value) == int(value):
                setattr(module, node.target, value.to(dtypes[0]))
                fixed += 1
                break
    return fixed


def _dynamic_shapes(graph: Graph, handle) -> tuple:
    longest = int(handle.preprocessing.get("max_length") or 512)
    dims: dict[str, Any] = {}
    for axes in graph.axes:
        for name in axes.values():
            if name not in dims:
                low, high = (1, MAX_BATCH) if name in ("batch", "target") else (2, max(longest, 3))
                if name == "target":
                    high = max(int(handle.preprocessing.get("max_target_length") or 128), 2)
                dims[name] = torch.export.Dim(name, min=low, max=high)
    return tuple({i: dims[n] for i, n in axes.items()} for axes in graph.axes)


def _exported(module: torch.nn.Module, graph: Graph, handle):
    import inspect

    shapes = _dynamic_shapes(graph, handle)
    forward = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in forward):
        shapes = (shapes,)  # forward(*args): one entry, the shapes of the args
    try:
        with quiet(), torch.no_grad():
            return torch.export.export(module, graph.example, dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types
        op = unsupported_operator(exc)
        first = (
            f"operator {op} cannot be exported" if op else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        )
        raise EdgekitError(
            f"cannot export {handle.arch} ({graph.name}) to ExecuTorch: torch.export failed: {first[:300]}; "
            "use --format onnx"
        ) from None


def _lower(exported, graph: Graph, handle) -> tuple[bytes, dict[str, Any]]:
    """The ``.pte`` bytes and what ran where: XNNPACK delegates, and operators left to ExecuTorch's
    portable kernels (each checked to have a kernel in this runtime)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    fallback = None
    try:
        with quiet():
            program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip()
        if _NOT_CORE.search(text) or "dependency cycles" not in text:
            raise _lowering_error(text or type(exc).__name__, graph, handle) from None
        # XNNPACK's partitioner could not cut the graph into delegates: ExecuTorch's portable kernels run it all
        fallback = f"XNNPACK partitioner failed ({text.splitlines()[0][:120]}); portable kernels run this graph"
        try:
            import executorch.kernels.quantized  # noqa: F401 - out variants of the quantize/dequantize ops

            with quiet():
                program = to_edge_transform_and_lower(exported).to_executorch()
        except Exception as again:  # noqa: BLE001
            raise _lowering_error(str(again).strip() or type(again).__name__, graph, handle) from None
    plan = program.executorch_program.execution_plan[0]
    operators = [f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators]
    missing = sorted(set(operators) - set(_runtime_operators()))
    if missing:
        raise EdgekitError(
            f"cannot export {handle.arch} ({graph.name}) to ExecuTorch: operator {missing[0]} has no kernel in "
            f"ExecuTorch's runtime{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; use --format onnx"
        )
    meta = _runtime()[1]._load_program_from_buffer(program.buffer).method_meta("forward")
    batch_inputs = [i for i, axes in enumerate(graph.axes) if 0 in axes and axes[0] == "batch"]
    record = {
        **({"fallback": fallback} if fallback else {}),
        "planned_batch": min((meta.input_tensor_meta(i).sizes()[0] for i in batch_inputs), default=None),
        "delegates": sorted({d.id for d in plan.delegates}),
        "delegated_subgraphs": len(plan.delegates),
        "portable_operators": sorted(set(operators)),
    }
    return program.buffer, record


def _lowering_error(text: str, graph: Graph, handle) -> EdgekitError:
    op = _NOT_CORE.search(text)
    first = (
        f"operator {op.group(1)} is not in the core ATen operator set ExecuTorch runs"
        if op
        else (text.splitlines() or ["unknown error"])[0][:300]
    )
    return EdgekitError(
        f"cannot lower {handle.arch} ({graph.name}) to ExecuTorch/XNNPACK: {first}; "
        "replace it in the model or use --format onnx"
    )


def _runtime():
    from edgekit.runtime.executorch import _runtime

    return _runtime()


def _runtime_operators() -> list[str]:
    return list(_runtime()[1]._get_operator_names())


def _plan_batch(job, record: dict[str, Any], folder: Path) -> None:
    """The largest batch the program is planned for (at most :data:`MAX_BATCH`; memory planning can
    bound it lower, e.g. 15 for MobileNetV2 at 32x32) into the manifest, and into ``folder``'s copy
    that the parity check opens."""
    planned = record.get("planned_batch") or MAX_BATCH
    job.manifest.preprocessing["max_batch"] = min(planned, job.manifest.preprocessing.get("max_batch", MAX_BATCH))
    job.manifest.write(folder)


def _position_tables(module: torch.nn.Module) -> list[tuple[str, torch.nn.Embedding]]:
    return [
        (name, sub)
        for name, sub in module.named_modules()
        if type(sub) is torch.nn.Embedding and name.endswith("position_embeddings")
    ]


def _trim_positions(module: torch.nn.Module, max_length: int | None) -> dict[str, int]:
    """Learned absolute position tables (``*position_embeddings`` Embeddings: BERT, RoBERTa, DistilBERT...)
    cut to the rows a sequence of at most ``max_length`` tokens indexes: positions 0..max_length-1, after
    ``padding_idx + 1`` for tables that count from there (RoBERTa). The program refuses longer inputs,
    so this is exact. Returns {table: rows kept} for the manifest."""
    kept: dict[str, int] = {}
    if not max_length:
        return kept
    for name, sub in _position_tables(module):
        rows = int(max_length) + (sub.padding_idx + 1 if sub.padding_idx is not None else 0)
        if rows < sub.num_embeddings:
            sub.weight = torch.nn.Parameter(sub.weight.detach()[:rows].clone(), requires_grad=False)
            sub.num_embeddings = rows
            kept[name] = rows
    return kept


def _trimmed(handle) -> tuple[Any, dict[str, int]]:
    """A copy of ``handle`` whose position tables are cut to the program's longest sequence (or ``handle``
    itself when nothing is cut)."""
    longest = handle.preprocessing.get("max_length")
    if not longest or not _position_tables(handle.module):  # nothing to cut: no copy of the model
        return handle, {}
    module = copy.deepcopy(handle.module).eval()
    kept = _trim_positions(module, int(longest))
    return (dataclasses.replace(handle, module=module), kept) if kept else (handle, {})


def write_pte(graph: Graph, path: Path, job) -> str:
    """The fp32 writer (the ``executorch`` format entry): one graph as a ``.pte`` program."""
    handle, kept = _trimmed(job.handle)
    if kept:
        graph = next(g for g in graphs_for(handle) if g.name == graph.name)
    data, record = _lower(_exported(_program_module(graph, handle), graph, handle), graph, handle)
    if kept:
        record["position_rows_kept"] = kept
    Path(path).write_bytes(data)
    _plan_batch(job, record, Path(path).parent)
    job.notes.setdefault("executorch", {})[graph.name] = record  # replaced by the int8 programs' for int8
    return EXPORTER


class QuantizedEmbedding(torch.nn.Module):
    """An embedding table as int8 rows with one fp16 scale each (symmetric), looked up by ExecuTorch's
    ``quantized_decomposed::embedding_byte`` kernel (it dequantizes only the rows it reads). The kernel
    writes the scales' type, so rows come out fp16 and are cast to fp32: the fp16 rounding (2^-11
    relative) is far below int8's (1/254 of the row's largest value), and the scales take half the bytes
    (61 kB of MiniLM's 30,522 rows)."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401 - defines embedding_byte for torch

        weight = embedding.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-7).half()  # fp16 holds 1e-7 as a subnormal
        self.register_buffer(
            "weight", torch.clamp(torch.round(weight / scale.float()[:, None]), -127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.weight, self.scales, None, -127, 127, indices, dtype=torch.float16
        )
        return rows.float()


def _quantize_embeddings(module: torch.nn.Module) -> int:
    count = 0
    for child in list(module.modules()):
        for attribute, sub in list(child.named_children()):
            if type(sub) is torch.nn.Embedding:
                setattr(child, attribute, QuantizedEmbedding(sub))
                count += 1
    return count


def _mode(quant: dict[str, Any], module: torch.nn.Module, static_ok: bool) -> str:
    if quant["mode"] != "auto":
        return quant["mode"]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    return "static" if static_ok and convs > linears else "dynamic"


def _quantizer(mode: str, per_channel: bool, skip: str | None):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    class Quantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)  # scalars become 0-d float tensors here
            _restore_integer_constants(model)
            return model

    quantizer = Quantizer()
    if mode == "dynamic":  # int8 weights, activations quantized per batch at run time: Linear layers
        config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=True)
        return quantizer.set_module_type(torch.nn.Linear, config)
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    if skip:  # the first convolution stays fp32: nodes of that module are not annotated
        quantizer.set_filter_function(lambda node: not _in_module(node, skip))
    return quantizer


def _in_module(node: torch.fx.Node, name: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(fqn == name or str(fqn).startswith(name + ".") for fqn, _ in stack.values())


def _first_conv_quantized(module: torch.fx.GraphModule) -> bool | None:
    """Whether the first convolution of a converted graph reads a dequantized (int8) input."""
    conv = next((n for n in module.graph.nodes if n.op == "call_function" and "conv" in str(n.target)), None)
    if conv is None:
        return None
    source = conv.args[0]
    return isinstance(source, torch.fx.Node) and "dequantize" in str(source.target)


def int8_candidates(job, fp32_dir: Path, calibration) -> list:
    """The ``executorch`` format's lossy writer: one int8 candidate (PT2E + int8 embeddings)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgekit.export.candidates import Candidate
    from edgekit.export.job import candidate_folder
    from edgekit.export.parity import batches_of

    handle, preset, manifest = job.handle, job.preset, job.manifest
    quant = preset.quantization
    module = copy.deepcopy(handle.module).eval()
    mode = _mode(quant, module, handle.spec.static_int8)  # build_bundle refused --static where it does not apply
    kept = _trim_positions(module, handle.preprocessing.get("max_length"))
    embeddings = _quantize_embeddings(module)
    qhandle = dataclasses.replace(handle, module=module)
    folder = candidate_folder(job.scratch, "int8", manifest)
    calib = batches_of(job.encoder, calibration, preset.calib_samples) if mode == "static" else []
    if mode == "static" and not calib:
        raise EdgekitError("static int8 needs calibration data; give training data or use dynamic mode")
    lowered: dict[str, Any] = {}
    shifts: dict[str, list[float]] = {}
    for graph in graphs_for(qhandle):
        wrapped = _program_module(graph, qhandle)
        skip = None
        if mode == "static" and quant["first_conv_fp32"]:
            skip = next((n for n, m in wrapped.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
        exported = _exported(wrapped, graph, qhandle)
        try:
            with quiet(), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                prepared = prepare_pt2e(exported.module(), _quantizer(mode, bool(quant["per_channel"]), skip))
                feeds = calib or [{n: t.numpy() for n, t in zip(graph.inputs, graph.example)}]
                for batch in feeds:
                    prepared(*[torch.from_numpy(np.ascontiguousarray(batch[n])) for n in graph.inputs])
                converted = convert_pt2e(prepared)
            if skip and _first_conv_quantized(converted):
                raise EdgekitError(f"first_conv_fp32: the convolution {skip} was quantized all the same")
        except EdgekitError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgekitError(f"cannot quantize {handle.arch} ({graph.name}) for ExecuTorch: {first[:300]}") from None
        if mode == "static" and quant["bias_correction"]:
            shift = _output_shift(wrapped, converted, calib, graph.inputs)
            if shift is not None:
                converted = _Shifted(converted, shift)
                shifts[graph.name] = [round(float(v), 6) for v in shift]
        data, record = _lower(_exported(converted, graph, qhandle), graph, qhandle)
        (folder / (graph.name + job.suffix)).write_bytes(data)
        _plan_batch(job, record, folder)
        lowered[graph.name] = record
    quantization = {
        "mode": mode,
        "tool": "PT2E (torchao prepare_pt2e/convert_pt2e) with XNNPACKQuantizer",
        "per_channel": bool(quant["per_channel"]),
        "weight_type": "int8",
        "activation_type": "dynamic int8" if mode == "dynamic" else "int8",
        "quantized": "Linear layers" if mode == "dynamic" else "convolutions and Linear layers",
        "quantized_embeddings": embeddings,
        **({"embedding_type": "int8 per row, fp16 row scales (embedding_byte)"} if embeddings else {}),
        **({"position_rows_kept": kept} if kept else {}),
        "calibration_batches": len(calib),
        "first_conv_fp32": skip,
    }
    if mode == "static" and quant["bias_correction"]:
        quantization["output_bias_correction"] = shifts.get("model") if len(shifts) <= 1 else shifts
    job.notes["executorch"] = lowered  # the shipped programs' delegates and portable operators
    return [Candidate("plain", folder, quantization)]


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _output_shift(reference: torch.nn.Module, converted: torch.nn.Module, calib, names) -> torch.Tensor | None:
    """Static int8's systematic shift of each logit (the ONNX path's ``correct_output_bias``, Nagel et al.
    2019 sec. 4.2): the mean of (int8 - fp32) logits over the calibration batches, int8 simulated by
    the converted PT2E graph (quantize/dequantize at the points XNNPACK quantizes). None when the
    program does not end in one (batch, classes) output."""
    diffs = []
    with torch.no_grad():
        for batch in calib:
            args = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names]
            fp32, int8 = _first_tensor(reference(*args)), _first_tensor(converted(*args))
            if not isinstance(fp32, torch.Tensor) or fp32.dim() != 2 or fp32.shape != int8.shape:
                return None
            diffs.append(int8.double() - fp32.double())
    return torch.cat(diffs).mean(0).float() if diffs else None


class _Shifted(torch.nn.Module):
    """The converted program with the calibration shift subtracted from its output (one fp32 Sub)."""

    def __init__(self, inner: torch.nn.Module, shift: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("shift", shift)

    def forward(self, *args):
        return _first_tensor(self.inner(*args)) - self.shift
