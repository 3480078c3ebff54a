"""Checkpoints of the training loop: where they go, what they hold, how a run continues from one.

A checkpoint holds the trainable weights, optimizer, scheduler, objective, every process's random
state and its share of the epoch so far, the history and the best epoch's weights, so a resumed run
continues exactly where it stopped (on CPU, in deterministic mode, to the same final weights).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.errors import EdgekitError
from edgekit.processes import is_main, world

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpointing:
    """Where and how often to checkpoint. ``tag`` identifies the run (config fingerprint): a
    checkpoint with another tag is never resumed."""

    folder: Path
    tag: str
    every_steps: int = 200
    resume: bool = False

    @property
    def path(self) -> Path:
        return Path(self.folder) / CHECKPOINT_FILE

    @classmethod
    def for_stage(cls, out: Path, tag: str, every_steps: int, resume: bool) -> Checkpointing:
        """The checkpoints of the stage written to ``out`` (in :func:`edgekit.layout.checkpoint_folder`);
        a run that does not resume starts from none."""
        from edgekit.layout import checkpoint_folder

        ckpt = cls(checkpoint_folder(out), tag=tag, every_steps=every_steps, resume=resume)
        if not resume and is_main():
            shutil.rmtree(ckpt.folder, ignore_errors=True)
        return ckpt


@dataclass
class Restored:
    """Where a run starts: epoch 1 step 0 for a fresh run, else what the checkpoint saved."""

    epoch: int = 1
    step: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None
    share: dict[str, Any] | None = None  # this process's RNG, loss sum and count mid-epoch (several processes)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = json.loads(state["numpy_rest"])
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt: Checkpointing, state: dict[str, Any]) -> None:
    ckpt.folder.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.path.with_name(CHECKPOINT_FILE + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, ckpt.path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError of its writer
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(ckpt.folder).free
        raise EdgekitError(
            f"cannot write the checkpoint {ckpt.path} ({free / 1e6:.0f} MB free there: "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0][:80]}); free some space or use another --out"
        ) from None
    except BaseException:  # an interrupt: no half-written checkpoint.pt.tmp stays behind
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(ckpt: Checkpointing) -> dict[str, Any] | None:
    if not ckpt.path.is_file():
        return None
    try:
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgekitError(
            f"cannot read checkpoint {ckpt.path} ({str(exc).splitlines()[0]}); delete it to start over"
        ) from None
    if state.get("tag") != ckpt.tag:
        raise EdgekitError(
            f"checkpoint {ckpt.path} was written by a run with other settings; "
            "rerun with the same settings, or delete it (or drop --resume) to start over"
        )
    return state


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers (frozen weights, e.g. a 4-bit base, never change)."""
    state = {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}
    state.update({name: b.detach().cpu().clone() for name, b in module.named_buffers()})
    return state


def restore(checkpoint, module, optimizer, scheduler, objective, result, rank: int = 0) -> Restored:
    """Continue from ``checkpoint`` when asked and one exists: the weights, optimizer, schedule,
    objective and RNG state go back in place and ``result`` gets the history so far."""
    saved = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.resume else None
    if saved is None:
        return Restored()
    ranks = saved.get("ranks") or []
    share = ranks[rank] if rank < len(ranks) else None
    written_by = int(saved.get("processes", 1))
    if written_by != world():  # a step of the epoch means other examples with another process count
        how = "without accelerate launch" if written_by == 1 else f"with accelerate launch --num_processes {written_by}"
        raise EdgekitError(
            f"checkpoint {checkpoint.path} was written by {written_by} process{'es' if written_by > 1 else ''} and "
            f"this run has {world()}; resume it {how} (or drop --resume to start over)"
        )
    module.load_state_dict(saved["module"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    objective.load_state_dict(saved["objective"], strict=False)
    set_rng_state(share["rng"] if share else saved["rng"])
    epoch, step, global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    result.history = json.loads(saved["history"])
    result.best_epoch = saved["best_epoch"]
    result.best_val_score = float(saved.get("best_val_score", saved.get("best_val_accuracy", -1.0)))
    result.resumed_from = {"epoch": epoch, "step_in_epoch": step, "global_step": global_step}
    return Restored(epoch, step, global_step, float(saved["elapsed"]), saved.get("best_state") or None, share)


def epoch_totals(result, first: int, share: dict | None = None) -> tuple[float, int, float]:
    """(loss sum, examples seen, seconds) of the epoch so far: zeros, or what a checkpoint taken mid-
    epoch saved (in the history's tail; this process's own share when several wrote it)."""
    if first == 0:
        return 0.0, 0, 0.0
    partial = result.history.pop() if result.history and result.history[-1].get("partial") else {}
    if share is not None:
        return float(share["loss_sum"]), int(share["seen"]), partial.get("epoch_seconds", 0.0)
    return partial.get("loss_sum", 0.0), partial.get("seen", 0), partial.get("epoch_seconds", 0.0)
