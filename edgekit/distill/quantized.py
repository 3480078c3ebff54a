"""Self-distillation into a 4-bit copy (seed 003): the student is the teacher's own weights loaded
in NF4 (bitsandbytes, double quantization; the classification head stays in full precision) with
LoRA adapters (peft) trained on the teacher's logits.

The student is saved as a plain full-precision model: every quantized layer becomes the
dequantized NF4 weight plus its LoRA update (W = dequant(W_nf4) + B·A·scale), i.e. exactly the
weights the adapters were trained against, so export needs neither peft nor bitsandbytes. The
adapters are kept beside it (``adapter/``) for users who want the 4-bit model itself.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch

from edgekit.errors import EdgekitError

_TARGET_CANDIDATES = (("query", "value"), ("q", "v"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))


def head_name(module: torch.nn.Module) -> str:
    for name in ("classifier", "score", "fc", "head"):
        if getattr(module, name, None) is not None:
            return name
    raise EdgekitError(f"cannot find the classification head of {type(module).__name__}")


def auto_targets(module: torch.nn.Module) -> list[str]:
    """query/value projections for attention models (BERT, ViT: 'query'/'value'; T5: 'q'/'v')."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in _TARGET_CANDIDATES:
        if set(pair) <= leaf_names:
            return list(pair)
    head = head_name(module)
    return sorted(n for n in leaf_names if n != head)


def check_targets(module: torch.nn.Module, targets: list[str]) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    missing = [t for t in targets if t not in leaf_names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)})
        raise EdgekitError(f"LoRA target module(s) {', '.join(missing)} not found in the model; "
                           f"its linear layers are named: {', '.join(linear[:20])}")


def nf4_lora_student(teacher, lora):
    """A copy of ``teacher`` (an HF ModelHandle) with its linear layers in NF4 and LoRA adapters on
    ``lora.target_modules`` (default: query/value); only adapters and head train. ``lora`` is the
    recipe's :class:`edgekit.recipe.LoraConfig`."""
    if teacher.family != "hf":
        raise EdgekitError(f"self-quantized distillation needs a Hugging Face model (BERT-like, ViT); {teacher.arch} is "
                           "a torchvision model")
    try:
        import bitsandbytes  # noqa: F401
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise EdgekitError(f"self-quantized distillation needs bitsandbytes and peft ({exc}); pip install 'edgekit[train]'") from None
    head = head_name(teacher.module)
    targets = lora.target_modules or auto_targets(teacher.module)
    check_targets(teacher.module, targets)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=[head])
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    with tempfile.TemporaryDirectory(prefix="edgekit-nf4-") as tmp:
        teacher.module.save_pretrained(tmp, safe_serialization=True)
        model = type(teacher.module).from_pretrained(tmp, quantization_config=quant, device_map=device_map)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    task_type = "SEQ_CLS" if teacher.task == "text-classification" else None
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        modules_to_save=[head], task_type=task_type)
    peft_model = get_peft_model(model, config)
    student = copy.copy(teacher)
    student.module = peft_model
    student.extra = {**teacher.extra, "quantization": {"base": "nf4", "double_quant": True, "compute_dtype": "float32",
                                                       "skipped": [head]},
                     "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": targets}}
    return student


def merge_nf4_lora(student, template: torch.nn.Module) -> torch.nn.Module:
    """A full-precision copy of ``template`` (the teacher's architecture) holding the student's
    dequantized NF4 weights plus LoRA updates, and its trained head."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    inner = student.module.base_model.model
    merged = copy.deepcopy(template).cpu().float()
    with torch.no_grad():
        for name, target in merged.named_modules():
            if not isinstance(target, torch.nn.Linear):
                continue
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
            target.weight.copy_(full.cpu())
            if target.bias is not None and source.bias is not None:
                target.bias.copy_(source.bias.float().cpu())
        # everything else (embeddings, norms) was frozen: copy it in case prepare_* changed its dtype
        linear_params = {f"{n}.{p}" for n, m in merged.named_modules() if isinstance(m, torch.nn.Linear)
                         for p in ("weight", "bias")}
        inner_state = {k.replace(".modules_to_save.default", "").replace(".base_layer", ""): v
                       for k, v in inner.state_dict().items()}
        for key, value in merged.state_dict().items():
            if key not in linear_params and key in inner_state and inner_state[key].shape == value.shape:
                value.copy_(inner_state[key].float().cpu())
    merged.eval()
    return merged


def merge_report(student_logits, merged_logits) -> dict[str, Any]:
    import numpy as np

    diff = float(np.max(np.abs(student_logits - merged_logits))) if len(student_logits) else 0.0
    agree = float((student_logits.argmax(-1) == merged_logits.argmax(-1)).mean()) if len(student_logits) else 1.0
    return {"max_abs_logit_diff": diff, "label_agreement": agree, "examples": int(len(student_logits))}
