"""RowSparseAdam against torch's SparseAdam, and the coalesced embedding gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from likely.models.inputs import CoalescedEmbedding
from likely.train.sparse_adam import RowSparseAdam


def _train(table: nn.Embedding, optimizer, batches) -> None:
    for ids in batches:
        optimizer.zero_grad()
        (table(ids) * torch.linspace(-1, 1, table.embedding_dim)).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("coalesced", [False, True])
def test_row_sparse_adam_matches_sparse_adam(coalesced):
    torch.manual_seed(0)
    reference = nn.Embedding(40, 3, sparse=True)
    kind = CoalescedEmbedding if coalesced else nn.Embedding
    table = kind(40, 3, sparse=True)
    table.load_state_dict(reference.state_dict())
    # Repeated ids within a batch: their gradients must be summed first.
    batches = [torch.randint(0, 40, (16, 5)) for _ in range(12)]
    _train(reference, torch.optim.SparseAdam(reference.parameters(), lr=0.05), batches)
    optimizer = RowSparseAdam(table.parameters(), lr=0.05)
    _train(table, optimizer, batches)
    torch.testing.assert_close(table.weight, reference.weight, rtol=1e-5, atol=1e-6)

    # Same state layout as SparseAdam: a checkpoint of one loads into the other.
    other = torch.optim.SparseAdam(reference.parameters(), lr=0.05)
    other.load_state_dict(optimizer.state_dict())
    assert other.state[reference.weight]["step"] == 12


def test_row_sparse_adam_refuses_a_dense_gradient():
    weight = nn.Parameter(torch.zeros(4, 2))
    weight.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match=r"sparse gradients.*\(4, 2\)"):
        RowSparseAdam([weight]).step()


def test_coalesced_embedding_gradient_equals_the_plain_one():
    torch.manual_seed(1)
    plain = nn.Embedding(30, 4, sparse=True)
    table = CoalescedEmbedding(30, 4, sparse=True)
    table.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 30, (8, 6))
    upstream = torch.randn(8, 6, 4)
    (plain(ids) * upstream).sum().backward()
    (table(ids) * upstream).sum().backward()
    expected = plain.weight.grad.coalesce()
    got = table.weight.grad
    rows = got._indices()[0]
    assert torch.equal(rows, torch.unique(ids))  # one sorted entry per id
    torch.testing.assert_close(got.to_dense(), expected.to_dense())


def test_coalesced_embedding_runs_forward_hooks_in_training():
    """The embedding penalty (`likely.train.penalty`) hooks every nn.Embedding."""
    table = CoalescedEmbedding(5, 2, sparse=True)
    seen = []
    table.register_forward_hook(lambda module, inputs, output: seen.append(output))
    output = table(torch.tensor([[0, 1, 2], [3, 4, 0]]))
    assert isinstance(table, nn.Embedding)
    assert len(seen) == 1 and seen[0] is output and output.requires_grad
