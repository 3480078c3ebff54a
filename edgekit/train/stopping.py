"""How a training run stops early: SIGINT/SIGTERM after the current step with a checkpoint, or a
non-finite loss before it reaches the weights. Both end in one line naming what to do next."""

from __future__ import annotations

import signal
from typing import Any

import torch

from edgekit import log
from edgekit.errors import EdgekitError


class Interrupted(EdgekitError):
    exit_code = 130


class StopFlag:
    """SIGINT or SIGTERM sets a flag; the loop checkpoints after the current step and stops cleanly
    (exit 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self):
        self.set = False
        self.signum = None
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.set, self.signum = True, signum
        name = "interrupt" if signum == signal.SIGINT else "SIGTERM"
        log.warning(f"\n{name}: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            if previous is not None:
                signal.signal(signum, previous)


def check_finite(loss, desc: str, epoch: int, step: int, global_step: int, checkpoint) -> None:
    """Stop before a NaN or inf loss reaches the weights, naming where and what to change."""
    if torch.isfinite(loss.detach()).item():
        return
    kept = (
        f"; the last good checkpoint is kept in {checkpoint.path}"
        if checkpoint is not None and checkpoint.path.is_file()
        else ""
    )
    raise EdgekitError(
        f"{desc}: the training loss became {loss.item()} at epoch {epoch}, step {step} "
        f"(step {global_step + 1} overall){kept}; lower the learning rate (--lr) or check the data and "
        "settings for NaN/inf"
    )


def interrupted(signum, epoch: int, step: int, checkpoint) -> Interrupted:
    where = f" in {checkpoint.path}" if checkpoint is not None else ""
    interrupted = Interrupted(
        f"{'interrupted' if signum != signal.SIGTERM else 'terminated (SIGTERM)'} "
        f"at epoch {epoch}, step {step}; checkpoint saved{where}; rerun the same command with --resume to continue"
    )
    interrupted.exit_code = 143 if signum == signal.SIGTERM else 130
    return interrupted
