"""Derive a shallower student from a transformer teacher by keeping K of its N layers.

The kept layers are evenly spaced and always include the last one (whose output the head was
trained on): N=12, K=3 keeps layers 4, 8, 12; N=6, K=1 keeps layer 6. Weights are copied, so the
student starts from the teacher's embeddings, kept layers and head (as DistilBERT and the seeds'
ViT-9/6/3 and BERT minis).
"""

from __future__ import annotations

import copy

import torch

from edgekit.errors import EdgekitError

# config attribute holding the layer count -> where the layers are, by model family
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def kept_layers(n: int, k: int) -> list[int]:
    if not 1 <= k <= n:
        raise EdgekitError(f"--student-layers {k}: the teacher has {n} layers; choose 1 to {n}")
    return sorted({round((i + 1) * n / k) - 1 for i in range(k)})


def _layer_lists(model: torch.nn.Module, n: int) -> list[tuple[str, torch.nn.ModuleList]]:
    """The ModuleLists of ``n`` blocks of one type (encoder layers; for T5 also decoder blocks)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            if len({type(m) for m in module}) == 1 and sum(p.numel() for p in module.parameters()) > 0:
                found.append((name, module))
    # nested lists of n (e.g. layers inside layers) cannot happen for encoders; keep the outermost
    outer = [(name, m) for name, m in found if not any(name != o and name.startswith(o + ".") for o, _ in found)]
    return outer


def layer_count(handle) -> int:
    if handle.family != "hf":
        raise EdgekitError(
            f"--student-layers needs a transformer teacher (BERT-like, ViT, T5); {handle.arch} is a "
            "torchvision CNN: give a student model with --student instead"
        )
    config = handle.module.config
    for key in LAYER_COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise EdgekitError(f"cannot tell how many layers {handle.arch} has; give a student model with --student instead")


def derive_student(handle, k: int):
    """A copy of ``handle`` with ``k`` of its layers (weights copied)."""
    n = layer_count(handle)
    keep = kept_layers(n, k)
    student = copy.copy(handle)
    student.module = copy.deepcopy(handle.module)
    config = student.module.config
    lists = _layer_lists(student.module, n)
    if not lists:
        raise EdgekitError(
            f"cannot find the {n} layers of {handle.arch} to drop some; give a student model with --student"
        )
    for name, layers in lists:
        kept = torch.nn.ModuleList([layers[i] for i in keep])
        if keep[0] != 0:
            _move_position_bias(layers[0], kept[0])
        parent_name, _, attr = name.rpartition(".")
        parent = student.module.get_submodule(parent_name) if parent_name else student.module
        setattr(parent, attr, kept)
    for key in LAYER_COUNT_KEYS + ("num_decoder_layers",):
        if isinstance(getattr(config, key, None), int) and getattr(config, key) == n:
            setattr(config, key, len(keep))
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n:
        config.layer_types = [config.layer_types[i] for i in keep]
    for _, layers in _layer_lists(student.module, len(keep)):  # attention modules that know their index
        for i, block in enumerate(layers):
            for module in block.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = i
    student.extra = {**handle.extra, "derived_from": {"layers": n, "kept": [i + 1 for i in keep]}}
    student.arch = handle.arch
    student.source = f"{handle.source} [layers {','.join(str(i + 1) for i in keep)} of {n}]"
    return student


def _move_position_bias(first: torch.nn.Module, new_first: torch.nn.Module) -> None:
    """T5 keeps its relative position bias in block 0 only: give it to the new first block."""
    for old, new in zip(first.modules(), new_first.modules()):
        if getattr(old, "has_relative_attention_bias", False) and not getattr(new, "has_relative_attention_bias", True):
            new.relative_attention_bias = copy.deepcopy(old.relative_attention_bias)
            new.has_relative_attention_bias = True
