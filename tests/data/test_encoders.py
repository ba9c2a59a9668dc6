import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from likely.config import parse_config
from likely.data.encoders import (
    FEW_ROWS,
    FIRST_ID,
    MISSING,
    OOV,
    PAD,
    PENDING_CHUNKS,
    FeatureEncoders,
    HashBuckets,
    QuantileBuckets,
    Vocabulary,
    stable_hash,
)


def config(features, crosses=()):
    return parse_config(
        {
            "data": {"path": "x.parquet", "format": "parquet", "user_column": "user"},
            "features": features,
            "crosses": list(crosses),
        }
    )


def test_vocabulary_orders_by_count_and_reserves_ids():
    vocab = Vocabulary(min_count=1).fit(pl.Series(["b", "a", "b", "c", "b", "a"]))
    ids = vocab.transform(pl.Series(["b", "a", "c", "zzz", None]))
    assert ids.tolist() == [FIRST_ID, FIRST_ID + 1, FIRST_ID + 2, OOV, MISSING]
    assert vocab.size == FIRST_ID + 3
    assert ids.dtype == np.int32


def test_min_count_sends_rare_values_to_oov():
    vocab = Vocabulary(min_count=2).fit(pl.Series([1, 1, 2, 3, 3, 3]))
    assert vocab.transform(pl.Series([3, 1, 2])).tolist() == [3, 4, OOV]


def test_extend_keeps_every_existing_id_and_appends_new():
    vocab = Vocabulary(min_count=1).fit(pl.Series([10, 20, 20, 30]))
    before = vocab.transform(pl.Series([10, 20, 30])).tolist()
    vocab.extend(pl.Series([40, 40, 10, 50, 20]))
    assert vocab.transform(pl.Series([10, 20, 30])).tolist() == before
    new = vocab.transform(pl.Series([40, 50])).tolist()
    assert sorted(new) == [FIRST_ID + 3, FIRST_ID + 4]
    assert vocab.size == FIRST_ID + 5
    counts = dict(zip(vocab.keys.to_list(), vocab.counts.tolist(), strict=True))
    assert counts == {20: 3, 10: 2, 30: 1, 40: 2, 50: 1}


def test_integer_text_and_integers_meet_in_one_vocabulary():
    vocab = Vocabulary(min_count=1).fit(pl.Series(["7", "8", "8"]))
    assert vocab.kind == "int"
    assert vocab.transform(pl.Series([8, 7, 9])).tolist() == [3, 4, OOV]


def test_leading_zeros_stay_text():
    vocab = Vocabulary(min_count=1).fit(pl.Series(["007", "7"]))
    assert vocab.kind == "str"
    assert len(set(vocab.transform(pl.Series(["007", "7"])).tolist())) == 2


def test_vocabulary_json_round_trip():
    vocab = Vocabulary(min_count=1).fit(pl.Series(["x", "y", "y"]))
    again = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    values = pl.Series(["y", "x", "q", None])
    assert again.transform(values).tolist() == vocab.transform(values).tolist()


def test_stable_hash_is_the_same_in_another_process():
    values = ["a", "", "héllo", "05db9164", "x" * 200]
    here = stable_hash(pl.Series(values)).tolist()
    code = (
        "import polars as pl; from likely.data.encoders import stable_hash; "
        f"print(stable_hash(pl.Series({values!r})).tolist())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout
    assert str(here) == there.strip()
    assert len(set(here)) == len(values)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=30))
def test_stable_hash_of_text_matches_fnv_reference(values):
    def reference(text):
        h = 0xCBF29CE484222325
        for byte in text.encode():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            h ^= h >> shift
            h = (h * mult) & 0xFFFFFFFFFFFFFFFF
        return h ^ (h >> 31)

    assert stable_hash(pl.Series(values, dtype=pl.String)).tolist() == [
        reference(v) for v in values
    ]


