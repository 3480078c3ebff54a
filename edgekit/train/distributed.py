"""What the training loop does differently on several processes (``accelerate launch``): the
objective's own gradients averaged, epoch totals summed, values gathered, a stop flag shared. Each
is the identity in a single process."""

from __future__ import annotations

from typing import Any

import torch


def average_objective_grads(params: list[torch.nn.Parameter], processes: int) -> None:
    """DDP averages the model's gradients across processes; the objective's weights are not in the
    model, so their gradients are averaged here (or each process's copy would drift apart)."""
    if processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= processes


def across_processes(acc, loss_sum: float, seen: int) -> tuple[float, int]:
    """The epoch's loss sum and example count over every process (each saw its shard)."""
    if acc.num_processes == 1:
        return loss_sum, seen
    totals = acc.reduce(torch.tensor([loss_sum, float(seen)], dtype=torch.float64, device=acc.device), "sum")
    return float(totals[0]), int(totals[1])


def gather(acc, value: Any) -> list[Any]:
    """``value`` from every process, in rank order (``[value]`` in a single process)."""
    if acc.num_processes == 1:
        return [value]
    out: list[Any] = [None] * acc.num_processes
    torch.distributed.all_gather_object(out, value)
    return out


def any_process(acc, flag: bool) -> bool:
    """True when ``flag`` is set in any process (a signal reaches each at a slightly different step)."""
    if acc.num_processes == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=acc.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
