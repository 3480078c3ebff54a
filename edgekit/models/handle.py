"""One wrapper, ``ModelHandle``, hides whether a model is torchvision or Hugging Face.

Everything downstream (training loop, export, evaluation) talks to the handle:
``handle.logits(inputs)``, ``handle.save(folder)``, ``handle.example_inputs()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgekit.artifacts import is_stage
from edgekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from edgekit.errors import EdgekitError

MODEL_SUBDIR = "model"
MODEL_INFO = "edgekit_model.json"
# where classifiers keep their head: HF (classifier, score), torchvision (fc, classifier, heads), timm-like (head)
HEAD_ATTRIBUTES = ("classifier", "fc", "heads", "head", "score")


@dataclass
class ModelHandle:
    module: torch.nn.Module
    family: str  # "torchvision" or "hf"
    arch: str
    task: str
    label_names: list[str]
    preprocessing: dict[str, Any]
    tokenizer: Any = None
    source: str = ""
    pretrained: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        if self.task == "image-classification":
            return ["pixel_values"]
        names = ["input_ids", "attention_mask"]
        if self.task == "text2text":
            return names
        if getattr(self.module.config, "type_vocab_size", 0) and self.module.config.model_type in _TOKEN_TYPE_MODELS:
            names.append("token_type_ids")
        return names

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.family == "torchvision":
            return self.module(inputs["pixel_values"])
        if self.task == "text2text":  # teacher forcing: decoder logits for every target position
            return self.module(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               labels=inputs["labels"]).logits
        return self.module(**{k: inputs[k] for k in self.input_names if k in inputs}).logits

    def head(self) -> torch.nn.Module:
        """The final classification layer (its input is the model's pooled feature)."""
        module = self.module
        if hasattr(module, "base_model") and hasattr(module.base_model, "model"):  # peft wrapper
            module = module.base_model.model
        for name in HEAD_ATTRIBUTES:
            head = getattr(module, name, None)
            if head is None:
                continue
            if hasattr(head, "modules_to_save"):  # peft ModulesToSaveWrapper
                head = head.modules_to_save["default"]
            if isinstance(head, torch.nn.Linear):
                return head
            linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
            if linears:
                return linears[-1]
        raise EdgekitError(f"cannot find the classification head of {self.arch}; feature distillation needs one")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def example_inputs(self, batch: int = 2, seq_len: int = 16) -> dict[str, torch.Tensor]:
        if self.task == "image-classification":
            size = self.preprocessing["image_size"]
            return {"pixel_values": torch.randn(batch, 3, size, size)}
        vocab = int(getattr(self.module.config, "vocab_size", 100))
        ids = torch.randint(5, max(vocab, 6), (batch, seq_len))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return inputs

    def info(self) -> dict[str, Any]:
        return {
            "family": self.family, "arch": self.arch, "task": self.task, "label_names": self.label_names,
            "preprocessing": self.preprocessing, "source": self.source, "pretrained": self.pretrained,
            "parameters": self.parameter_count(), **self.extra,
        }

    def save(self, stage_dir: Path) -> Path:
        """Write the model under ``stage_dir/model`` as safetensors (never pickle)."""
        folder = Path(stage_dir) / MODEL_SUBDIR
        folder.mkdir(parents=True, exist_ok=True)
        if self.family == "torchvision":
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, str(folder / "model.safetensors"))
        else:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            self.module.save_pretrained(folder, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(folder)
        (folder / MODEL_INFO).write_text(json.dumps(self.info(), indent=2))
        return folder


_TOKEN_TYPE_MODELS = {"bert", "xlnet", "electra", "mobilebert", "funnel", "layoutlm", "megatron-bert", "squeezebert"}


def default_lr(handle: ModelHandle) -> float:
    """Learning rates that hold across datasets: LoRA/QLoRA adapters at 5e-4 (few parameters, zero-
    initialised updates), transformers fine-tune at 5e-5, pretrained CNNs at 1e-4, CNNs from scratch
    at 1e-3 (AdamW)."""
    if hasattr(handle.module, "peft_config"):
        return 5e-4
    if handle.family == "hf":
        return 5e-5
    return 1e-4 if handle.pretrained else 1e-3


def is_torchvision_name(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def load_model(
    spec: str,
    *,
    task: str,
    label_names: list[str],
    pretrained: bool = False,
    image_size: int | None = None,
    max_length: int = 128,
    max_target_length: int = 128,
) -> ModelHandle:
    """Load ``spec`` for ``task`` with a head over ``label_names``.

    ``spec`` is an edgekit stage folder, a torchvision model name, a local Hugging Face
    folder or a Hugging Face hub id. Remote code is never executed.
    """
    path = Path(spec)
    if path.is_dir() and is_stage(path):
        return load_saved(path, label_names=label_names)
    if path.is_dir() and (path / MODEL_INFO).is_file():
        return load_saved(path.parent, label_names=label_names, folder=path)
    if task == "image-classification" and is_torchvision_name(spec):
        from edgekit.models.vision import build_torchvision

        module = build_torchvision(spec, len(label_names), pretrained)
        size = image_size or 224
        return ModelHandle(module, "torchvision", spec, task, list(label_names),
                           {"image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                           source=spec, pretrained=pretrained)
    if task == "image-classification" and not path.exists() and "/" not in spec:
        raise EdgekitError(
            f"unknown model {spec!r}: not a torchvision model, a folder or a Hugging Face id (owner/name); "
            "see torchvision.models.list_models() for names"
        )
    from edgekit.models.hf import load_hf

    return load_hf(spec, task=task, label_names=label_names, image_size=image_size, max_length=max_length,
                   max_target_length=max_target_length)


def load_saved(stage_dir: Path, *, label_names: list[str] | None = None, folder: Path | None = None) -> ModelHandle:
    folder = folder or Path(stage_dir) / MODEL_SUBDIR
    info_path = folder / MODEL_INFO
    if not info_path.is_file():
        raise EdgekitError(f"{stage_dir} holds no model ({MODEL_SUBDIR}/{MODEL_INFO} missing); pass a distill/finetune output folder")
    from edgekit.artifacts import read_json

    info = read_json(info_path, "save the model again (re-run the stage that wrote it)")
    _check_info(info, info_path)
    if label_names is not None and list(label_names) != list(info["label_names"]):
        raise EdgekitError(
            f"model in {stage_dir} was trained on labels {info['label_names']}, but the data has {list(label_names)}; "
            "use the same label set"
        )
    if info["family"] == "torchvision":
        from edgekit.models.vision import build_torchvision

        module = build_torchvision(info["arch"], len(info["label_names"]), pretrained=False)
        try:
            _load_weights(module, folder, info, strict=True)
        except Exception as exc:
            from edgekit.models.hf import _weights_error

            raise _weights_error(str(folder), exc) from None
        handle = ModelHandle(module, "torchvision", info["arch"], info["task"], info["label_names"], info["preprocessing"],
                             source=str(stage_dir), pretrained=True)
        if info.get("structure"):
            handle.extra["structure"] = info["structure"]
        return handle
    from edgekit.models.hf import load_hf

    handle = load_hf(str(folder), task=info["task"], label_names=info["label_names"],
                     image_size=info["preprocessing"].get("image_size"),
                     max_length=info["preprocessing"].get("max_length", 128),
                     max_target_length=info["preprocessing"].get("max_target_length", 128))
    handle.source = str(stage_dir)
    if info.get("structure"):  # structurally pruned: from_pretrained re-initialised the shrunk layers
        try:
            _load_weights(handle.module, folder, info, strict=False)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign weights
            from edgekit.models.hf import _weights_error

            raise _weights_error(str(folder), exc) from None
        handle.extra["structure"] = info["structure"]
    return handle


def _check_info(info, path: Path) -> None:
    """The model description a stage wrote: the right keys with the right types, else one clear line."""
    from edgekit.artifacts import check_fields

    check_fields(info, {"family": str, "arch": str, "task": str, "label_names": list, "preprocessing": dict}, path)
    if not all(isinstance(n, str) for n in info["label_names"]):
        raise EdgekitError(f"{path}: label_names must be a list of names; re-run the stage that wrote it")


def _load_weights(module: torch.nn.Module, folder: Path, info: dict[str, Any], strict: bool) -> None:
    """Load ``folder/model.safetensors`` into ``module``, first resizing its layers to the saved
    shapes when the model was structurally pruned."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    if info.get("structure"):  # layers are smaller than the architecture's
        from edgekit.compress.structured import fit_to_state_dict

        fit_to_state_dict(module, state, info["structure"].get("heads"))
    module.load_state_dict(state, strict=strict)
