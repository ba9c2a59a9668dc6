"""SparseAdam with its update done row-wise: gather, update, scatter.

`torch.optim.SparseAdam` computes the update of the rows a batch touched
through sparse-tensor arithmetic: two `sparse_mask` gathers and three
dense-plus-sparse additions, each built from a fresh uncoalesced sparse
tensor. On a CPU those took longer than the rest of the embedding work of a
DeepFM step (26 fields, batch 4096). `RowSparseAdam` does the same arithmetic
on the touched rows directly: two `index_select`, elementwise work on the
(U, D) rows, two `index_copy_` and one `index_add_`. State and hyperparameters
are SparseAdam's, so checkpoints of either load into the other.

What the CPU still pays here and a GPU would not: the gathers and scatters
of three (U, D) tensors from tables that do not fit in cache are
memory-bound, about 4 ms of an 80 ms bf16 DeepFM step at batch 4096 on 2
cores (torch.profiler, 2026-12-04); on a GPU they are a few microseconds of
bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class RowSparseAdam(torch.optim.SparseAdam):
    """SparseAdam (lazy Adam: only rows with a gradient move) done row-wise.

    Takes SparseAdam's arguments and keeps its state (`step`, `exp_avg`,
    `exp_avg_sq` per parameter). Gradients must be sparse; a coalesced one (as
    `likely.models.inputs.CoalescedEmbedding` gives) skips the coalescing sort.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError(
                        f"RowSparseAdam needs sparse gradients; a parameter of "
                        f"shape {tuple(param.shape)} has a dense one (build its "
                        "embedding with sparse=True, or use Adam)"
                    )
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                rows, values = _unique_rows(param.grad)  # (U,), (U, D)
                if values.numel() == 0:
                    continue
                if group.get("maximize", False):
                    values = -values
                exp_avg = state["exp_avg"].index_select(0, rows)  # (U, D)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)  # (U, D)
                exp_avg.lerp_(values, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(eps)).mul_(-step_size)
                # No `alpha=`: index_add_ with one takes a per-row slow path on
                # CPU, four times slower here.
                param.index_add_(0, rows, update)
        return loss


def _unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ids and values of a sparse gradient, one entry per row.

    Autograd drops the coalesced flag of a gradient it accumulates, so a
    gradient whose rows are already strictly increasing (as
    `CoalescedEmbedding` makes them) is recognised by one comparison instead
    of being sorted again.
    """
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() < 2 or not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
    return grad._indices()[0], grad._values()
