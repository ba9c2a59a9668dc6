"""The FAISS item index: exact answers, approximate kinds, save, load, add."""

from __future__ import annotations

import numpy as np
import pytest

from likely.config import ExactIndexConfig, HNSWIndexConfig, IVFIndexConfig
from likely.recall.index import ItemIndex, default_lists


def unit_vectors(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


KINDS = [
    ExactIndexConfig(),
    HNSWIndexConfig(neighbors=16, ef_construction=64, ef_search=128),
    IVFIndexConfig(lists=16, probe=16),
]


def test_exact_index_returns_the_brute_force_top_k():
    items, queries = unit_vectors(2000), unit_vectors(25, seed=1)
    ids = np.arange(2000) * 3 + 7  # any int64 ids
    scores, found = ItemIndex.build(items, ids, ExactIndexConfig()).search(queries, 50)
    brute = queries @ items.T  # (Q, N)
    expected = ids[np.argsort(-brute, axis=1, kind="stable")[:, :50]]
    assert np.array_equal(found, expected)
    assert np.allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :50], atol=1e-5)


@pytest.mark.parametrize("config", KINDS, ids=lambda c: c.kind)
def test_every_kind_finds_most_true_neighbours(config):
    items, queries = unit_vectors(3000), unit_vectors(20, seed=2)
    _, found = ItemIndex.build(items, np.arange(3000), config).search(queries, 100)
    truth = np.argsort(-(queries @ items.T), axis=1)[:, :100]
    overlap = np.mean(
        [len(set(a) & set(b)) / 100 for a, b in zip(found, truth, strict=True)]
    )
    assert overlap > 0.9, overlap


@pytest.mark.parametrize("config", KINDS, ids=lambda c: c.kind)
def test_save_load_round_trip_and_add_to_a_loaded_index(tmp_path, config):
    items, queries = unit_vectors(1000), unit_vectors(10, seed=3)
    index = ItemIndex.build(items, np.arange(1000), config)
    before = index.search(queries, 30)
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert loaded.config == config and len(loaded) == 1000
    after = loaded.search(queries, 30)
    assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])

    # A new item placed on the first query's direction is its best match.
    loaded.add(queries[:1], np.array([1000]))
    assert len(loaded) == 1001
    scores, found = loaded.search(queries[:1], 5)
    assert found[0, 0] == 1000 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    loaded.save(tmp_path)
    assert ItemIndex.load(tmp_path).search(queries[:1], 1)[1][0, 0] == 1000


def test_a_short_catalogue_pads_with_minus_one():
    index = ItemIndex.build(unit_vectors(5), np.arange(5), ExactIndexConfig())
    scores, found = index.search(unit_vectors(2, seed=4), 8)
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(found[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_bad_shapes_and_missing_files_are_explained(tmp_path):
    index = ItemIndex.build(unit_vectors(5), np.arange(5), ExactIndexConfig())
    with pytest.raises(ValueError, match=r"shape \(N, 16\), got \(2, 8\)"):
        index.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(ValueError, match="2 vectors but ids of shape"):
        index.add(unit_vectors(2), np.arange(3))
    with pytest.raises(FileNotFoundError, match="no item index"):
        ItemIndex.load(tmp_path)
    with pytest.raises(ValueError, match="lists is 50 but there are only 5"):
        ItemIndex.build(unit_vectors(5), np.arange(5), IVFIndexConfig(lists=50))


def test_default_ivf_lists_grow_with_the_catalogue():
    assert default_lists(10) == 1
    assert default_lists(10_000) == 256
    assert default_lists(1_000_000) == 4000
