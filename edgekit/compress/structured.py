"""Structured pruning: remove whole attention heads, feed-forward neurons or conv channels, so the
layers' shapes shrink and the exported model is smaller and faster (zeros in a dense matrix are not).

Importance is measured on calibration examples from the task (the same score for all three):
a unit's output contribution, mean |activation| x ||its column in the next layer||. For a head that
is the norm of the head's slice of the attention output projection (mean over tokens); for an FFN
neuron or a conv channel, mean |input_j| of the consuming layer times the L2 norm of the weights
reading it (as Wanda; Michel et al. 2019 and Li et al. 2017 use related scores). ``amount`` is the
fraction removed in every layer (at least one head/neuron/channel always stays).

Conv channels are found by tracing the model (torch.fx): a channel can go only when the conv that
makes it feeds, through BatchNorm, activations and depthwise convs, exactly one conv or (after global
pooling) the head's linear layer; outputs joined by residual additions or concatenations stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from edgekit.errors import EdgekitError
from edgekit.models.structure import _head_dim, _set_heads

# where the parts of one transformer layer live, per family
_LAYOUTS = (
    # BERT, RoBERTa, ELECTRA, MiniLM, XLM-R, ...
    {
        "attn": "attention.self",
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    # ViT in transformers >= 5 (and other models with q/k/v/o_proj attention and an fc1/fc2 MLP)
    {
        "attn": "attention",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
        "ffn_in": "mlp.fc1",
        "ffn_out": "mlp.fc2",
    },
    # ViT, DeiT in transformers 4
    {
        "attn": "attention.attention",
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
)


def _get(module: torch.nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def transformer_layers(module: torch.nn.Module) -> list[tuple[str, dict[str, torch.nn.Module]]]:
    found = []
    for name, layer in module.named_modules():
        for layout in _LAYOUTS:
            parts = {key: _get(layer, path) for key, path in layout.items()}
            if all(parts[k] is not None for k in layout) and all(
                isinstance(parts[k], torch.nn.Linear) for k in ("q", "k", "v", "o", "ffn_in", "ffn_out")
            ):
                found.append((name, {**parts, "attn_name": f"{name}.{layout['attn']}" if name else layout["attn"]}))
                break
    return found


def _calibration_batches(handle, split, samples: int, batch_size: int = 32):
    import numpy as np

    from edgekit.train.data import make_dataset, make_loader

    dataset = make_dataset(handle, split)
    order = np.random.default_rng(0).permutation(len(dataset))[:samples].tolist()  # a seeded sample of every class
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return make_loader(dataset, batch_size, shuffle=False, batches=batches)


def _collect(handle, split, samples: int, consumers: dict[str, tuple[torch.nn.Module, Any]]) -> dict[str, torch.Tensor]:
    """Run calibration batches; for every consumer ``name: (layer, reduce)`` accumulate
    ``reduce(layer, input, mask)`` (a vector over the layer's input units), mean over batches."""
    totals: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"mask": None, "batches": 0}

    def hook(name, reduce):
        def grab(module, args):
            value = reduce(module, args[0].detach().float(), state["mask"])
            totals[name] = totals.get(name, 0) + value

        return grab

    handles = [m.register_forward_pre_hook(hook(n, r)) for n, (m, r) in consumers.items()]
    was_training = handle.module.training
    handle.module.eval()
    try:
        with torch.no_grad():
            for _, inputs, _ in _calibration_batches(handle, split, samples):
                state["mask"] = inputs.get("attention_mask")
                handle.logits(inputs)
                state["batches"] += 1
    finally:
        for h in handles:
            h.remove()
        handle.module.train(was_training)
    return {n: v / max(state["batches"], 1) for n, v in totals.items()}


