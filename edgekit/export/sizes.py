"""Where a bundle's bytes go: per component of the model (embeddings, layers, head, quantization
parameters), per file of the bundle, and the whole bundle (torch-free: onnx only reads the graphs).

An ONNX weight is attributed by the module path in the names of the nodes that read it (torch.onnx
names nodes ``/encoder/layer.0/attention/self/query/MatMul``), or failing that its own name
(``model.shared.weight``), so the quantized copies and transposed ``onnx::MatMul_*`` weights the
exporter makes are found where they are used. Other formats get the per-file part only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

COMPONENTS = ("embeddings", "layers", "head", "quantization parameters", "other weights")
_EMBEDDING = re.compile(r"embed|shared|word_embeddings|position_embeddings|token_type|patch|relative_attention_bias")
# onnxruntime's fused attention nodes are named Attention_<n>, one per layer
_LAYER = re.compile(r"(^|[/.])(layer|layers|block|blocks|h)[./]\d+|encoder[/.]layer|features[/.]\d+|^Attention_\d+")
_HEAD = re.compile(r"classifier|lm_head|pooler|head|fc($|[/.])|score")
_QPARAM = re.compile(r"(_scales?|_zero_points?)$")


def _component(path: str) -> str:
    if _QPARAM.search(path):
        return "quantization parameters"
    if _LAYER.search(path):
        return "layers"
    if _EMBEDDING.search(path):
        return "embeddings"
    if _HEAD.search(path):
        return "head"
    return "other weights"


def onnx_components(path: Path) -> dict[str, int]:
    """Initializer bytes of one ONNX file by component (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    out = dict.fromkeys(COMPONENTS, 0)
    for init in model.graph.initializer:
        size = numpy_helper.to_array(init).nbytes if not init.raw_data else len(init.raw_data)
        if _QPARAM.search(init.name):
            out["quantization parameters"] += size
            continue
        kinds = [_component(r) for r in readers.get(init.name, [])]
        kind = next((k for k in kinds if k != "other weights"), _component(init.name))
        out[kind] += size
    return out


def breakdown(folder: Path, graph_files: list[str], onnx_graphs: bool) -> dict[str, Any]:
    """``components`` (bytes by part of the model, over every graph), ``files`` (bytes of each file
    in the bundle) and ``bundle_bytes`` (their sum)."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    out: dict[str, Any] = {"files": files, "bundle_bytes": sum(files.values())}
    if onnx_graphs:
        components = dict.fromkeys(COMPONENTS, 0)
        for name in graph_files:
            for kind, size in onnx_components(folder / name).items():
                components[kind] += size
        out["components"] = components
    return out


def describe(sizes: dict[str, Any]) -> str:
    """One line: the bundle's bytes and the components' (MB), largest first."""
    parts = sizes.get("components") or {}
    shown = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v)
    return f"bundle {sizes['bundle_bytes'] / 1e6:.2f} MB" + (f" ({shown})" if shown else "")
