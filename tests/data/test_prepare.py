import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from likely.config import parse_config
from likely.data.prepare import PrepareError, available_days, index_day, prepare
from likely.data.windows import WindowError

START = dt.date(2026, 11, 1)


def write_days(root, days=9, rows=200, seed=0):
    """Hive-partitioned day files with a learnable label."""
    rng = np.random.default_rng(seed)
    for k in range(days):
        day = START + dt.timedelta(days=k)
        item = rng.integers(0, 30 + 5 * k, rows)  # later days bring new items
        folder = root / f"day={day}"
        folder.mkdir(parents=True)
        pl.DataFrame(
            {
                "user_id": rng.integers(0, 50, rows),
                "item_id": item,
                "recent": [list(rng.integers(0, 30, 3)) for _ in range(rows)],
                "price": rng.lognormal(size=rows),
                "label": (item % 3 == 0).astype(np.int8),
                "probability": np.where(item % 3 == 0, 0.9, 0.1),
            }
        ).write_parquet(folder / "part-0.parquet")
    return root


def make_config(tmp_path, **data):
    return parse_config(
        {
            "data": {
                "path": str(tmp_path / "logs"),
                "format": "parquet",
                "date_column": "day",
                "user_column": "user_id",
                "probability_column": "probability",
                "cache_dir": str(tmp_path / "cache"),
                **data,
            },
            "features": [
                {"name": "user_id", "kind": "sparse", "side": "user"},
                {
                    "name": "item_id",
                    "kind": "sparse",
                    "side": "item",
                    "embedding_group": "item",
                },
                {
                    "name": "recent",
                    "kind": "sequence",
                    "max_length": 4,
                    "embedding_group": "item",
                },
                {"name": "price", "kind": "dense", "transform": "log1p"},
            ],
            "crosses": [{"fields": ["user_id", "item_id"], "hash_buckets": 101}],
        }
    )


@pytest.fixture
def logs(tmp_path):
    return write_days(tmp_path / "logs")


def test_prepare_window_writes_arrays_and_manifest(tmp_path, logs):
    config = make_config(tmp_path)
    target = START + dt.timedelta(days=7)
    prepared = prepare(config, target)
    manifest = prepared.manifest
    assert prepared.splits == ["train", "test"]
    assert manifest["splits"]["train"]["rows"] == 7 * 200
    assert manifest["splits"]["test"]["days"] == [str(target)]
    assert manifest["train_days"][0] == str(START)
    assert manifest["later_days"] == [str(target + dt.timedelta(days=1))]
    # Only the window's partition files were read: the later day was not.
    assert manifest["rows_read"] == 8 * 200
    train = prepared.folder / "train"
    sparse = np.load(train / "sparse.npy", mmap_mode="r")
    assert sparse.shape == (1400, 2) and sparse.dtype == np.int32
    assert np.load(train / "sequence.npy").shape == (1400, 1, 4)
    assert np.load(train / "cross.npy").shape == (1400, 1)
    days = {index_day(d) for d in np.unique(np.load(train / "day.npy"))}
    assert days == {START + dt.timedelta(days=k) for k in range(7)}
    assert np.load(train / "probability.npy").shape == (1400,)
    encoders = prepared.encoders(config)
    assert encoders.vocab_sizes() == manifest["vocab_sizes"]


def test_the_day_after_the_logs_prepares_a_window_without_test_rows(tmp_path, logs):
    config = make_config(tmp_path)
    target = START + dt.timedelta(days=9)  # the logs hold days 0 to 8
    prepared = prepare(config, target)
    assert prepared.splits == ["train"]
    assert prepared.manifest["target_date"] == str(target)
    assert prepared.manifest["splits"]["train"]["rows"] == 7 * 200


