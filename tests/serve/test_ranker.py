"""The serving ranker scores exactly what the trained run scores offline."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from likely.recall.artifact import Recaller
from likely.recall.window import RowEncoder
from likely.serve.ranker import Ranker, model_version
from likely.train.predict import load_run


@pytest.fixture(scope="module")
def catalogue(served_world):
    recaller = Recaller.load(served_world["recall"], with_index=False)
    return recaller.items, recaller.users, recaller.rows.template


@pytest.fixture(scope="module")
def ranker(served_world, catalogue):
    items, _, template = catalogue
    return Ranker.load(served_world["ranking"], items, template)


def offline_logits(run_dir, user, context, item_rows):
    """The slow, obvious way: one full raw row per candidate, encoded whole."""
    run = load_run(run_dir)
    items, template = item_rows
    user_columns = {k: [v] * items.height for k, v in user.items()}
    frame = items.with_columns(
        [pl.Series(k, v) for k, v in user_columns.items() if k not in items.columns]
        + [pl.lit(v).alias(k) for k, v in context.items()]
    )
    rows = RowEncoder.for_config(run.config, run.encoders, template, "2026-11-08")
    return run.logits(rows.encode(frame))


def test_batched_scores_equal_row_by_row_encoding(served_world, catalogue, ranker):
    items, users, template = catalogue
    user = users.row(3, named=True)
    candidates = np.array([5, 0, 17, 3, 120, 9])
    context = {"hour": 20, "platform": "app", "position": 0}
    expected = offline_logits(
        served_world["ranking"], user, context, (items[candidates], template)
    )
    got = ranker.logits(user, {}, candidates)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_context_overrides_the_defaults(catalogue, ranker):
    _, users, _ = catalogue
    user = users.row(0, named=True)
    candidates = np.arange(20)
    base = ranker.logits(user, {}, candidates)
    web = ranker.logits(user, {"platform": "web", "hour": 3}, candidates)
    assert not np.allclose(base, web)
    assert np.array_equal(ranker.logits(user, {"platform": "app"}, candidates), base)


def test_history_changes_the_scores(catalogue, ranker):
    items, users, _ = catalogue
    user = dict(users.row(1, named=True))
    candidates = np.arange(30)
    before = ranker.logits({**user, "recent_clicks": []}, {}, candidates)
    clicked = items["item_id"].head(5).to_list()
    after = ranker.logits({**user, "recent_clicks": clicked}, {}, candidates)
    assert not np.allclose(before, after)


def test_rank_returns_the_best_k_in_order(catalogue, ranker):
    _, users, _ = catalogue
    user = users.row(2, named=True)
    candidates = np.arange(ranker.num_items)[::-1].copy()
    logits = ranker.logits(user, {}, candidates)
    ranked = ranker.rank(user, {}, candidates, k=25)
    assert len(ranked.rows) == 25
    assert np.array_equal(candidates[ranked.order], ranked.rows)
    assert np.all(np.diff(ranked.logits) <= 0)
    np.testing.assert_allclose(ranked.logits, np.sort(logits)[::-1][:25], rtol=1e-6)
    assert np.all((ranked.probs > 0) & (ranked.probs < 1))
    whole = ranker.rank(user, {}, candidates[:10], k=600)
    assert len(whole.rows) == 10


def test_cold_user_and_empty_context_are_scored(ranker):
    logits = ranker.logits({}, {}, np.arange(10))
    assert logits.shape == (10,) and np.isfinite(logits).all()
    ranker.check({})


def test_bad_values_and_rows_are_named(catalogue, ranker):
    with pytest.raises(ValueError, match=r"hour: 'noon' is not a Int8"):
        ranker.logits({}, {"hour": "noon"}, np.arange(3))
    with pytest.raises(IndexError, match=r"\[100000\] are outside the catalogue"):
        ranker.logits({}, {}, np.array([0, 100_000]))
    assert ranker.logits({}, {}, np.array([], dtype=np.int64)).shape == (0,)


def test_version_names_the_weights(served_world, ranker):
    assert ranker.version == model_version(served_world["ranking"])
    assert ranker.version.startswith("ranking@") and len(ranker.version) == 20


def test_warmed_and_cached_parts_score_the_same(served_world, catalogue):
    items, users, template = catalogue
    cold = Ranker.load(served_world["ranking"], items, template)
    warmed = Ranker.load(served_world["ranking"], items, template)
    warmed.warm(users)
    assert len(warmed.query._parts) >= users.height
    candidates = np.arange(40)
    for row in (0, 5, 9):
        user = users.row(row, named=True)
        context = {"hour": 7}
        first = cold.logits(user, context, candidates)
        np.testing.assert_array_equal(warmed.logits(user, context, candidates), first)
        np.testing.assert_array_equal(cold.logits(user, context, candidates), first)


def test_bf16_scores_are_close_to_fp32(catalogue, ranker):
    _, users, _ = catalogue
    user = users.row(6, named=True)
    candidates = np.arange(200)
    exact = ranker.logits(user, {}, candidates)
    ranker.bf16 = True
    try:
        fast = ranker.logits(user, {}, candidates)
    finally:
        ranker.bf16 = False
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, exact, atol=0.1)
    top = set(np.argsort(-exact)[:100]) & set(np.argsort(-fast)[:100])
    assert len(top) >= 90


def test_memoised_behaviour_ids_are_those_of_encoding_the_list(catalogue, ranker):
    items, _, _ = catalogue
    query = ranker.query
    column = query.sequence_columns[0]
    length = query._lengths[0]
    known = items["item_id"].head(length + 5).to_list()
    lists = [
        known[:3],
        known,  # longer than max_length: the last ones are kept
        [known[0], None, known[0], 10**12],  # a repeat, a null, an unseen item
        [],
        known[2:6][::-1],  # all memoised by now, in another order
    ]
    for values in lists:
        memoised = query._sequences({column: values})
        general = query.encoders.sequence_ids(query.typed_row({column: values}))
        np.testing.assert_array_equal(memoised, general, err_msg=str(values))
    assert (column, known[0]) in query._item_ids
    # A user without history (no value, or None) gets the padding it would.
    empty = query.encoders.sequence_ids(query.typed_row({column: []}))
    np.testing.assert_array_equal(query._sequences({}), empty)
    np.testing.assert_array_equal(query._sequences({column: None}), empty)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_a_cuda_ranker_without_cuda_is_refused_with_the_reason(served_world, catalogue):
    items, _, template = catalogue
    run = load_run(served_world["ranking"])
    serve = run.config.serve.model_copy(update={"device": "cuda"})
    run.config = run.config.model_copy(update={"serve": serve})
    with pytest.raises(ValueError, match="'cuda' was asked for but no CUDA device"):
        Ranker(run, items, template)


def test_the_ranker_scores_on_its_device(ranker):
    # `serve.device: auto` is the CPU here; on a GPU machine, CUDA.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ranker.device.type == expected
    assert next(ranker.run.model.parameters()).device.type == expected
