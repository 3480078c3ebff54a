"""Sequence-to-sequence (T5 and other encoder-decoders): data, token-level KD and generation metrics.

KD is token-level with teacher forcing (seed 002): at every target position the student matches
the teacher's distribution over the vocabulary, (1-α)·CE + α·T²·KL, padding ignored. Teacher and
student must share a vocabulary. Teacher logits are vocabulary-sized per token, so they are
computed batch by batch (teacher in eval mode) rather than cached on disk. Evaluation generates
(greedy) and scores corpus BLEU (sacrebleu) and ROUGE-L F1.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from edgekit.errors import EdgekitError
from edgekit.metrics import generation_metrics
from edgekit.train.objectives import Objective

IGNORE = -100


class Seq2SeqSplitDataset(Dataset):
    """Sources and targets tokenized once; batches padded to their longest source/target."""

    def __init__(self, split, tokenizer, max_length: int, max_target_length: int):
        self.split = split
        sources = tokenizer(list(split.items), truncation=True, max_length=max_length)
        targets = tokenizer(text_target=[str(t) for t in split.labels], truncation=True, max_length=max_target_length)
        self.input_ids, self.attention = sources["input_ids"], sources["attention_mask"]
        self.targets = targets["input_ids"]
        self.pad_id = tokenizer.pad_token_id or 0

    @classmethod
    def of(cls, handle, split) -> Seq2SeqSplitDataset:
        return cls(
            split,
            handle.tokenizer,
            handle.preprocessing["max_length"],
            handle.preprocessing.get("max_target_length", 128),
        )

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return index, (self.input_ids[index], self.attention[index]), self.targets[index]

    def collate(self, batch):
        indices = torch.tensor([b[0] for b in batch], dtype=torch.long)
        src = max(len(b[1][0]) for b in batch)
        tgt = max(len(b[2]) for b in batch)
        input_ids = torch.tensor([b[1][0] + [self.pad_id] * (src - len(b[1][0])) for b in batch], dtype=torch.long)
        attention = torch.tensor([b[1][1] + [0] * (src - len(b[1][1])) for b in batch], dtype=torch.long)
        labels = torch.tensor([b[2] + [IGNORE] * (tgt - len(b[2])) for b in batch], dtype=torch.long)
        return indices, {"input_ids": input_ids, "attention_mask": attention, "labels": labels}, labels


class Seq2SeqKD(Objective):
    """Token-level Hinton KD against a teacher run on the same batch (no cache: vocab-sized logits)."""

    def __init__(self, teacher_module: torch.nn.Module | None, temperature: float, alpha: float):
        super().__init__()
        self.teacher_module = [teacher_module]  # a list, so its weights are not part of this module's state
        self.temperature, self.alpha = temperature, alpha
        self.inputs: dict[str, torch.Tensor] | None = None

    def see_batch(self, inputs):
        self.inputs = inputs

    def loss(self, logits, features, indices, labels):
        mask = labels != IGNORE
        hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
        teacher = self.teacher_module[0]
        if teacher is None or self.alpha == 0:
            return hard
        with torch.no_grad():
            teacher.to(logits.device).eval()
            t_logits = teacher(**self.inputs).logits.float()
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, dim=-1), F.log_softmax(t_logits / t, dim=-1), reduction="none", log_target=True
        ).sum(-1)
        soft = (kl * mask).sum() / mask.sum().clamp(min=1) * (t * t)
        return (1 - self.alpha) * hard + self.alpha * soft


def token_cross_entropy() -> Seq2SeqKD:
    """Plain fine-tuning of an encoder-decoder: token-level cross-entropy on the targets."""
    return Seq2SeqKD(None, 1.0, 0.0)


def kd_objective(cfg, teachers, student, data) -> Seq2SeqKD:
    """Token-level KD from the first teacher, run on each batch (vocabulary-sized logits are not cached)."""
    from edgekit import registry

    if not registry.get("strategy", cfg.strategy).can("seq2seq") or cfg.feature_weight > 0:
        allowed = ", ".join(registry.names("strategy", seq2seq=True))
        raise EdgekitError(
            f"encoder-decoder distillation supports the {allowed} strategies without feature KD; "
            f"{cfg.strategy}{' with --feature-weight' if cfg.feature_weight else ''} is for classifiers"
        )
    check_vocabularies(teachers[0], student)
    return Seq2SeqKD(teachers[0].module, cfg.temperature, cfg.alpha)


def check_vocabularies(teacher, student) -> None:
    tv = getattr(teacher.module.config, "vocab_size", None)
    sv = getattr(student.module.config, "vocab_size", None)
    same_vocab = (
        teacher.tokenizer is None
        or student.tokenizer is None
        or teacher.tokenizer.get_vocab() == student.tokenizer.get_vocab()
    )
    if tv != sv or not same_vocab:
        raise EdgekitError(
            f"teacher and student tokenizers differ (vocabulary {tv} vs {sv} tokens); token-level KD needs "
            "one tokenizer: pick a student of the teacher's family, or derive it with --student-layers"
        )


@torch.no_grad()
def generate(
    handle, split, batch_size: int = 32, max_new_tokens: int | None = None, desc: str | None = None
) -> list[str]:
    from edgekit.train.data import make_dataset, make_loader

    device = next(handle.module.parameters()).device
    handle.module.eval()
    dataset = make_dataset(handle, split)
    loader = make_loader(dataset, batch_size, shuffle=False)
    max_new = max_new_tokens or int(handle.preprocessing.get("max_target_length", 128))
    outputs: list[str] = [""] * len(dataset)
    for indices, inputs, _ in tqdm(
        loader, desc=desc, leave=False, disable=True if desc is None else None, file=sys.stderr
    ):
        ids = handle.module.generate(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            max_new_tokens=max_new,
            num_beams=1,
            do_sample=False,
        )
        for i, text in zip(indices.tolist(), handle.tokenizer.batch_decode(ids, skip_special_tokens=True)):
            outputs[i] = text.strip()
    return outputs


def evaluate_seq2seq(handle, split, batch_size: int = 32, desc: str | None = None) -> dict[str, Any]:
    """BLEU and ROUGE-L of greedy generations (at most 64 sources a batch: generate() holds a cache each)."""
    from edgekit.train.evaluate import pick_device

    handle.module.to(pick_device())
    predictions = generate(handle, split, min(batch_size, 64), desc=desc)
    metrics = generation_metrics(predictions, [str(t) for t in split.labels])
    metrics["samples"] = [
        {"source": s, "prediction": p, "reference": str(r)}
        for s, p, r in list(zip(split.items, predictions, split.labels))[:5]
    ]
    return metrics
