"""Which process this is when a command runs under ``accelerate launch`` / ``torchrun`` (torch-free:
the launchers' ``RANK`` and ``WORLD_SIZE``).

Every process trains its shard of each step; the main one (rank 0) alone writes: stage folders, locks,
checkpoints, the transfer-set cache and the command's output. The others build their stage in a
scratch folder that is thrown away, read the transfer set the main process computed, and stay quiet.
"""

from __future__ import annotations

import os


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main() -> bool:
    return rank() == 0