def test_cache_is_reused_and_invalidated(tmp_path, logs):
    config = make_config(tmp_path)
    target = START + dt.timedelta(days=7)
    first = prepare(config, target)
    assert not first.reused
    again = prepare(config, target)
    assert again.reused and again.folder == first.folder
    # A changed config gets its own cache.
    other = prepare(make_config(tmp_path, window_days=3), target)
    assert other.folder != first.folder
    assert other.manifest["splits"]["train"]["rows"] == 3 * 200
    # A touched input file invalidates the cache.
    file = logs / f"day={START + dt.timedelta(days=2)}" / "part-0.parquet"
    stamp = time.time() + 5
    os.utime(file, (stamp, stamp))
    assert prepare(config, target).folder != first.folder


@pytest.mark.parametrize(
    ("owner", "where", "error"),
    [
        ("FeatureEncoders", "save", KeyboardInterrupt),  # at the very end
        ("FeatureEncoders", "transform", KeyboardInterrupt),  # between pieces
        ("_SplitWriter", "write", OSError),  # in the thread that writes arrays
    ],
)
def test_interrupted_prepare_leaves_nothing_behind(
    tmp_path, logs, monkeypatch, owner, where, error
):
    config = make_config(tmp_path)
    from likely.data import prepare as module

    def crash(*args, **kwargs):
        raise error("no space left on device")

    monkeypatch.setattr(getattr(module, owner), where, crash)
    with pytest.raises(error):
        prepare(config, START + dt.timedelta(days=7))
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    prepared = prepare(config, START + dt.timedelta(days=7))
    assert not prepared.reused


def test_target_date_errors(tmp_path, logs):
    config = make_config(tmp_path)
    with pytest.raises(PrepareError, match="give a target date.*2026-11-09"):
        prepare(config)
    with pytest.raises(WindowError, match="2026-12-25 has no data"):
        prepare(config, dt.date(2026, 12, 25))
    with pytest.raises(WindowError, match="missing"):
        prepare(config, START + dt.timedelta(days=3))


def test_available_days_from_partitions(tmp_path, logs):
    days = available_days(make_config(tmp_path))
    assert days[0] == START and len(days) == 9


def test_holdout_split_is_seeded(tmp_path, logs):
    config = make_config(tmp_path, holdout_fraction=0.25, holdout_seed=3)
    prepared = prepare(config, START + dt.timedelta(days=7))
    splits = prepared.manifest["splits"]
    assert list(splits) == ["train", "valid", "test"]
    assert splits["train"]["rows"] + splits["valid"]["rows"] == 1400
    assert 250 < splits["valid"]["rows"] < 450
    again = prepare(config, START + dt.timedelta(days=7), force=True)
    assert again.manifest["splits"] == splits


def test_csv_with_text_dates(tmp_path):
    rows = ["label,day,user,item"]
    for k in range(3):
        for i in range(10):
            rows.append(f"{i % 2},2026-11-0{k + 1},u{i},i{i % 4}")
    (tmp_path / "logs.csv").write_text("\r\n".join(rows) + "\r\n")
    config = parse_config(
        {
            "data": {
                "path": str(tmp_path / "logs.csv"),
                "format": "csv",
                "date_column": "day",
                "window_days": 2,
                "cache_dir": str(tmp_path / "cache"),
            },
            "features": [
                {"name": "user", "kind": "sparse"},
                {"name": "item", "kind": "sparse"},
            ],
        }
    )
    assert available_days(config) == [START + dt.timedelta(days=k) for k in range(3)]
    prepared = prepare(config, dt.date(2026, 11, 3))
    assert prepared.manifest["splits"]["train"]["rows"] == 20
    assert prepared.manifest["splits"]["test"]["rows"] == 10


def test_frappe_prepares(tmp_path, shared_data):
    from likely.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "frappe.yaml")
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"cache_dir": tmp_path})}
    )
    prepared = prepare(config)
    splits = prepared.manifest["splits"]
    assert splits["train"]["rows"] + splits["valid"]["rows"] == 57_722
    assert splits["test"]["rows"] == 28_860
    assert prepared.manifest["vocab_sizes"]["user"] > 900 - 100


