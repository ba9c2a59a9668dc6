"""The lazy L2 penalty on embedding rows: what it sums, and that it shrinks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from likely.train.penalty import EmbeddingPenalty


def test_each_distinct_row_counts_once_and_gradients_stay_on_touched_rows():
    table = nn.Embedding(6, 3, sparse=True)
    penalty = EmbeddingPenalty(table, weight=0.1)
    ids = torch.tensor([[1, 1, 1], [4, 1, 4]])
    table(ids)
    value = penalty.take()
    expected = 0.1 * (table.weight[1].pow(2).sum() + table.weight[4].pow(2).sum())
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    grad = table.weight.grad.coalesce()
    assert sorted(grad.indices()[0].tolist()) == [1, 4]
    dense = grad.to_dense()
    assert torch.allclose(dense[1], 0.2 * table.weight[1].detach(), atol=1e-6)
    assert penalty.take() is None  # taken: nothing left until the next forward


def test_no_penalty_in_evaluation_or_at_weight_zero():
    table = nn.Embedding(4, 2)
    penalty = EmbeddingPenalty(table, weight=1.0)
    with torch.no_grad():
        table(torch.tensor([0, 1]))
    assert penalty.take() is None
    off = EmbeddingPenalty(table, weight=0.0)
    table(torch.tensor([0, 1]))
    assert off.take() is None
    assert penalty.take() is not None  # the weighted one saw that lookup
    penalty.remove()
    table(torch.tensor([2]))
    assert penalty.take() is None


def test_the_penalty_shrinks_the_rows_it_touches():
    torch.manual_seed(0)
    norms = {}
    for weight in (0.0, 1.0):
        table = nn.Embedding(50, 4, sparse=True)
        nn.init.normal_(table.weight, std=1.0)
        optimizer = torch.optim.SparseAdam(table.parameters(), lr=0.05)
        penalty = EmbeddingPenalty(table, weight=weight)
        for _ in range(50):
            optimizer.zero_grad()
            ids = torch.randint(0, 25, (32,))  # rows 25.. are never touched
            out = table(ids)
            loss = (out.sum(dim=1) - 1.0).pow(2).mean()
            extra = penalty.take()
            (loss if extra is None else loss + extra).backward()
            optimizer.step()
        norms[weight] = table.weight.detach()[:25].norm().item()
        untouched = table.weight.detach()[25:]
        assert untouched.norm().item() > 0  # never looked up, never decayed
    assert norms[1.0] < 0.7 * norms[0.0]
