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

from edgekit.errors import EdgekitError
from edgekit.tasks import TaskSpec, task_spec

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
    def spec(self) -> TaskSpec:
        """The task's spec (what its data, score and exports look like)."""
        return task_spec(self.task)

    @property
    def input_names(self) -> list[str]:
        if self.spec.modality == "image":
            return ["pixel_values"]
        names = ["input_ids", "attention_mask"]
        if self.spec.generates:  # the encoder's inputs
            return names
        if getattr(self.module.config, "type_vocab_size", 0) and self.module.config.model_type in _TOKEN_TYPE_MODELS:
            names.append("token_type_ids")
        return names

    def logits(self, inputs: dict[str, torch.Tensor], module: torch.nn.Module | None = None) -> torch.Tensor:
        """The model's logits; ``module`` runs instead of ``self.module`` when given (the wrapper
        Accelerate puts around it for several processes: it has no ``config``)."""
        run = self.module if module is None else module
        if self.family == "torchvision":
            return run(inputs["pixel_values"])
        if self.spec.generates:  # teacher forcing: decoder logits for every target position
            return run(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
            ).logits
        return run(**{k: inputs[k] for k in self.input_names if k in inputs}).logits

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

    def convolutional(self) -> bool:
        """A CNN: convolutions outnumber linear layers (a ViT's one patch-embedding convolution does not
        make it one); the export's ``is_convolutional`` judges an ONNX graph the same way."""
        layers = [type(m) for m in self.module.modules()]
        convs = sum(issubclass(t, torch.nn.modules.conv._ConvNd) for t in layers)
        return convs > sum(issubclass(t, torch.nn.Linear) for t in layers)

    def example_inputs(self, batch: int = 2, seq_len: int = 16) -> dict[str, torch.Tensor]:
        if self.spec.modality == "image":
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
            "family": self.family,
            "arch": self.arch,
            "task": self.task,
            "label_names": self.label_names,
            "preprocessing": self.preprocessing,
            "source": self.source,
            "pretrained": self.pretrained,
            "parameters": self.parameter_count(),
            **self.extra,
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
                keep_pruned_vocabulary(self.tokenizer, folder)
        (folder / MODEL_INFO).write_text(json.dumps(self.info(), indent=2))
        return folder


PRUNED_VOCABULARY = "_edgekit_tokenizer_json"  # the tokenizer.json text a pruned tokenizer was read from


def keep_pruned_vocabulary(tokenizer, folder: Path) -> None:
    """Write a vocabulary-pruned tokenizer's own tokenizer.json over the one ``save_pretrained`` wrote.
    Such a WordPiece/BPE vocabulary maps many token strings to the [UNK] row
    (:mod:`edgekit.compress.vocab`), and the tokenizers library serializes a vocabulary from id ->
    token, which keeps one string per id: saved that way, [UNK]'s own string would be gone."""
    text = getattr(tokenizer, PRUNED_VOCABULARY, None)
    if text is not None:
        (Path(folder) / "tokenizer.json").write_text(text, encoding="utf-8")


def pruned_vocabulary(path: Path) -> str | None:
    """The tokenizer.json text at ``path`` when its vocabulary is a pruned one (strings sharing ids)."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    vocab = json.loads(text).get("model", {}).get("vocab")
    return text if isinstance(vocab, dict) and len(set(vocab.values())) < len(vocab) else None


def restore_pruned_vocabulary(tokenizer, source: str | Path):
    """``tokenizer`` with its Rust backend read from ``source``'s tokenizer.json as written, when that
    is a pruned vocabulary (transformers' loader rebuilds WordPiece/BPE from id -> token, which would
    lose the strings that share [UNK]'s id), and that text kept for :func:`keep_pruned_vocabulary`."""
    text = pruned_vocabulary(Path(source) / "tokenizer.json") if Path(source).is_dir() else None
    if text is not None and hasattr(tokenizer, "_tokenizer"):
        from tokenizers import Tokenizer

        tokenizer._tokenizer = Tokenizer.from_str(text)
        setattr(tokenizer, PRUNED_VOCABULARY, text)
    return tokenizer


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
