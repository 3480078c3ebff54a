"""Where intermediate-layer KD reads the networks (:mod:`edgekit.distill.features`): forward hooks that
keep named modules' outputs, a transformer's layers, attention projections and head count, the
student-to-teacher layer map, a CNN's feature map at each output stride, and the attention-relation
arithmetic of MiniLMv2 (relation heads, log-relations, their KL over real tokens)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekit.errors import EdgekitError

# (query, key, value) attribute names of self-attention projections, by model family
_QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
_HINT_STRIDES = (8, 16, 32)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class _Taps:
    """Forward hooks that keep the outputs of named modules (the last forward's)."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.values: dict[str, torch.Tensor] = {}
        self.hooks = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(module, args, output):
            self.values[name] = _first(output)

        return hook

    def close(self):
        for h in self.hooks:
            h.remove()
        self.hooks, self.values = [], {}


# --- where the layers are -------------------------------------------------------------------------


def transformer_layers(handle) -> tuple[str, int]:
    """(dotted name of the encoder's layer list, layer count) of a Hugging Face model."""
    from edgekit.distill.derive import _layer_lists, layer_count

    n = layer_count(handle)
    lists = _layer_lists(handle.module, n)
    if not lists:
        raise EdgekitError(f"cannot find the {n} layers of {handle.arch} for intermediate-layer KD")
    return lists[0][0], n


def _qkv(handle, layer: str) -> tuple[str, str, str] | None:
    names = {n for n, _ in handle.module.get_submodule(layer).named_modules()}
    for q, k, v in _QKV_NAMES:
        found = [next((n for n in sorted(names) if n.split(".")[-1] == a), None) for a in (q, k, v)]
        if all(found):
            return tuple(f"{layer}.{f}" for f in found)
    return None


def _heads(handle) -> int:
    config = handle.module.config
    for key in ("num_attention_heads", "n_heads", "num_heads"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise EdgekitError(f"cannot tell how many attention heads {handle.arch} has; use the hidden kind instead")


def layer_map(teacher, student, override: list[int] | None) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 0-based (see the module docstring)."""
    _, n = transformer_layers(teacher)
    _, k = transformer_layers(student)
    if override:
        if len(override) != k:
            raise EdgekitError(
                f"distill.layer_map has {len(override)} entries for a student of {k} layers; give one teacher "
                f"layer (1 to {n}) per student layer, e.g. --layer-map {','.join(str(round((i + 1) * n / k)) for i in range(k))}"
            )
        bad = [t for t in override if not 1 <= t <= n]
        if bad:
            raise EdgekitError(f"distill.layer_map names teacher layer {bad[0]}; the teacher has {n} layers (1 to {n})")
        return [(i, t - 1) for i, t in enumerate(override)]
    derived = student.extra.get("derived_from") or {}
    kept = derived.get("kept")
    if derived.get("layers") == n and isinstance(kept, list) and len(kept) == k:
        return [(i, t - 1) for i, t in enumerate(kept)]
    return [(i, max(0, round((i + 1) * n / k) - 1)) for i in range(k)]


def _stage_outputs(handle, image_size: int) -> dict[int, tuple[str, int, tuple[int, int]]]:
    """stride -> (module name, channels, spatial size) of each stage's output, found by one probe forward
    with hooks on every module that has weights: at the shallowest nesting depth whose modules reach
    three or more strides (a ResNet's layer1..4, a MobileNet's features.N), the last module at each
    stride (a deeper rule would pick the first convolution of the next stage)."""
    model = handle.module
    seen: list[tuple[str, tuple[int, ...]]] = []

    def keep(name):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                seen.append((name, tuple(out.shape)))

        return hook

    hooks = [
        module.register_forward_hook(keep(name))
        for name, module in model.named_modules()
        if name and any(True for _ in module.parameters())
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_depth: dict[int, dict[int, tuple[str, int, tuple[int, int]]]] = {}
    for name, shape in seen:  # hooks fire as modules finish: the last one at a stride wins
        if shape[2] and image_size % shape[2] == 0:
            by_depth.setdefault(name.count("."), {})[image_size // shape[2]] = (name, shape[1], (shape[2], shape[3]))
    for depth in sorted(by_depth):
        if len(by_depth[depth]) >= 3:
            return by_depth[depth]
    return by_depth[max(by_depth, key=lambda d: len(by_depth[d]))] if by_depth else {}


# --- the objective --------------------------------------------------------------------------------


def _relation_heads(t_width: int, s_width: int, t_heads: int) -> int:
    """Relation heads for MiniLMv2: the teacher's head count when it divides both widths, else their gcd
    capped at the teacher's head count."""
    if t_width % t_heads == 0 and s_width % t_heads == 0:
        return t_heads
    return max(1, min(t_heads, math.gcd(t_width, s_width)))


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads).transpose(1, 2)  # [B, heads, L, d]


def _log_relation(a: torch.Tensor, b: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax(a_h b_h^T / sqrt(d)) per head over real keys: [B, heads, L, L]."""
    qa, kb = _split(a, heads), _split(b, heads)
    scores = qa @ kb.transpose(-1, -2) / math.sqrt(qa.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], -1e9)  # padding: probability 0, no inf
    return F.log_softmax(scores, dim=-1)


def _relation_kl(student_log: torch.Tensor, teacher_log: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) per query row, averaged over heads and real query tokens."""
    p = teacher_log.exp()
    kl = torch.where(p > 0, p * (teacher_log - student_log), 0.0).sum(-1).mean(1)  # [B, L]
    return _masked_mean(kl, mask)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)
