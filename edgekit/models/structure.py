"""The shape of a structurally pruned model: resize an architecture's layers to saved weights
(fewer heads, neurons or channels) so they load. Pruning itself is :mod:`edgekit.compress.structured`."""

from __future__ import annotations

import torch

from edgekit.errors import EdgekitError


def fit_to_state_dict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], heads: dict[str, int] | None = None
) -> None:
    """Resize ``module``'s layers to the shapes in ``state`` (a pruned model's weights) and set the
    pruned attention modules' head counts, so ``load_state_dict(state)`` fits."""
    for name, layer in module.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None or getattr(layer, "weight", None) is None or tuple(layer.weight.shape) == tuple(weight.shape):
            continue
        if isinstance(layer, torch.nn.Conv2d):
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels
            layer.out_channels = weight.shape[0]
            if depthwise:
                layer.in_channels = layer.groups = weight.shape[0]
            else:
                layer.in_channels = weight.shape[1] * layer.groups
        elif isinstance(layer, torch.nn.Linear):
            layer.out_features, layer.in_features = weight.shape
        elif isinstance(layer, torch.nn.BatchNorm2d):
            layer.num_features = weight.shape[0]
            layer.running_mean = torch.zeros(weight.shape[0])
            layer.running_var = torch.ones(weight.shape[0])
        else:
            raise EdgekitError(
                f"cannot resize layer {name} ({type(layer).__name__}) to the saved shape {tuple(weight.shape)}"
            )
        layer.weight = torch.nn.Parameter(torch.empty_like(weight))
        bias = state.get(prefix + "bias")
        if bias is not None and getattr(layer, "bias", None) is not None:
            layer.bias = torch.nn.Parameter(torch.empty_like(bias))
    for name, count in (heads or {}).items():
        _set_heads(module.get_submodule(name), int(count))


def _head_dim(attn: torch.nn.Module) -> int:
    for key in ("attention_head_size", "head_dim"):
        if isinstance(getattr(attn, key, None), int):
            return getattr(attn, key)
    raise EdgekitError(f"cannot tell the head size of {type(attn).__name__}; head pruning does not support it")


def _set_heads(attn: torch.nn.Module, count: int) -> None:
    attn.num_attention_heads = count
    if hasattr(attn, "all_head_size"):
        attn.all_head_size = count * _head_dim(attn)