def _token_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over batch and tokens of ``x`` [B, T, F] -> [F], padding excluded."""
    if x.dim() == 3 and mask is not None and mask.shape[:2] == x.shape[:2]:
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum((0, 1)) / weights.sum().clamp(min=1)
    return x.reshape(-1, x.shape[-1]).mean(0)


def _keep_top(scores: torch.Tensor, amount: float) -> torch.Tensor:
    n = scores.numel()
    remove = min(int(round(amount * n)), n - 1)
    keep = torch.argsort(scores, descending=True)[: n - remove]
    return torch.sort(keep).values


def _slice_linear(layer: torch.nn.Linear, index: torch.Tensor, dim: int) -> None:
    with torch.no_grad():
        layer.weight = torch.nn.Parameter(layer.weight.index_select(dim, index).clone())
        if dim == 0 and layer.bias is not None:
            layer.bias = torch.nn.Parameter(layer.bias[index].clone())
    layer.out_features, layer.in_features = layer.weight.shape


def prune_heads(handle, split, amount: float, samples: int) -> dict[str, Any]:
    layers = transformer_layers(handle.module)
    if not layers:
        raise EdgekitError(
            f"--method heads needs a BERT-like or ViT model; {handle.arch} has no attention layers edgekit "
            "knows (use l1-unstructured, or channels for CNNs)"
        )
    head_size = {n: _head_dim(p["attn"]) for n, p in layers}

    def per_head(name):
        d = head_size[name]

        def reduce(module, x, mask):
            w = module.weight.float()  # [hidden, heads*d]
            heads = w.shape[1] // d
            xs = x.reshape(*x.shape[:-1], heads, d)
            ws = w.reshape(w.shape[0], heads, d)
            contribution = torch.einsum("...hd,ohd->...ho", xs, ws).norm(dim=-1)  # [..., heads]
            return _token_mean(contribution, mask)

        return reduce

    totals = _collect(handle, split, samples, {n: (p["o"], per_head(n)) for n, p in layers})
    structure = {}
    removed = 0
    for name, parts in layers:
        keep_heads = _keep_top(totals[name], amount)
        d = head_size[name]
        index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep_heads.tolist()])
        for key in ("q", "k", "v"):
            _slice_linear(parts[key], index, 0)
        _slice_linear(parts["o"], index, 1)
        attn = parts["attn"]
        removed += attn.num_attention_heads - len(keep_heads)
        _set_heads(attn, len(keep_heads))
        structure[parts["attn_name"]] = len(keep_heads)
    return {"heads": structure, "removed": {"heads": removed}, "kept_per_layer": list(structure.values())}


def prune_ffn(handle, split, amount: float, samples: int) -> dict[str, Any]:
    layers = transformer_layers(handle.module)
    if not layers:
        raise EdgekitError(
            f"--method ffn needs a BERT-like or ViT model; {handle.arch} has no feed-forward blocks edgekit "
            "knows (use l1-unstructured, or channels for CNNs)"
        )
    totals = _collect(handle, split, samples, {n: (p["ffn_out"], _input_importance) for n, p in layers})
    kept, removed = [], 0
    for name, parts in layers:
        keep = _keep_top(totals[name], amount)
        removed += parts["ffn_in"].out_features - len(keep)
        _slice_linear(parts["ffn_in"], keep, 0)
        _slice_linear(parts["ffn_out"], keep, 1)
        kept.append(len(keep))
    return {"removed": {"ffn_neurons": removed}, "kept_per_layer": kept}


def _input_importance(module, x, mask):
    """mean |x_j| times the L2 norm of the weights reading input feature j."""
    w = module.weight.float()
    if isinstance(module, torch.nn.Conv2d):  # [B, C, H, W]; weight [out, C, kh, kw]
        activation = x.abs().mean((0, 2, 3))
        return activation * w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return _token_mean(x.abs(), mask) * w.norm(dim=0)


# ---------------------------------------------------------------------------------------------
# conv channels

_PASS_MODULES = (
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.Hardswish,
    torch.nn.SiLU,
    torch.nn.GELU,
    torch.nn.Identity,
    torch.nn.Dropout,
    torch.nn.LeakyReLU,
    torch.nn.ELU,
    torch.nn.Mish,
)
_PASS_FUNCTIONS = {"relu", "relu6", "hardswish", "silu", "gelu", "dropout", "leaky_relu", "elu", "mish", "relu_"}
_POOL_FUNCTIONS = {"adaptive_avg_pool2d", "flatten"}


@dataclass
class Chain:
    producer: str
    channelwise: list[str] = field(default_factory=list)  # BatchNorm2d and depthwise convs, in order
    consumer: str = ""


def conv_chains(model: torch.nn.Module) -> list[Chain]:
    """Every conv whose output channels can be removed (see the module docstring)."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:
        raise EdgekitError(
            f"cannot trace {type(model).__name__} to find prunable conv channels ({str(exc).splitlines()[0]}); "
            "use --method l1-unstructured"
        ) from None
    modules = dict(model.named_modules())
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), torch.nn.Conv2d):
            continue
        conv = modules[node.target]
        if conv.groups != 1:
            continue
        chain = _follow(node, modules, Chain(node.target))
        if chain is not None:
            chains.append(chain)
    return chains


