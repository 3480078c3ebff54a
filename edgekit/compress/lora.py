"""LoRA and QLoRA adapters (peft) on any classifier edgekit loads, and exact merges back into a
plain full-precision model.

- LoRA: adapters on the target modules (auto: query/value for BERT-like and ViT; every
  non-grouped Conv2d and every Linear but the head for CNNs); adapters and head train.
- QLoRA: the base weights are first stored in 4-bit NF4 with double quantization (bitsandbytes
  blockwise quantization; compute in float32 on CPU, bfloat16 on CUDA is left to autocast).
  Hugging Face models load through ``BitsAndBytesConfig`` (bitsandbytes ``Linear4bit``; the head
  stays full precision). bitsandbytes has no 4-bit convolution, so CNN layers become
  :class:`NF4Conv2d`/:class:`NF4Linear`: the weight is kept as NF4 codes and dequantized on each
  forward (the same arithmetic as ``Linear4bit`` on CPU).
- Merge: W = base + B·A·scale written into a copy of the original architecture, where base is the
  dequantized NF4 weight for QLoRA, i.e. exactly the weights the adapters were trained against.
  The merged model needs neither peft nor bitsandbytes; :func:`merge_report` states how far its
  logits are from the adapted model's.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from typing import Any

import torch

from edgekit import log
from edgekit.errors import EdgekitError
from edgekit.tasks import task_spec

_TARGET_CANDIDATES = (("query", "value"), ("q", "v"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))


def head_name(module: torch.nn.Module) -> str:
    from edgekit.models.handle import HEAD_ATTRIBUTES

    for name in HEAD_ATTRIBUTES:
        if getattr(module, name, None) is not None:
            return name
    raise EdgekitError(f"cannot find the classification head of {type(module).__name__}")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def auto_targets(handle) -> list[str]:
    """query/value projections for attention models (BERT, ViT: 'query'/'value'; T5: 'q'/'v');
    for CNNs every Conv2d with groups == 1 (peft cannot merge grouped/depthwise convolutions) and
    every Linear except the head."""
    module = handle.module
    head = head_name(module)
    if handle.family != "hf":
        return [
            name
            for name, m in module.named_modules()
            if not (name == head or name.startswith(head + "."))
            and ((isinstance(m, torch.nn.Conv2d) and m.groups == 1) or isinstance(m, torch.nn.Linear))
        ]
    leaf_names = {_leaf(name) for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in _TARGET_CANDIDATES:
        if set(pair) <= leaf_names:
            return list(pair)
    return sorted(n for n in leaf_names if n != head)


def check_targets(module: torch.nn.Module, targets: list[str]) -> None:
    names = {name for name, _ in module.named_modules()}
    leaf_names = {_leaf(name) for name in names}
    missing = [t for t in targets if t not in leaf_names and t not in names]
    if missing:
        layers = sorted(
            {_leaf(name) for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        )
        raise EdgekitError(
            f"LoRA target module(s) {', '.join(missing)} not found in the model; "
            f"its linear/conv layers are named: {', '.join(layers[:20])}"
        )
    grouped = [
        name
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and (name in targets or _leaf(name) in targets)
    ]
    if grouped:
        raise EdgekitError(
            f"LoRA cannot target grouped/depthwise convolutions ({', '.join(grouped[:5])}): peft cannot merge "
            "them; leave them out of --lora-targets"
        )


# ---------------------------------------------------------------------------------------------
# 4-bit NF4 storage for layers bitsandbytes has no kernel for (CNNs)


def _nf4_pack(weight: torch.Tensor):
    import bitsandbytes.functional as bnbf

    flat = weight.detach().float().reshape(weight.shape[0], -1).contiguous()
    return bnbf.quantize_4bit(flat, quant_type="nf4", compress_statistics=True, blocksize=64)


class _NF4Weight:
    """Mixin: ``weight`` is a property that dequantizes the stored NF4 codes. Built with the plain
    layer's constructor (as peft does for its adapters: ``type(base)(in, r, ...)``) it is an
    ordinary full-precision layer."""

    @classmethod
    def from_layer(cls, layer: torch.nn.Module, attrs: tuple[str, ...]):
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)  # no fp32 weight is ever allocated
        for attr in attrs:
            setattr(new, attr, getattr(layer, attr))
        new._store(layer)
        return new

    def _store(self, source: torch.nn.Module) -> None:
        codes, state = _nf4_pack(source.weight)
        self.register_buffer("weight_nf4", codes)
        self.quant_state = state
        self.weight_shape = tuple(source.weight.shape)
        self.bias = (
            None if source.bias is None else torch.nn.Parameter(source.bias.detach().clone(), requires_grad=False)
        )

    @property
    def weight(self) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        if "weight_nf4" not in self._buffers:  # an ordinary layer (hasattr() must see AttributeError)
            if self._parameters.get("weight") is None:
                raise AttributeError("weight")
            return self._parameters["weight"]
        if self.quant_state.absmax.device != self.weight_nf4.device:
            self.quant_state.to(self.weight_nf4.device)
        return bnbf.dequantize_4bit(self.weight_nf4, self.quant_state).reshape(self.weight_shape)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if "weight_nf4" in self._buffers:
            self.quant_state.to(self.weight_nf4.device)
        return result


_CONV_ATTRS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
    "_reversed_padding_repeated_twice",
)


class NF4Conv2d(_NF4Weight, torch.nn.Conv2d):
    pass


class NF4Linear(_NF4Weight, torch.nn.Linear):
    pass


def _quantize_cnn(module: torch.nn.Module, skip: str) -> torch.nn.Module:
    for name, child in list(module.named_modules()):
        if name == skip or name.startswith(skip + ".") or not name:
            continue
        if type(child) is torch.nn.Conv2d:
            replacement = NF4Conv2d.from_layer(child, _CONV_ATTRS)
        elif type(child) is torch.nn.Linear:
            replacement = NF4Linear.from_layer(child, ("in_features", "out_features"))
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, replacement)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _quantize_hf(handle, head: str) -> torch.nn.Module:
    from transformers import BitsAndBytesConfig

    if handle.extra.get("structure"):
        raise EdgekitError(
            "QLoRA cannot reload a structurally pruned Hugging Face model in 4-bit; apply QLoRA before "
            "pruning, or use --lora"
        )
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=[head],
    )
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    with tempfile.TemporaryDirectory(prefix="edgekit-nf4-") as tmp:
        handle.module.save_pretrained(tmp, safe_serialization=True)
        module = type(handle.module).from_pretrained(tmp, quantization_config=quant, device_map=device_map)
    return keep_plain_nf4_layout(module)


def keep_plain_nf4_layout(module: torch.nn.Module) -> torch.nn.Module:
    """bitsandbytes (0.49+) on CPUs with AVX512-BF16 repacks a Linear4bit's NF4 weight into a blocked
    layout on its first inference pass, which asserts on widths its block does not divide ("N must be
    divisible by block_n") and changes the codes edgekit dequantizes to merge the adapters. edgekit
    keeps the plain NF4 layout (the reference CPU kernels, the same numbers on every CPU)."""
    for layer in module.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    return module


def with_lora(handle, lora, *, quantized: bool):
    """A copy of ``handle`` whose module is a peft model: LoRA adapters on ``lora.target_modules``
    (auto when empty) over the original weights, or over their NF4 copy when ``quantized``.
    Only adapters and the head train. ``handle`` itself is left untouched."""
    try:
        import peft

        if quantized and importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("No module named 'bitsandbytes'")
    except ImportError as exc:
        raise EdgekitError(
            f"LoRA needs peft{' and bitsandbytes' if quantized else ''} ({exc}); pip install 'edgekit[train]'"
        ) from None
    if task_spec(handle.task).generates:
        raise EdgekitError(
            "LoRA/QLoRA fine-tuning here is for classifiers (text and images); for T5 use "
            "'edgekit distill' or a full 'edgekit finetune'"
        )
    head = head_name(handle.module)
    targets = list(lora.target_modules or auto_targets(handle))
    check_targets(handle.module, targets)
    if quantized:
        from edgekit.compress.nf4_cpu import fix_bitsandbytes_cpu_dequantize

        fix_bitsandbytes_cpu_dequantize()
        base = (
            _quantize_hf(handle, head) if handle.family == "hf" else _quantize_cnn(copy.deepcopy(handle.module), head)
        )
        if handle.family == "hf":
            import warnings

            with warnings.catch_warnings():  # a transformers deprecation inside peft
                warnings.simplefilter("ignore", FutureWarning)
                base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = copy.deepcopy(handle.module)
    task_type = "SEQ_CLS" if handle.spec.modality == "text" else None
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=[head],
        task_type=task_type,
    )
    adapted = copy.copy(handle)
    adapted.module = peft.get_peft_model(base, config)
    info = {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": targets,
        "trainable_parameters": sum(p.numel() for p in adapted.module.parameters() if p.requires_grad),
    }
    adapted.extra = {**handle.extra, "lora": info}
    if quantized:
        adapted.extra["quantization"] = {
            "base": "nf4",
            "double_quant": True,
            "blocksize": 64,
            "compute_dtype": "float32",
            "skipped": [head],
            "kernels": "bitsandbytes Linear4bit"
            if handle.family == "hf"
            else "NF4 codes dequantized per forward (no 4-bit conv kernel exists)",
        }
    return adapted


def merge_lora(adapted, template: torch.nn.Module) -> torch.nn.Module:
    """A full-precision copy of ``template`` (the original architecture) holding the adapted
    model's base weights (dequantized when NF4) plus LoRA updates, its trained head and buffers."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    inner = adapted.module.base_model.model
    merged = copy.deepcopy(template).cpu().float()
    layer_params = set()
    with torch.no_grad():
        for name, target in merged.named_modules():
            if not isinstance(target, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            layer_params.update({f"{name}.weight", f"{name}.bias"})
            source = inner.get_submodule(name)
            if hasattr(source, "modules_to_save"):
                source = source.modules_to_save["default"]
            delta = None
            if isinstance(source, LoraLayer):
                delta = source.get_delta_weight("default")
                source = source.get_base_layer()
            weight = source.weight
            if weight.__class__.__name__ == "Params4bit":
                full = dequantize_bnb_weight(weight, state=weight.quant_state).float()
            else:
                full = weight.float()
            if delta is not None:
                full = full + delta.float()
            target.weight.copy_(full.reshape(target.weight.shape).cpu())
            if target.bias is not None and source.bias is not None:
                target.bias.copy_(source.bias.float().cpu())
        # the rest (embeddings, norms, BatchNorm statistics) comes from the adapted model as it is now
        inner_state = {
            k.replace(".modules_to_save.default", "").replace(".base_layer", ""): v
            for k, v in inner.state_dict().items()
        }
        for key, value in merged.state_dict().items():
            if key not in layer_params and key in inner_state and inner_state[key].shape == value.shape:
                value.copy_(inner_state[key].to(value.dtype).cpu())
    merged.eval()
    return merged


def merge_report(adapted_logits, merged_logits) -> dict[str, Any]:
    import numpy as np

    diff = float(np.max(np.abs(adapted_logits - merged_logits))) if len(adapted_logits) else 0.0
    agree = float((adapted_logits.argmax(-1) == merged_logits.argmax(-1)).mean()) if len(adapted_logits) else 1.0
    return {"max_abs_logit_diff": diff, "label_agreement": agree, "examples": int(len(adapted_logits))}


def merge_checked(adapted, original, data, folder):
    """Save the adapters to ``folder/adapter``, merge them into a plain copy of ``original`` and
    check the merged model's logits against the adapted model's on the validation split. Returns
    (merged handle, report)."""
    import warnings

    from edgekit.train.evaluate import evaluate, predict_logits

    adapted_logits = predict_logits(adapted, data.val)
    adapted_metrics = evaluate(adapted, data.eval_split, desc="evaluate adapted model")
    with warnings.catch_warnings():  # peft cannot find a config for a base loaded from a temporary folder
        warnings.simplefilter("ignore")
        adapted.module.save_pretrained(folder / "adapter")
    merged = copy.copy(adapted)
    merged.module = merge_lora(adapted, original.module)
    report = merge_report(adapted_logits, predict_logits(merged, data.val))
    report["adapted_accuracy"] = adapted_metrics["accuracy"]
    report["against"] = "nf4 base + adapters" if "quantization" in adapted.extra else "base + adapters"
    log.info(
        f"  merged adapters into full precision: max |logit diff| {report['max_abs_logit_diff']:.2e}, label agreement "
        f"{report['label_agreement']:.2%} on {report['examples']} validation examples (vs the {report['against']} model)"
    )
    return merged, report