def test_hash_buckets_range_and_missing():
    buckets = HashBuckets(97)
    ids = buckets.transform(pl.Series(["a", "b", None, "a"]))
    assert ids[0] == ids[3]
    assert ids[2] == MISSING
    assert ((ids[[0, 1, 3]] >= FIRST_ID) & (ids[[0, 1, 3]] < buckets.size)).all()


def test_quantile_buckets_split_evenly_and_keep_edges_on_extend():
    values = pl.Series(np.arange(1000, dtype=float))
    buckets = QuantileBuckets(4).fit(values)
    ids = buckets.transform(values)
    assert np.bincount(ids)[FIRST_ID:].tolist() == [250, 250, 250, 250]
    edges = buckets.boundaries.copy()
    buckets.extend(pl.Series([1e9, -1e9]))
    assert np.array_equal(buckets.boundaries, edges)
    assert buckets.transform(pl.Series([None], dtype=pl.Float64)).tolist() == [MISSING]


def frame():
    return pl.DataFrame(
        {
            "user": ["u1", "u2", "u1", "u3"],
            "item": [5, 6, 5, 7],
            "recent": [[5, 6], [], None, [7, 5, 6, 8]],
            "price": [1.0, None, 100.0, 10.0],
            "count": [0.0, 3.0, -1.0, None],
            "label": [1, 0, 0, 1],
        }
    )


FEATURES = [
    {"name": "item", "kind": "sparse", "side": "item", "embedding_group": "item"},
    {"name": "recent", "kind": "sequence", "max_length": 3, "embedding_group": "item"},
    {"name": "price", "kind": "dense", "transform": "standardize"},
    {"name": "count", "kind": "dense", "transform": "log1p"},
]


def test_shared_group_sequences_and_dense():
    encoders = FeatureEncoders(config(FEATURES)).fit(frame())
    encoded = encoders.transform(frame())
    assert list(encoders.tables) == ["item"]
    item_ids = encoded.sparse[:, 0]
    assert item_ids[0] == item_ids[2]
    # The sequence shares the item vocabulary: item 5 has one id everywhere.
    assert encoded.sequence.shape == (4, 1, 3)
    assert encoded.sequence[0, 0].tolist()[:2] == [item_ids[0], item_ids[1]]
    assert encoded.sequence[0, 0, 2] == PAD
    assert encoded.sequence[1].tolist() == [[PAD] * 3]
    assert encoded.sequence[2].tolist() == [[PAD] * 3]
    # Only the last max_length items are kept, most recent last.
    tail = encoders.tables["item"].transform(pl.Series([5, 6, 8])).tolist()
    assert encoded.sequence[3, 0].tolist() == tail
    price = encoded.dense[:, 0]
    assert price[1] == 0.0
    assert abs(price[[0, 2, 3]].mean()) < 1e-6
    count = encoded.dense[:, 1]
    assert np.allclose(count, [0.0, np.log1p(3.0), -np.log1p(1.0), 0.0])
    assert encoded.label.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert encoded.user[0] == encoded.user[2] != encoded.user[1]


def test_sequences_as_delimited_text():
    features = [{"name": "recent", "kind": "sequence", "max_length": 2}]
    text = pl.DataFrame({"user": ["a", "b"], "recent": ["x|y|z", ""], "label": [0, 1]})
    encoders = FeatureEncoders(config(features)).fit(text)
    encoded = encoders.transform(text)
    expected = encoders.tables["recent"].transform(pl.Series(["y", "z"])).tolist()
    assert encoded.sequence[0, 0].tolist() == expected
    assert encoded.sequence[1, 0].tolist() == [PAD, PAD]


def test_crosses_are_stable_and_in_range():
    features = [
        {"name": "a", "kind": "sparse"},
        {"name": "b", "kind": "sparse"},
    ]
    cfg = config(features, [{"fields": ["a", "b"], "hash_buckets": 11}])
    data = pl.DataFrame(
        {"user": ["u"] * 4, "a": [1, 1, 2, 1], "b": [1, 2, 1, 1], "label": [0] * 4}
    )
    encoded = FeatureEncoders(cfg).fit(data).transform(data)
    cross = encoded.cross[:, 0]
    assert cross[0] == cross[3]
    assert ((cross >= FIRST_ID) & (cross < FIRST_ID + 11)).all()
    assert FeatureEncoders(cfg).fit(data).cross_sizes() == [FIRST_ID + 11]


