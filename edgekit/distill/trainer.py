"""The one training loop. Fine-tuning a teacher and distilling a student are the same loop:
distillation only adds teacher logits, looked up by example index from a table computed once."""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from edgekit.data.splits import Split, TaskData
from edgekit.data.torch_data import make_dataset, make_loader
from edgekit.distill.losses import kd_loss
from edgekit.metrics import classification_metrics
from edgekit.models.handle import ModelHandle, default_lr


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    lr: float = 0.0


def predict_logits(handle: ModelHandle, split: Split, batch_size: int = 128, desc: str | None = None,
                   device: torch.device | None = None) -> np.ndarray:
    """Logits of ``handle`` for every example of ``split``, in split order."""
    device = device or pick_device()
    handle.module.to(device)
    return _predict_dataset(handle, make_dataset(handle, split), batch_size, device, desc)


def evaluate(handle: ModelHandle, split: Split, batch_size: int = 128, desc: str | None = None) -> dict[str, Any]:
    logits = predict_logits(handle, split, batch_size, desc)
    return classification_metrics(split.labels, logits.argmax(-1), handle.label_names)


def _schedule(optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    handle: ModelHandle,
    data: TaskData,
    cfg,
    *,
    seed: int,
    teacher_logits: np.ndarray | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    desc: str = "train",
) -> TrainResult:
    """Train ``handle`` in place on ``data.train``; keep the weights of the best validation epoch.

    ``teacher_logits[i]`` are the teacher's logits for training example ``i``: with them the loss is
    Hinton KD, without them plain cross-entropy.
    """
    seed_everything(cfg.seed if cfg.seed is not None else seed)
    device = pick_device()
    module = handle.module.to(device)
    lr = cfg.lr or default_lr(handle)
    train_loader = make_loader(make_dataset(handle, data.train), cfg.batch_size, shuffle=True, seed=seed)
    val_dataset = make_dataset(handle, data.val)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_loader)
    scheduler = _schedule(optimizer, total, cfg.warmup_fraction)
    table = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    result = TrainResult(best_epoch=0, best_val_accuracy=-1.0, lr=lr)
    best_state = None
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        epoch_start, total_loss, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(train_loader, desc=f"{desc} epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr)
        for indices, inputs, labels in bar:
            inputs = {k: v.to(device) for k, v in inputs.items()}
            labels = labels.to(device)
            with autocast:
                logits = handle.logits(inputs)
            teacher = table[indices].to(device) if table is not None else None
            loss = kd_loss(logits.float(), teacher, labels, temperature, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        epoch_seconds = time.perf_counter() - epoch_start
        val_logits = _predict_dataset(handle, val_dataset, cfg.batch_size, device)
        val_acc = float((val_logits.argmax(-1) == data.val.labels).mean())
        result.history.append({"epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_accuracy": val_acc,
                               "epoch_seconds": epoch_seconds})
        print(f"  {desc} epoch {epoch}/{cfg.epochs}: loss {total_loss / max(seen, 1):.4f}, "
              f"val accuracy {val_acc:.2%}, {epoch_seconds:.1f} s", file=sys.stderr)
        if val_acc > result.best_val_accuracy:
            result.best_val_accuracy, result.best_epoch = val_acc, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    handle.module = module.cpu()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _predict_dataset(handle: ModelHandle, dataset, batch_size: int, device, desc: str | None = None) -> np.ndarray:
    handle.module.eval()
    loader = make_loader(dataset, batch_size, shuffle=False)
    outputs = np.zeros((len(dataset), len(handle.label_names)), dtype=np.float32)
    for indices, inputs, _ in tqdm(loader, desc=desc, leave=False, disable=desc is None, file=sys.stderr):
        outputs[indices.numpy()] = handle.logits({k: v.to(device) for k, v in inputs.items()}).float().cpu().numpy()
    return outputs