def test_abandoned_temporary_folders_are_removed(tmp_path, logs):
    config = make_config(tmp_path)
    target = START + dt.timedelta(days=7)
    first = prepare(config, target)
    dead = first.folder.with_name(f".{first.folder.name}.tmp-999999999")
    (dead / "_pieces").mkdir(parents=True)
    prepare(config, target, force=True)
    assert not dead.exists()


def test_text_logs_in_pieces_match_one_piece(tmp_path, monkeypatch):
    rows = ["label,day,user,item,price"]
    for k in range(3):
        rows += [f"{i % 2},2026-11-0{k + 1},u{i % 9},i{i % 13},{i}" for i in range(400)]
    (tmp_path / "logs.csv").write_text("\n".join(rows) + "\n")
    raw = {
        "data": {
            "path": str(tmp_path / "logs.csv"),
            "format": "csv",
            "date_column": "day",
            "window_days": 2,
            "holdout_fraction": 0.2,
            "cache_dir": str(tmp_path / "cache"),
        },
        "features": [
            {"name": "user", "kind": "sparse"},
            {"name": "item", "kind": "sparse"},
            {"name": "price", "kind": "dense", "transform": "standardize"},
        ],
    }
    whole = prepare(parse_config(raw), dt.date(2026, 11, 3))
    from likely.data import readers

    monkeypatch.setattr(readers, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(readers.read_chunks, "__defaults__", (None, 1000))
    pieces = prepare(parse_config(raw), dt.date(2026, 11, 3), force=True)
    assert whole.manifest["vocab_sizes"] == pieces.manifest["vocab_sizes"]
    for split in ("train", "valid", "test"):
        assert (
            whole.manifest["splits"][split]["rows"] + 0
            == pieces.manifest["splits"][split]["rows"]
        ) or split == "valid"
    a = np.load(whole.folder / "test" / "sparse.npy")
    b = np.load(pieces.folder / "test" / "sparse.npy")
    assert np.array_equal(a, b)
    assert not list((tmp_path / "cache").glob(".*"))

    # Against a reference made without prepare: the test day's rows in file
    # order, encoded at once. Pieces, halves encoded side by side and writes
    # in a thread must neither reorder nor lose a row.
    config = parse_config(raw)
    frame = pl.read_csv(tmp_path / "logs.csv", try_parse_dates=True)
    day = frame.filter(pl.col("day") == dt.date(2026, 11, 3))
    expected = pieces.encoders(config).transform(day.cast({"label": pl.Int8}))
    for name in ("sparse", "dense", "label", "user", "day"):
        written = np.load(pieces.folder / "test" / f"{name}.npy")
        assert np.array_equal(written, getattr(expected, name)), name


def test_hashed_sparse_feature_prepares(tmp_path):
    """A sparse feature with hash_buckets gets ids in [FIRST_ID, buckets + FIRST_ID)
    and a table of exactly that many rows, however few values the logs hold."""
    from likely.data.encoders import HashBuckets

    rows = 300
    pl.DataFrame(
        {"item": np.arange(rows) % 40, "label": np.arange(rows) % 2}
    ).write_parquet(tmp_path / "train.parquet")
    config = parse_config(
        {
            "data": {
                "path": str(tmp_path / "train.parquet"),
                "format": "parquet",
                "cache_dir": str(tmp_path / "cache"),
            },
            "features": [
                {"name": "item", "kind": "sparse", "vocabulary": {"hash_buckets": 7}}
            ],
        }
    )
    prepared = prepare(config)
    ids = np.load(prepared.folder / "train" / "sparse.npy")
    size = HashBuckets(7).size
    assert prepared.manifest["vocab_sizes"] == {"item": size}
    assert ids.min() >= size - 7 and ids.max() < size
    assert len(np.unique(ids)) == 7
