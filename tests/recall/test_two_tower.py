"""The two-tower model, its in-batch softmax loss and the logQ correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from likely.config import ConfigError, parse_config
from likely.data.batches import BatchIterator, SplitArrays
from likely.data.encoders import EncodedColumns
from likely.data.prepare import write_split
from likely.models.inputs import FeatureLayout
from likely.recall.two_tower import (
    TowerColumns,
    TwoTower,
    click_log_frequency,
    sampled_softmax_loss,
)

FEATURES = [
    {"name": "user_id", "kind": "sparse", "side": "user"},
    {"name": "region", "kind": "sparse", "side": "user", "embedding_dim": 4},
    {"name": "age", "kind": "dense", "side": "user"},
    {"name": "item_id", "kind": "sparse", "side": "item", "embedding_group": "item"},
    {"name": "brand", "kind": "sparse", "side": "item"},
    {"name": "price", "kind": "dense", "side": "item"},
    {"name": "hour", "kind": "sparse", "side": "context"},
    {
        "name": "recent_clicks",
        "kind": "sequence",
        "side": "user",
        "max_length": 5,
        "embedding_group": "item",
    },
]
VOCAB = {"user_id": 50, "region": 7, "item": 40, "brand": 9, "hour": 27}


def make_config(**recall):
    return parse_config(
        {
            "data": {"path": "x", "format": "csv", "user_column": "user_id"},
            "features": FEATURES,
            "embedding_dim": 8,
            "recall": {"output_dim": 6, "hidden_dims": [16], **recall},
        }
    )


def make_model(**recall) -> TwoTower:
    config = make_config(**recall)
    torch.manual_seed(0)
    return TwoTower(config, FeatureLayout.from_config(config, VOCAB))


def random_inputs(rows: int, seed: int = 0):
    """(sparse, dense, sequence, cross) in the prepared column order:
    sparse user_id, region, item_id, brand, hour; dense age, price."""
    generator = torch.Generator().manual_seed(seed)
    highs = [VOCAB["user_id"], VOCAB["region"], VOCAB["item"], VOCAB["brand"], 27]
    sparse = torch.stack(
        [torch.randint(3, high, (rows,), generator=generator) for high in highs], 1
    )
    dense = torch.randn(rows, 2, generator=generator)
    sequence = torch.randint(0, VOCAB["item"], (rows, 1, 5), generator=generator)
    return sparse, dense, sequence, torch.zeros(rows, 0, dtype=torch.long)


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("output_dim", [2, 6])
def test_towers_give_unit_vectors_of_the_output_width(rows, output_dim):
    model = make_model(output_dim=output_dim)
    user, item = model(*random_inputs(rows))
    assert user.shape == (rows, output_dim) and item.shape == (rows, output_dim)
    for vectors in (user, item):
        assert torch.allclose(vectors.norm(dim=1), torch.ones(rows), atol=1e-6)


def test_each_tower_reads_only_its_side():
    model = make_model().eval()
    sparse, dense, sequence, cross = random_inputs(4)
    user, item = model(sparse, dense, sequence, cross)
    # Change everything on the user side (ids, dense age, clicks) and context.
    other_user = sparse.clone()
    other_user[:, [0, 1, 4]] = torch.flip(sparse[:, [0, 1, 4]], dims=[0])
    other_dense = dense.clone()
    other_dense[:, 0] += 5.0
    user2, item2 = model(other_user, other_dense, torch.zeros_like(sequence), cross)
    assert torch.equal(item2, item)
    assert not torch.allclose(user2, user)
    # Change the item side: the user vectors stay.
    other_item = sparse.clone()
    other_item[:, [2, 3]] = torch.flip(sparse[:, [2, 3]], dims=[0])
    user3, item3 = model(other_item, dense, sequence, cross)
    assert torch.equal(user3, user) and not torch.allclose(item3, item)


def test_behaviour_and_item_ids_share_one_table():
    model = make_model()
    tables = [t.name for t in model.embedding.layout.tables]
    assert tables.count("item") == 1 and "hour" not in tables
    columns = TowerColumns.from_config(make_config())
    assert columns.user_sparse == (0, 1) and columns.item_sparse == (2, 3)
    assert columns.user_dense == (0,) and columns.item_dense == (1,)
    assert columns.user_sequences == (0,) and columns.item_id == 2


def test_in_batch_softmax_matches_a_hand_computed_case():
    # Scores u_i . v_j: row 0 -> [1, 0, 0.6], row 1 -> [0, 1, 0.8],
    # row 2 -> [0, 0, 0] with temperature 0.5 doubling them.
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids = torch.tensor([10, 11, 12])
    loss = sampled_softmax_loss(user, item, ids, temperature=0.5)

    def row_loss(logits: list[float], positive: int) -> float:
        return -logits[positive] + math.log(sum(math.exp(x) for x in logits))

    expected = (
        row_loss([2.0, 0.0, 1.2], 0)
        + row_loss([0.0, 2.0, 1.6], 1)
        + row_loss([0.0, 0.0, 0.0], 2)
    ) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_log_q_correction_subtracts_log_frequency_from_every_logit():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids = torch.tensor([10, 11, 12])
    q = torch.tensor([0.5, 0.3, 0.2])
    loss = sampled_softmax_loss(user, item, ids, 0.5, log_q=q.log())

    def row_loss(scores: list[float], positive: int) -> float:
        logits = [s - math.log(p) for s, p in zip(scores, q.tolist(), strict=True)]
        return -logits[positive] + math.log(sum(math.exp(x) for x in logits))

    expected = (
        row_loss([2.0, 0.0, 1.2], 0)
        + row_loss([0.0, 2.0, 1.6], 1)
        + row_loss([0.0, 0.0, 0.0], 2)
    ) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_log_q_correction_stops_favouring_the_popular_item():
    # A user scores a popular item (q = 0.9) a little above a rare one
    # (q = 0.1). Uncorrected, the softmax favours the popular item; with
    # log q subtracted the rare one wins, since the popular one's score is
    # mostly its sampling frequency.
    scores = torch.tensor([0.5, 0.3])
    log_q = torch.tensor([0.9, 0.1]).log()
    assert scores.argmax().item() == 0
    assert (scores / 1.0 - log_q).argmax().item() == 1
    # The same through the loss: the row whose positive is the rare item is
    # cheaper with the correction, the popular item's row dearer.
    user = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    item = torch.tensor([[0.5, math.sqrt(0.75)], [0.3, math.sqrt(0.91)]])
    ids = torch.tensor([1, 2])
    plain = sampled_softmax_loss(user, item, ids, 1.0)
    corrected = sampled_softmax_loss(user, item, ids, 1.0, log_q=log_q)
    rows_plain = [math.log(1 + math.exp(0.3 - 0.5)), math.log(1 + math.exp(0.2))]
    assert plain.item() == pytest.approx(sum(rows_plain) / 2, abs=1e-6)
    gap = -0.2 + math.log(0.9) - math.log(0.1)  # rare logit minus popular's
    rows_corrected = [math.log(1 + math.exp(gap)), math.log(1 + math.exp(-gap))]
    assert corrected.item() == pytest.approx(sum(rows_corrected) / 2, abs=1e-6)
    assert rows_corrected[1] < rows_plain[1] and rows_corrected[0] > rows_plain[0]


def test_a_repeated_item_is_not_its_own_negative():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with_repeat = sampled_softmax_loss(user, item, torch.tensor([4, 5, 4]), 1.0)
    # Rows 0 and 2 hold the same item: each sees only the middle negative.
    row = -1.0 + math.log(math.exp(1.0) + math.exp(0.0))
    middle = -1.0 + math.log(math.exp(1.0) + 2 * math.exp(0.0))
    assert with_repeat.item() == pytest.approx((2 * row + middle) / 3, abs=1e-6)


def test_click_log_frequency_is_the_share_of_clicks():
    log_q = click_log_frequency(np.array([3, 3, 3, 4]), 6)
    assert np.exp(log_q[3]) == pytest.approx(0.75)
    assert np.exp(log_q[4]) == pytest.approx(0.25)
    assert np.isfinite(log_q).all()


def test_training_moves_the_loss_down_on_a_learnable_case():
    # Each user's id decides the item it clicks: the towers can learn it.
    model = make_model(temperature=0.1)
    sparse, dense, sequence, cross = random_inputs(64)
    sparse[:, 2] = 3 + sparse[:, 0] % 20
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        user, item = model(sparse, dense, sequence, cross)
        loss = sampled_softmax_loss(user, item, sparse[:, 2], 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_batch_iterator_can_batch_a_subset_of_rows(tmp_path):
    n = 50
    rows = np.arange(n)
    write_split(
        tmp_path / "train",
        EncodedColumns(
            sparse=rows[:, None].astype(np.int32),
            dense=np.zeros((n, 0), np.float32),
            sequence=np.zeros((n, 1, 1), np.int32),
            cross=np.zeros((n, 0), np.int32),
            label=(rows % 3 == 0).astype(np.float32),
            user=rows.astype(np.int64),
            day=np.zeros(n, np.int32),
        ),
    )
    split = SplitArrays(tmp_path / "train")
    clicked = np.flatnonzero(rows % 3 == 0)
    iterator = BatchIterator(split, 4, seed=1, rows=clicked)
    seen = [i for b in iterator.batches(0) for i in b.sparse[:, 0].tolist()]
    # 17 clicked rows in batches of 4: the lone 17th joins the last batch.
    assert sorted(seen) == clicked.tolist() and len(iterator) == 4
    assert all(b.label.eq(1).all() for b in iterator.batches(1))
    again = [i for b in iterator.batches(0, start=2) for i in b.sparse[:, 0].tolist()]
    assert again == seen[8:]
    # Without rows, every row as before.
    assert len(BatchIterator(split, 4, seed=1)) == 13


def test_recall_section_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"recall\.index: .*'annoy'.*'exact'"):
        make_config(index={"kind": "annoy"})
    with pytest.raises(ConfigError, match=r"recall\.item_feature 'brandz'"):
        make_config(item_feature="brandz")
    with pytest.raises(ConfigError, match=r"recall\.item_feature 'user_id'.*user"):
        make_config(item_feature="user_id")
    with pytest.raises(ConfigError, match=r"recall\.temperature"):
        make_config(temperature=0)
    hnsw = make_config(index={"kind": "hnsw", "ef_search": 64})
    assert hnsw.recall.index.kind == "hnsw" and hnsw.recall.index.ef_search == 64


def test_configs_without_a_recall_section_need_no_item_feature():
    config = parse_config(
        {
            "data": {"path": "x", "format": "csv"},
            "features": [{"name": "a", "kind": "sparse"}],
        }
    )
    assert config.recall.index.kind == "exact"
    with pytest.raises(ValueError, match="recall.item_feature 'item_id'"):
        config.check_recall()