def _function_name(node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _follow(node, modules, chain: Chain) -> Chain | None:
    pooled = False
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.op == "call_module":
            module = modules[user.target]
            if isinstance(module, torch.nn.BatchNorm2d) and not pooled:
                chain.channelwise.append(user.target)
            elif isinstance(module, torch.nn.Conv2d) and not pooled:
                if module.groups == 1:
                    chain.consumer = user.target
                    return chain
                if module.groups == module.in_channels == module.out_channels:
                    chain.channelwise.append(user.target)
                else:
                    return None
            elif isinstance(module, torch.nn.AdaptiveAvgPool2d) and tuple(
                torch.nn.modules.utils._pair(module.output_size)
            ) == (1, 1):
                pooled = True
            elif isinstance(module, torch.nn.Flatten) and pooled:
                pass
            elif isinstance(module, torch.nn.Linear) and pooled:
                chain.consumer = user.target
                return chain
            elif not isinstance(module, _PASS_MODULES):
                return None
        elif user.op in ("call_function", "call_method"):
            name = _function_name(user)
            if name in _POOL_FUNCTIONS:
                if name == "adaptive_avg_pool2d" and tuple(torch.nn.modules.utils._pair(user.args[1])) != (1, 1):
                    return None
                pooled = pooled or name == "adaptive_avg_pool2d"
                if name == "flatten" and not pooled:
                    return None
            elif name not in _PASS_FUNCTIONS:
                return None
        else:
            return None
        current = user


def prune_channels(handle, split, amount: float, samples: int) -> dict[str, Any]:
    model = handle.module
    chains = conv_chains(model)
    if not chains:
        raise EdgekitError(
            f"--method channels found no conv channels that can be removed in {handle.arch} "
            "(needs a CNN; for transformers use heads or ffn)"
        )
    modules = dict(model.named_modules())
    totals = _collect(handle, split, samples, {c.consumer: (modules[c.consumer], _input_importance) for c in chains})
    removed, kept = 0, {}
    with torch.no_grad():
        for chain in chains:
            keep = _keep_top(totals[chain.consumer], amount)
            producer = modules[chain.producer]
            removed += producer.out_channels - len(keep)
            _slice_conv(producer, keep, out=True)
            for name in chain.channelwise:
                layer = modules[name]
                if isinstance(layer, torch.nn.BatchNorm2d):
                    _slice_bn(layer, keep)
                else:
                    _slice_conv(layer, keep, out=True, depthwise=True)
            consumer = modules[chain.consumer]
            if isinstance(consumer, torch.nn.Linear):
                _slice_linear(consumer, keep, 1)
            else:
                _slice_conv(consumer, keep, out=False)
            kept[chain.producer] = len(keep)
    return {"removed": {"conv_channels": removed}, "kept_per_layer": list(kept.values()), "layers": len(chains)}


def _slice_conv(conv: torch.nn.Conv2d, index: torch.Tensor, *, out: bool, depthwise: bool = False) -> None:
    dim = 0 if out else 1
    conv.weight = torch.nn.Parameter(conv.weight.index_select(dim, index).clone())
    if out and conv.bias is not None:
        conv.bias = torch.nn.Parameter(conv.bias[index].clone())
    if depthwise:
        conv.in_channels = conv.out_channels = conv.groups = len(index)
    elif out:
        conv.out_channels = len(index)
    else:
        conv.in_channels = len(index) * conv.groups


def _slice_bn(bn: torch.nn.BatchNorm2d, index: torch.Tensor) -> None:
    bn.weight = torch.nn.Parameter(bn.weight[index].clone())
    bn.bias = torch.nn.Parameter(bn.bias[index].clone())
    bn.running_mean = bn.running_mean[index].clone()
    bn.running_var = bn.running_var[index].clone()
    bn.num_features = len(index)
