"""Tests of the synthetic log generator and of roc_auc, which it reports with."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from likely.data import synthetic
from likely.data.synthetic import GenerateSummary, generate
from likely.train.metrics import roc_auc

HISTORY_LENGTH = 4
SMALL = {
    "days": 3,
    "rows_per_day": 4_000,
    "num_users": 150,
    "num_items": 600,
    "seed": 3,
    "history_length": HISTORY_LENGTH,
}
EXPECTED_SCHEMA = {
    "label": pl.Int8,
    "probability": pl.Float32,
    "user_id": pl.Int64,
    "user_type": pl.String,
    "is_seller": pl.Int8,
    "region": pl.String,
    "membership": pl.String,
    "purchasing_power": pl.Float32,
    "item_id": pl.Int64,
    "category": pl.Int64,
    "category_l1": pl.Int64,
    "brand": pl.Int64,
    "seller_id": pl.Int64,
    "price": pl.Float32,
    "price_band": pl.Int64,
    "min_order_qty": pl.Float32,
    "hour": pl.Int8,
    "platform": pl.String,
    "position": pl.Int16,
    "recent_clicks": pl.List(pl.Int64),
    "day": pl.Date,
}
USER_COLUMNS = ["user_type", "is_seller", "region", "membership", "purchasing_power"]
ITEM_COLUMNS = [
    "category",
    "category_l1",
    "brand",
    "seller_id",
    "price",
    "price_band",
    "min_order_qty",
]


def read_days(out_dir: Path) -> pl.DataFrame:
    """All generated rows in file order, days ascending.

    A glob, because polars would also list `_generator.json` in the folder.
    """
    frame = pl.scan_parquet(out_dir / "**" / "*.parquet", hive_partitioning=True)
    return frame.collect().sort("day", maintain_order=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[GenerateSummary, pl.DataFrame]:
    out_dir = tmp_path_factory.mktemp("small") / "logs"
    summary = generate(out_dir, **SMALL)
    return summary, read_days(out_dir)


@pytest.fixture(scope="module")
def week(tmp_path_factory) -> pl.DataFrame:
    """Eight days, so the first and last fall on the same weekday."""
    out_dir = tmp_path_factory.mktemp("week") / "logs"
    generate(out_dir, days=8, rows_per_day=30_000, num_users=2_000, num_items=5_000)
    return read_days(out_dir)


# ---------------------------------------------------------------------- layout


def test_schema_and_value_ranges(small):
    _, frame = small

    assert dict(frame.schema) == EXPECTED_SCHEMA
    assert frame.height == SMALL["days"] * SMALL["rows_per_day"]
    assert frame.null_count().sum_horizontal().item() == 0
    assert set(frame["label"].unique()) == {0, 1}
    assert frame["probability"].min() > 0 and frame["probability"].max() < 1
    assert set(frame["user_type"].unique()) <= {"business", "consumer"}
    assert set(frame["is_seller"].unique()) <= {0, 1}
    assert set(frame["membership"].unique()) <= set(synthetic.MEMBERSHIPS)
    assert set(frame["region"].unique()) <= set(synthetic.REGIONS)
    assert set(frame["platform"].unique()) <= {"app", "web", "mini"}
    assert frame["purchasing_power"].min() > 0
    assert frame["price"].min() > 0
    assert frame["min_order_qty"].min() >= 1
    assert frame["price_band"].is_between(0, 9).all()
    assert frame["hour"].is_between(0, 23).all()
    assert frame["position"].is_between(0, synthetic.NUM_POSITIONS - 1).all()
    assert frame["category"].is_between(0, synthetic.NUM_LEAF_CATEGORIES - 1).all()
    assert frame["category_l1"].is_between(0, synthetic.NUM_TOP_CATEGORIES - 1).all()
    assert frame["user_id"].is_between(0, SMALL["num_users"] - 1).all()
    assert frame["item_id"].is_between(0, SMALL["num_items"] - 1).all()


@pytest.mark.parametrize(
    ("key", "columns"), [("user_id", USER_COLUMNS), ("item_id", ITEM_COLUMNS)]
)
def test_attributes_are_fixed_per_id(small, key, columns):
    _, frame = small

    distinct = frame.group_by(key).agg(pl.col(columns).n_unique())

    assert (distinct.select(pl.max_horizontal(columns)).to_series() == 1).all()


def test_each_leaf_category_has_one_top_category(small):
    _, frame = small

    tops = frame.group_by("category").agg(pl.col("category_l1").n_unique())

    assert (tops["category_l1"] == 1).all()


def test_hive_layout_and_manifest(small):
    summary, frame = small
    out_dir = summary.out_dir
    names = [f"day={day.isoformat()}" for day in summary.days]

    assert sorted(path.name for path in out_dir.iterdir()) == [
        synthetic.MANIFEST_NAME,
        *names,
    ]
    assert summary.files == tuple(out_dir / name / "part-0.parquet" for name in names)
    for path in summary.files:
        assert [child.name for child in path.parent.iterdir()] == ["part-0.parquet"]
        assert "day" not in pq.read_schema(path).names
    assert summary.days == (
        datetime.date(2026, 11, 1),
        datetime.date(2026, 11, 2),
        datetime.date(2026, 11, 3),
    )
    assert frame["day"].unique().sort().to_list() == list(summary.days)
    assert not any(path.name.startswith(".") for path in out_dir.parent.iterdir())

    manifest = json.loads((out_dir / synthetic.MANIFEST_NAME).read_text())
    assert manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["complete"] is True
    assert manifest["arguments"] == {**SMALL, "start_date": "2026-11-01"}
    assert [day["rows"] for day in manifest["days"]] == [SMALL["rows_per_day"]] * 3


def test_rows_of_a_day_are_in_hour_order(small):
    _, frame = small

    in_order = frame.group_by("day").agg(pl.col("hour").diff().min())

    assert (in_order["hour"] >= 0).all()


def test_rerun_replaces_earlier_days(tmp_path):
    out_dir = tmp_path / "logs"
    generate(out_dir, days=3, rows_per_day=100, num_users=10, num_items=20)

    summary = generate(
        out_dir,
        days=2,
        rows_per_day=100,
        num_users=10,
        num_items=20,
        start_date=datetime.date(2027, 1, 30),
    )

    assert sorted(path.name for path in out_dir.glob("day=*")) == [
        "day=2027-01-30",
        "day=2027-01-31",
    ]
    assert read_days(out_dir)["day"].unique().to_list() == list(summary.days)


def test_interrupted_run_leaves_only_complete_days(tmp_path, monkeypatch):
    out_dir = tmp_path / "logs"
    simulate = synthetic._simulate
    calls = []

    def fail_on_second_day(world, history, day, rng, **kwargs):
        if day.day_index == 1:
            calls.append(kwargs)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return simulate(world, history, day, rng, **kwargs)

    monkeypatch.setattr(synthetic, "_simulate", fail_on_second_day)
    with pytest.raises(KeyboardInterrupt):
        generate(out_dir, days=3, rows_per_day=500, num_users=20, num_items=50)

    assert [path.name for path in out_dir.glob("day=*")] == ["day=2026-11-01"]
    assert [path.name for path in tmp_path.iterdir()] == ["logs"]
    assert read_days(out_dir).height == 500
    manifest = json.loads((out_dir / synthetic.MANIFEST_NAME).read_text())
    assert manifest["complete"] is False


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(ValueError, match=re.escape(f"out_dir {tmp_path} is not empty")):
        generate(tmp_path, days=1, rows_per_day=10, num_users=5, num_items=5)

    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("days", 0),
        ("rows_per_day", -5),
        ("num_users", 0),
        ("num_items", -1),
        ("history_length", 0),
        ("days", 2.5),
        ("num_items", True),
        ("seed", -3),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, name, value):
    arguments = {"days": 1, "rows_per_day": 10, "num_users": 5, "num_items": 5}

    with pytest.raises(ValueError, match=rf"{name} .*{value!r}"):
        generate(tmp_path / "logs", **{**arguments, name: value})

    assert not (tmp_path / "logs").exists()


def test_tiny_world(tmp_path):
    summary = generate(
        tmp_path / "logs", days=2, rows_per_day=50, num_users=1, num_items=1
    )

    frame = read_days(tmp_path / "logs")
    assert summary.rows == frame.height == 100
    assert frame["user_id"].unique().to_list() == [0]
    assert frame["item_id"].unique().to_list() == [0]


# --------------------------------------------------------------- determinism


def test_same_seed_gives_identical_data(tmp_path):
    arguments = {"days": 2, "rows_per_day": 1_500, "num_users": 100, "num_items": 300}
    first = generate(tmp_path / "a", seed=11, **arguments)
    second = generate(tmp_path / "b", seed=11, **arguments)

    assert read_days(tmp_path / "a").equals(read_days(tmp_path / "b"))
    for left, right in zip(first.files, second.files, strict=True):
        assert left.read_bytes() == right.read_bytes()
    assert first.bayes_auc == second.bayes_auc


def test_different_seeds_give_different_data(tmp_path):
    arguments = {"days": 1, "rows_per_day": 1_500, "num_users": 100, "num_items": 300}
    generate(tmp_path / "a", seed=1, **arguments)
    generate(tmp_path / "b", seed=2, **arguments)

    first, second = read_days(tmp_path / "a"), read_days(tmp_path / "b")

    assert first.schema == second.schema
    assert not first.equals(second)
    assert not first["item_id"].equals(second["item_id"])


# -------------------------------------------------------------- click model


def test_labels_agree_with_probabilities(small):
    _, frame = small
    probability = frame["probability"].to_numpy().astype(np.float64)
    label = frame["label"].to_numpy()
    # Labels are independent Bernoulli draws given the probabilities.
    standard_error = math.sqrt((probability * (1 - probability)).sum()) / label.size

    assert abs(label.mean() - probability.mean()) < 4 * standard_error
    assert 0.01 < label.mean() < 0.15


def check_recent_clicks(frame: pl.DataFrame, history_length: int) -> None:
    """Brute force: replay the rows in time order, history refreshed hourly."""
    rows = frame.select("day", "hour", "user_id", "item_id", "label", "recent_clicks")
    clicks: dict[int, list[int]] = defaultdict(list)
    full = 0

    for _, group in itertools.groupby(rows.iter_rows(), key=lambda row: row[:2]):
        group = list(group)
        for _, _, user, _, _, recent in group:
            assert recent == clicks[user][-history_length:]
            full += len(recent) == history_length
        for _, _, user, item, label, _ in group:
            if label:
                clicks[user].append(item)

    # The check must have seen histories cut to their length, and both empty and
    # partly filled ones.
    lengths = frame["recent_clicks"].list.len()
    assert lengths.max() == history_length
    assert full > 100
    assert (lengths == 0).sum() > 0
    assert lengths.is_between(1, history_length - 1).sum() > 0
    assert max(len(items) for items in clicks.values()) > history_length


def test_recent_clicks_are_the_users_earlier_clicks(small):
    _, frame = small

    check_recent_clicks(frame, HISTORY_LENGTH)


def test_recent_clicks_when_hours_are_split_into_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 29)

    summary = generate(tmp_path / "logs", **SMALL)

    row_groups = pq.ParquetFile(summary.files[0]).num_row_groups
    assert row_groups > 24 * 2
    check_recent_clicks(read_days(tmp_path / "logs"), HISTORY_LENGTH)


def test_click_history_keeps_each_users_last_clicks_in_order():
    history = synthetic._ClickHistory(num_users=3, length=3)

    # User 0 clicks more often than the buffer holds within one update; user 1's
    # buffer wraps around across updates; user 2 never clicks.
    history.append(
        np.array([0, 1, 0, 0, 0, 0, 1, 0, 0]),
        np.array([10, 20, 11, 12, 13, 14, 21, 15, 16]),
    )
    history.append(np.array([1, 1]), np.array([22, 23]))
    view = history.read(np.array([0, 2, 1, 0]))

    bounds = zip(view.offsets[:-1], view.offsets[1:], strict=True)
    assert [view.items[start:end].tolist() for start, end in bounds] == [
        [14, 15, 16],
        [],
        [21, 22, 23],
        [14, 15, 16],
    ]
    assert view.rows.tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert view.ages.tolist() == [2, 1, 0] * 3


def test_grouped_sampler_draws_within_the_group_by_weight():
    sampler = synthetic._GroupedSampler(
        groups=np.array([1, 0, 1, 0, 1]),
        weights=np.array([0.0, 1.0, 2.0, 3.0, 2.0]),
        num_groups=2,
    )
    uniforms = (np.arange(10_000) + 0.5) / 10_000

    from_zero = sampler(np.zeros(10_000, np.int64), uniforms)
    from_one = sampler(np.ones(10_000, np.int64), uniforms)

    assert np.bincount(from_zero, minlength=5).tolist() == [0, 2_500, 0, 7_500, 0]
    assert np.bincount(from_one, minlength=5).tolist() == [0, 0, 5_000, 0, 5_000]


def test_summary_bayes_auc_is_the_auc_of_the_probabilities(small):
    summary, frame = small

    for day, reported, ctr in zip(
        summary.days, summary.bayes_auc, summary.day_ctr, strict=True
    ):
        rows = frame.filter(pl.col("day") == day)
        assert reported == roc_auc(
            rows["label"].to_numpy(), rows["probability"].to_numpy()
        )
        assert reported > 0.7
        assert ctr == rows["label"].mean()
    assert summary.rows == frame.height
    assert summary.ctr == frame["label"].mean()


def test_position_bias_is_visible(week):
    top = week.filter(pl.col("position") < 5)["label"].mean()
    bottom = week.filter(pl.col("position") >= 30)["label"].mean()

    assert top > 1.5 * bottom


def test_affinities_drift_across_days(week):
    """A week apart, the user type x category odds move more than a day apart.

    The statistic is the interaction contrast (business minus consumer mean
    log-odds, per top-level category), so changes shared by both user types,
    such as histories filling up or items trending, cancel out.
    """

    def contrast(day_index: int) -> pl.DataFrame:
        day = datetime.date(2026, 11, 1) + datetime.timedelta(days=day_index)
        logits = (pl.col("probability") / (1 - pl.col("probability"))).log()
        cells = (
            week.filter(pl.col("day") == day)
            .group_by("category_l1", "user_type")
            .agg(logits.mean().alias("logit"), pl.len().alias("rows"))
            .filter(pl.col("rows") >= 100)
            .pivot(on="user_type", index="category_l1", values="logit")
            .drop_nulls()
        )
        gap = pl.col("business") - pl.col("consumer")
        return cells.select("category_l1", gap.alias(f"gap_{day_index}"))

    def change(first: int, second: int) -> float:
        both = contrast(first).join(contrast(second), on="category_l1")
        assert both.height >= 10
        return (both[f"gap_{second}"] - both[f"gap_{first}"]).abs().mean()

    # Without the drift the ratio is below 2 on this data; with it, about 5.
    assert change(0, 7) > 2.5 * change(6, 7)


# ------------------------------------------------------------------- roc_auc


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    above = (positives[:, None] > negatives[None, :]).sum()
    tied = (positives[:, None] == negatives[None, :]).sum()
    return (above + 0.5 * tied) / (positives.size * negatives.size)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(np.int8)
    scores = rng.integers(0, 6, 300) + 0.5 * labels * rng.random(300).round()

    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_roc_auc_known_answers():
    labels = np.array([0, 1, 0, 1])

    assert roc_auc(labels, np.array([0.1, 0.9, 0.2, 0.8])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.1, 0.8, 0.2])) == 0.0
    assert roc_auc(labels, np.zeros(4)) == 0.5
    assert roc_auc(labels.astype(bool), np.array([1, 2, 3, 4])) == 0.75


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], r"0 or 1; found \[2\]"),
        ([0, 1, 0.5], [0.1, 0.2, 0.3], r"found \[0.5\]"),
        ([0, 1, 1], [0.1, 0.2], "3 labels, 2 scores"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "3 positive and 0 negative"),
        ([0, 0], [0.1, 0.2], "0 positive and 2 negative"),
        ([], [], "0 positive and 0 negative"),
        ([0, 1], [0.1, float("nan")], "1 NaN"),
        ([[0, 1]], [[0.1, 0.2]], r"1-D; got shapes \(1, 2\)"),
    ],
)
def test_roc_auc_errors_name_the_problem(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(np.array(labels), np.array(scores))