def test_save_load_and_extend_round_trip(tmp_path):
    cfg = config(FEATURES)
    encoders = FeatureEncoders(cfg).fit(frame())
    encoders.save(tmp_path / "encoders.json")
    loaded = FeatureEncoders.load(tmp_path / "encoders.json", cfg)
    a, b = encoders.transform(frame()), loaded.transform(frame())
    for name in ("sparse", "dense", "sequence", "cross", "label", "user"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    later = frame().with_columns(pl.Series("item", [5, 9, 9, 10]))
    sizes = loaded.vocab_sizes()
    loaded.extend(later)
    assert loaded.vocab_sizes()["item"] == sizes["item"] + 2
    assert np.array_equal(loaded.transform(frame()).sparse, a.sparse)
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_rejects_encoders_of_another_config(tmp_path):
    FeatureEncoders(config(FEATURES)).fit(frame()).save(tmp_path / "e.json")
    other = config([{"name": "user", "kind": "sparse"}])
    with pytest.raises(ValueError, match="do not match"):
        FeatureEncoders.load(tmp_path / "e.json", other)


def test_sequence_of_wrong_type_is_a_clear_error():
    features = [{"name": "recent", "kind": "sequence", "max_length": 2}]
    bad = pl.DataFrame({"user": ["a"], "recent": [1.5], "label": [0]})
    with pytest.raises(TypeError, match="sequence column 'recent'"):
        FeatureEncoders(config(features)).fit(bad)


def test_fitting_in_chunks_equals_one_fit():
    rng = np.random.default_rng(0)
    whole = pl.DataFrame(
        {
            "user": rng.integers(0, 40, 3000).astype(str),
            "item": rng.integers(0, 500, 3000),
            "recent": [list(rng.integers(0, 500, 3)) for _ in range(3000)],
            "price": rng.lognormal(size=3000),
            "count": rng.poisson(3.0, 3000).astype(float),
            "label": rng.integers(0, 2, 3000),
        }
    )
    features = [
        *FEATURES,
        {"name": "user", "kind": "sparse", "vocabulary": {"min_count": 80}},
    ]
    one = FeatureEncoders(config(features)).fit(whole)
    chunked = FeatureEncoders(config(features))
    # More chunks than a vocabulary keeps apart: their counts get merged.
    for start in range(0, 3000, 3000 // (3 * PENDING_CHUNKS)):
        chunked.observe(whole.slice(start, 3000 // (3 * PENDING_CHUNKS)))
    chunked.settle()
    for group in ("item", "user"):
        a, b = one.tables[group], chunked.tables[group]
        assert a.keys.to_list() == b.keys.to_list()
        assert a.counts.tolist() == b.counts.tolist()
    assert one.scalers["price"].mean == pytest.approx(chunked.scalers["price"].mean)
    assert one.scalers["price"].std == pytest.approx(chunked.scalers["price"].std)
    a, b = one.transform(whole), chunked.transform(whole)
    assert np.array_equal(a.sparse, b.sparse)
    assert np.allclose(a.dense, b.dense, atol=1e-5)


@pytest.mark.parametrize("repeats", [1, PENDING_CHUNKS + 1])
def test_a_text_chunk_after_integer_chunks_switches_keys_to_text(repeats):
    vocab = Vocabulary(min_count=1)
    for _ in range(repeats):  # with many chunks, after their counts were merged
        vocab.observe(pl.Series(["1", "2", "2"]))
    vocab.observe(pl.Series(["x", "1"])).settle()
    assert vocab.kind == "str"
    # "2" is seen twice per repeat, "1" once per repeat and once more, "x" once
    # (ties go by key).
    ranked = ["1", "2"] if repeats == 1 else ["2", "1"]
    assert vocab.transform(pl.Series([*ranked, "x", "y"])).tolist() == [3, 4, 5, OOV]
    assert vocab.counts.tolist() == [2 * repeats, repeats + 1, 1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40),
    st.lists(st.one_of(st.none(), st.integers(-(2**41), 2**41)), max_size=40),
    st.booleans(),
)
def test_direct_lookup_agrees_with_the_hash_join(keys, values, compact):
    if compact:
        keys = [k % 1000 for k in keys]
        values = [None if v is None else v % 1200 - 100 for v in values]
    vocab = Vocabulary(min_count=1).fit(pl.Series(keys, dtype=pl.Int64))
    series = pl.Series(values, dtype=pl.Int64)
    joined = _apply_join(vocab, series)
    assert vocab.transform(series).tolist() == joined


def _apply_join(vocab, series):
    from likely.data.encoders import _apply

    return _apply(vocab, series).tolist()


def test_a_few_rows_encode_as_they_do_inside_a_large_frame():
    # Up to FEW_ROWS rows (one request's) take numpy paths for dense values
    # and skip polars work on absent or all-null columns; the ids and values
    # must be those the polars paths give the same rows in a large frame.
    rng = np.random.default_rng(3)
    n = 4 * FEW_ROWS
    price = rng.lognormal(3, 2, n)
    price[::7] = np.nan
    price[5] = np.inf
    big = pl.DataFrame(
        {
            "user": rng.choice(["u1", "u2", "u3", None], n).tolist(),
            "item": rng.integers(0, 50, n),
            "shop": rng.choice(["a", "b", "c", None], n).tolist(),
            "price": pl.Series(price).fill_nan(None),
            "count": rng.integers(-1, 1000, n).astype(float),
            "rate": np.where(np.arange(n) % 5 == 0, np.inf, rng.normal(0, 1, n)),
            "label": rng.integers(0, 2, n),
        }
    )
    features = [
        {"name": "item", "kind": "sparse"},
        {"name": "shop", "kind": "sparse", "vocabulary": {"hash_buckets": 31}},
        {"name": "price", "kind": "dense", "transform": "standardize"},
        {"name": "count", "kind": "dense", "transform": "log1p"},
        {"name": "rate", "kind": "dense", "transform": "none"},
    ]
    encoders = FeatureEncoders(config(features)).fit(big)
    whole = encoders.transform(big)
    for start, rows in [(0, 1), (7, 3), (64, FEW_ROWS)]:
        few = encoders.transform(big.slice(start, rows))
        stop = start + rows
        assert np.array_equal(few.sparse, whole.sparse[start:stop])
        assert np.allclose(few.dense, whole.dense[start:stop], rtol=1e-6, atol=0)
        assert np.array_equal(few.cross, whole.cross[start:stop])
    absent = big.slice(0, 2).with_columns(pl.lit(None, pl.String).alias("shop"))
    assert encoders.transform(absent).sparse[:, 1].tolist() == [MISSING, MISSING]


def test_a_null_inside_a_behaviour_list_is_no_item():
    features = [{"name": "recent", "kind": "sequence", "max_length": 2}]
    rows = pl.DataFrame(
        {
            "user": ["a", "b", "c"],
            "recent": [[5, None, 6], [None], [7, 5]],
            "label": [0, 1, 0],
        }
    )
    encoders = FeatureEncoders(config(features)).fit(rows)
    ids = encoders.transform(rows).sequence[:, 0]
    five, six, seven = encoders.tables["recent"].transform(pl.Series([5, 6, 7]))
    assert ids.tolist() == [[five, six], [PAD, PAD], [seven, five]]


# --- Categorical columns: how prepare counts, spills and encodes text --------


def text_chunks(seed: int = 0, chunks: int = 3, rows: int = 400) -> list[pl.DataFrame]:
    """Text ids with nulls, integer-like text ("7", "07") and a rare tail."""
    rng = np.random.default_rng(seed)
    pool = ["a", "b", "7", "07", "x1", *[f"rare{i}" for i in range(60)]]
    out = []
    for _ in range(chunks):
        picks = rng.zipf(1.5, rows) % len(pool)
        values = [None if p == 3 and rng.random() < 0.5 else pool[p] for p in picks]
        shop = [f"s{int(k)}" for k in rng.integers(0, 30, rows)]
        out.append(
            pl.DataFrame(
                {"user": "u0", "item": values, "shop": shop, "label": 0},
                schema_overrides={"item": pl.String},
            )
        )
    return out


CATEGORIZED = [
    {"name": "item", "kind": "sparse", "vocabulary": {"min_count": 2}},
    {"name": "shop", "kind": "sparse"},
    {"name": "user", "kind": "sparse"},  # the user column: left as text
]


@pytest.mark.parametrize("gc_between", [False, True])
def test_categorized_chunks_fit_and_encode_as_their_text(gc_between):
    import gc

    chunks = text_chunks()
    plain = FeatureEncoders(config(CATEGORIZED))
    for chunk in chunks:
        plain.observe(chunk)
    plain.settle()

    coded = FeatureEncoders(config(CATEGORIZED))
    spilled = []
    for chunk in chunks:
        categorized = coded.categorize(chunk)
        assert isinstance(categorized.schema["item"], pl.Categorical)
        assert categorized.schema["user"] == pl.String
        coded.observe(categorized)
        spilled.append(coded.physical(categorized))
        assert spilled[-1].schema["item"] == pl.UInt32
        del categorized
        if gc_between:  # the category set must outlive every frame using it
            gc.collect()
    coded.settle()

    for group in ("item", "shop", "user"):
        a, b = plain.tables[group], coded.tables[group]
        assert (a.kind, a.keys.to_list()) == (b.kind, b.keys.to_list())
        assert a.counts.tolist() == b.counts.tolist()
    for chunk, codes in zip(chunks, spilled, strict=True):
        expected = plain.transform(chunk)
        got = coded.transform(codes, coded=True)
        assert np.array_equal(expected.sparse, got.sparse)
        assert np.array_equal(expected.user, got.user)
        # A Categorical frame itself encodes the same way.
        again = coded.transform(coded.categorize(chunk))
        assert np.array_equal(expected.sparse, again.sparse)


def test_integer_text_counted_by_code_merges_spellings_of_one_number():
    # " 7" and "7" are two categories but one integer key, as with text.
    categories = pl.Categorical(pl.Categories.random())
    values = pl.Series(["7", " 7", "8", None, "7"])
    vocab = Vocabulary(min_count=1).observe(values.cast(categories)).settle()
    text = Vocabulary(min_count=1).fit(values)
    assert vocab.kind == text.kind == "int"
    assert vocab.keys.to_list() == text.keys.to_list() == [7, 8]
    assert vocab.counts.tolist() == text.counts.tolist() == [3, 1]
    codes = pl.Series([" 7", "8", "9", None]).cast(categories)
    assert vocab.transform(codes).tolist() == [3, 4, OOV, MISSING]


def test_categorized_counts_extend_fitted_vocabularies():
    chunks = text_chunks(seed=1)
    old = FeatureEncoders(config(CATEGORIZED)).fit(chunks[0])
    new_chunk = chunks[1].with_columns(pl.lit("brand-new").alias("shop"))
    plain = FeatureEncoders.from_json(old.to_json(), config(CATEGORIZED))
    plain.extend(new_chunk)
    coded = FeatureEncoders.from_json(old.to_json(), config(CATEGORIZED))
    coded.observe(coded.categorize(new_chunk), vocabularies_only=True)
    coded.settle()
    for group in ("item", "shop"):
        assert plain.tables[group].keys.to_list() == coded.tables[group].keys.to_list()
        assert (
            old.tables[group].keys.to_list()
            == (coded.tables[group].keys.to_list()[: old.tables[group].size - FIRST_ID])
        )
