"""Latency of a PyTorch model (batch 1, CPU), for stage tables: the same loop as the ONNX bench."""

from __future__ import annotations

from typing import Any

import torch

from edgekit.bench.harness import time_loop


@torch.inference_mode()
def torch_latency(handle, runs: int = 50, warmup: int = 5, min_seconds: float = 0.5) -> dict[str, Any]:
    handle.module.cpu().eval()
    inputs = handle.example_inputs(batch=1, seq_len=min(128, int(handle.preprocessing.get("max_length", 128))))
    stats = time_loop(lambda: handle.logits(inputs), warmup=warmup, runs=runs, min_seconds=min_seconds, max_seconds=30)
    return {
        "runtime": "pytorch-eager-fp32",
        "threads": torch.get_num_threads(),
        "batch_size": 1,
        **{k: stats[k] for k in ("p50", "p90", "mean", "std", "runs")},
    }
