"""Synthetic "you may like" impression logs whose click model is known.

The generator draws a fixed world from the seed (users, items, a category tree,
brands, sellers) and then, day by day, the impressions a homepage feed would
show and whether each was clicked. Every row keeps the true click probability
the label was drawn from, so the best AUC any model could reach on a day (the
Bayes AUC) is known and reported beside the data.

Who sees what is not uniform: users are drawn by a Zipf-like activity, and the
item comes from a recall-like step (mostly the user's interest categories, some
from the categories of their recent clicks, the rest from global popularity).

The hidden click model is a sum of log-odds terms, then a sigmoid:

- base rate, user propensity, item quality (tied to popularity), trending items
  whose appeal grows or fades day by day;
- position bias, falling with the slot in the feed;
- user type x top-level category affinity, which rotates slowly across days;
- user type x leaf category x brand, third order, from a random low-rank table;
- region x top-level category; membership level;
- purchasing power x price band; business users x minimum order quantity;
- sellers x leaf category; hour x platform;
- the impressed item's category and brand against the user's recent clicks,
  recent clicks weighing more.

Each user's `recent_clicks` is their real click history in the generated data,
refreshed hourly: an impression sees the clicks of earlier hours (earlier days
included), not those of its own hour. Histories start empty, so the first day
or two have a lower CTR (about 4%) than later ones (about 5%). With the default
sizes the Bayes AUC of a day is about 0.8 to 0.85.

Output is one Parquet file per day in Hive layout,
``out_dir/day=YYYY-MM-DD/part-0.parquet``, plus ``out_dir/_generator.json`` with
the arguments, the version and per-day numbers. Polars lists every file under a
folder, the manifest included, so read the days with a glob, as below.

Example:
    >>> import tempfile, polars as pl
    >>> out = Path(tempfile.mkdtemp()) / "logs"
    >>> summary = generate(out, days=2, rows_per_day=500, num_users=50,
    ...                    num_items=100)
    >>> summary.rows, len(summary.files)
    (1000, 2)
    >>> frame = pl.read_parquet(out / "**" / "*.parquet", hive_partitioning=True)
    >>> frame["day"].dtype, frame.height
    (Date, 1000)
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from likely import __version__
from likely.train.metrics import roc_auc

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST_NAME = "_generator.json"
FILE_NAME = "part-0.parquet"

USER_TYPES = ("business", "consumer")
MEMBERSHIPS = ("free", "silver", "gold", "platinum", "diamond")
PLATFORMS = ("app", "web", "mini")
NUM_REGIONS = 30
REGIONS = tuple(f"region_{index:02d}" for index in range(NUM_REGIONS))
NUM_TOP_CATEGORIES = 20
NUM_LEAF_CATEGORIES = 300
NUM_BRANDS = 2_000
NUM_POSITIONS = 100
NUM_PRICE_BANDS = 10
NUM_INTERESTS = 3
AFFINITY_RANK = 4

BUSINESS, CONSUMER = 0, 1
# Rows simulated at once; bounds memory however large a day is.
CHUNK_ROWS = 1 << 18
# Deciles of the standard normal: a price's band is its decile within its leaf.
NORMAL_DECILES = np.array(
    [-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816]
)

# The world. Arrays of shares have one row per user type (BUSINESS, CONSUMER).
BUSINESS_SHARE = 0.4
SELLER_SHARE = np.array([0.25, 0.03])
MEMBERSHIP_SHARE = np.array(
    [[0.30, 0.30, 0.20, 0.13, 0.07], [0.60, 0.25, 0.10, 0.04, 0.01]]
)
PLATFORM_SHARE = np.array([[0.30, 0.60, 0.10], [0.60, 0.15, 0.25]])
USUAL_PLATFORM_SHARE = 0.8
WEEKEND_BUSINESS_ACTIVITY = 0.35

# Recall: an impression's item comes from the leaf of one of the user's recent
# clicks, from anywhere by popularity, or else from the user's interests.
SIMILAR_SHARE = 0.2
EXPLORE_SHARE = 0.2
INTEREST_SHARE = np.array([0.6, 0.3, 0.1])
# Slots follow a truncated exponential: most impressions are near the top.
POSITION_SCALE = 18.0

# The click model, in log-odds. BASE_LOGIT puts the CTR near 5% once the
# histories have filled (about 4% on the first day, when they are empty).
BASE_LOGIT = -3.6
POSITION_WEIGHT = 0.55
DRIFT_RADIANS_PER_DAY = 0.1
MEMBERSHIP_LOGIT = np.array([0.0, 0.05, 0.1, 0.15, 0.2])
POWER_BAND_WEIGHT = 0.35
BAND_WEIGHT = 0.1
# Business users like wholesale (large minimum order), consumers avoid it.
MIN_ORDER_SIGN = np.array([1.0, -1.0])
MIN_ORDER_WEIGHT = 0.35
HISTORY_CATEGORY_WEIGHT = 1.0
HISTORY_BRAND_WEIGHT = 0.7
HISTORY_RECENCY = 0.8

SCHEMA = pa.schema(
    [
        pa.field("label", pa.int8()),
        pa.field("probability", pa.float32()),
        pa.field("user_id", pa.int64()),
        pa.field("user_type", pa.string()),
        pa.field("is_seller", pa.int8()),
        pa.field("region", pa.string()),
        pa.field("membership", pa.string()),
        pa.field("purchasing_power", pa.float32()),
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.int64()),
        pa.field("category_l1", pa.int64()),
        pa.field("brand", pa.int64()),
        pa.field("seller_id", pa.int64()),
        pa.field("price", pa.float32()),
        pa.field("price_band", pa.int64()),
        pa.field("min_order_qty", pa.float32()),
        pa.field("hour", pa.int8()),
        pa.field("platform", pa.string()),
        pa.field("position", pa.int16()),
        pa.field("recent_clicks", pa.list_(pa.int64())),
    ]
)


@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` wrote.

    Attributes:
        out_dir: the folder holding the day partitions and the manifest.
        days: the dates written, in order.
        rows: impressions written over all days.
        ctr: clicks / impressions over all days.
        day_ctr: CTR of each day, aligned with `days`.
        bayes_auc: AUC of the true probability against the label, per day,
            aligned with `days` (NaN for a day with a single class): the best
            AUC a model can expect on that day.
        files: the Parquet files written, one per day.
        seconds: wall time of the whole run.
    """

    out_dir: Path
    days: tuple[datetime.date, ...]
    rows: int
    ctr: float
    day_ctr: tuple[float, ...]
    bayes_auc: tuple[float, ...]
    files: tuple[Path, ...]
    seconds: float


def generate(
    out_dir: Path,
    *,
    days: int = 8,
    rows_per_day: int = 200_000,
    num_users: int = 20_000,
    num_items: int = 50_000,
    seed: int = 0,
    start_date: datetime.date = datetime.date(2026, 11, 1),
    history_length: int = 20,
) -> GenerateSummary:
    """Write synthetic impression logs as day-partitioned Parquet.

    The same arguments give byte-identical files. Each day is written to a
    folder beside `out_dir` and moved into place only when complete, so an
    interrupted run leaves no half-written day. Partitions and the manifest of
    an earlier run in `out_dir` are replaced.

    Polars lists every file under a folder, the manifest included, so read the
    days with a glob: ``pl.scan_parquet(out_dir / "**" / "*.parquet",
    hive_partitioning=True)``; pyarrow datasets skip ``_`` files on their own.

    Args:
        out_dir: folder to write; created if missing.
        days: number of consecutive days, from `start_date`.
        rows_per_day: impressions per day.
        num_users: users in the world; ids are 0 .. num_users - 1.
        num_items: items in the world; ids are 0 .. num_items - 1.
        seed: seed of every random draw (a non-negative integer).
        start_date: the first day.
        history_length: longest `recent_clicks` list kept per user.

    Returns:
        What was written, with the CTR and the Bayes AUC of each day.

    Raises:
        ValueError: a count is not a positive integer, the seed is negative, or
            `out_dir` holds files that are not an earlier run's output.
    """
    for name, value in (
        ("days", days),
        ("rows_per_day", rows_per_day),
        ("num_users", num_users),
        ("num_items", num_items),
        ("history_length", history_length),
    ):
        _check_positive(name, value)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(start_date, datetime.date) or isinstance(
        start_date, datetime.datetime
    ):
        raise ValueError(f"start_date must be a datetime.date, got {start_date!r}")

    started = time.perf_counter()
    out_dir = Path(out_dir)
    dates = tuple(start_date + datetime.timedelta(days=index) for index in range(days))
    arguments = {
        "days": days,
        "rows_per_day": rows_per_day,
        "num_users": num_users,
        "num_items": num_items,
        "seed": int(seed),
        "start_date": start_date.isoformat(),
        "history_length": history_length,
    }
    # Days are written beside out_dir, not in it, so a reader of out_dir never
    # meets a half-written file.
    resolved = out_dir.resolve()
    partial_dir = resolved.parent / f".{resolved.name}.partial"
    _prepare_out_dir(out_dir, partial_dir)
    _write_manifest(out_dir, arguments, days_written=None)

    world_seed, days_seed = np.random.SeedSequence(int(seed)).spawn(2)
    world = _build_world(np.random.default_rng(world_seed), num_users, num_items)
    history = _ClickHistory(num_users, history_length)
    logger.info(
        "generating %d days x %d rows: %d users, %d items, seed %d, into %s",
        days,
        rows_per_day,
        num_users,
        num_items,
        seed,
        out_dir,
    )

    day_results = []
    try:
        for index, (date, day_seed) in enumerate(
            zip(dates, days_seed.spawn(days), strict=True)
        ):
            result = _write_day(
                world,
                history,
                np.random.default_rng(day_seed),
                out_dir=out_dir,
                partial_dir=partial_dir,
                date=date,
                day_index=index,
                rows=rows_per_day,
            )
            day_results.append(result)
            logger.info(
                "%s: %d rows, ctr %.4f, bayes auc %.4f -> %s",
                date,
                result.rows,
                result.ctr,
                result.bayes_auc,
                result.path,
            )
    finally:
        shutil.rmtree(partial_dir, ignore_errors=True)

    rows = sum(result.rows for result in day_results)
    clicks = sum(result.clicks for result in day_results)
    summary = GenerateSummary(
        out_dir=out_dir,
        days=dates,
        rows=rows,
        ctr=clicks / rows,
        day_ctr=tuple(result.ctr for result in day_results),
        bayes_auc=tuple(result.bayes_auc for result in day_results),
        files=tuple(result.path for result in day_results),
        seconds=time.perf_counter() - started,
    )
    _write_manifest(out_dir, arguments, days_written=day_results)
    logger.info(
        "wrote %d rows in %.1f s, ctr %.4f, into %s",
        rows,
        summary.seconds,
        summary.ctr,
        out_dir,
    )
    return summary


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class _DayResult:
    date: datetime.date
    path: Path
    rows: int
    clicks: int
    ctr: float
    bayes_auc: float


def _prepare_out_dir(out_dir: Path, partial_dir: Path) -> None:
    """Create `out_dir`, clearing an earlier run's days; refuse foreign files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(out_dir.iterdir())
    if entries and not (out_dir / MANIFEST_NAME).is_file():
        raise ValueError(
            f"out_dir {out_dir} is not empty and has no {MANIFEST_NAME}, so it is "
            "not an earlier run's output; choose an empty or new folder"
        )
    for entry in entries:
        if entry.name.startswith("day=") and entry.is_dir():
            shutil.rmtree(entry)
    shutil.rmtree(partial_dir, ignore_errors=True)


def _write_manifest(
    out_dir: Path, arguments: dict[str, Any], days_written: list[_DayResult] | None
) -> None:
    """Write `_generator.json`: how the data were made, and per-day numbers."""
    manifest: dict[str, Any] = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "likely_version": __version__,
        "arguments": arguments,
        "complete": days_written is not None,
        "history_refresh": "hourly: an impression sees clicks of earlier hours",
    }
    if days_written is not None:
        manifest["days"] = [
            {
                "day": result.date.isoformat(),
                "rows": result.rows,
                "clicks": result.clicks,
                "ctr": result.ctr,
                "bayes_auc": None if math.isnan(result.bayes_auc) else result.bayes_auc,
            }
            for result in days_written
        ]
    path = out_dir / MANIFEST_NAME
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, path)


def _write_day(
    world: _World,
    history: _ClickHistory,
    rng: np.random.Generator,
    *,
    out_dir: Path,
    partial_dir: Path,
    date: datetime.date,
    day_index: int,
    rows: int,
) -> _DayResult:
    """Simulate one day hour by hour and move its file into place when complete."""
    name = f"day={date.isoformat()}"
    temporary_dir = partial_dir / name
    temporary_dir.mkdir(parents=True)
    day = _DayState.start(world, date=date, day_index=day_index)
    rows_per_hour = rng.multinomial(rows, day.hour_share)
    chunk_rows = max(1, min(CHUNK_ROWS, (2**31 - 1) // history.length))

    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with pq.ParquetWriter(temporary_dir / FILE_NAME, SCHEMA) as writer:
        for hour, hour_rows in enumerate(rows_per_hour.tolist()):
            # History is refreshed hourly: every impression of an hour sees the
            # clicks of earlier hours only, and this hour's clicks are added at
            # its end, in row order.
            clicked_users: list[np.ndarray] = []
            clicked_items: list[np.ndarray] = []
            for start in range(0, hour_rows, chunk_rows):
                count = min(chunk_rows, hour_rows - start)
                chunk = _simulate(world, history, day, rng, hour=hour, count=count)
                writer.write_batch(_to_batch(world, chunk))
                clicked = chunk.label == 1
                clicked_users.append(chunk.users[clicked])
                clicked_items.append(chunk.items[clicked])
                probabilities.append(chunk.probability)
                labels.append(chunk.label)
            if clicked_users:
                history.append(
                    np.concatenate(clicked_users), np.concatenate(clicked_items)
                )

    final_dir = out_dir / name
    os.replace(temporary_dir, final_dir)
    probability = np.concatenate(probabilities)
    label = np.concatenate(labels)
    clicks = int(label.sum(dtype=np.int64))
    try:
        bayes_auc = roc_auc(label, probability)
    except ValueError as error:
        logger.warning("%s: no Bayes AUC (%s)", date, error)
        bayes_auc = math.nan
    return _DayResult(
        date=date,
        path=final_dir / FILE_NAME,
        rows=label.size,
        clicks=clicks,
        ctr=clicks / label.size,
        bayes_auc=bayes_auc,
    )


def _to_batch(world: _World, chunk: _Chunk) -> pa.RecordBatch:
    """Arrow columns of a chunk, in `SCHEMA` order; no per-row Python."""
    users, items = chunk.users, chunk.items
    recent_clicks = pa.ListArray.from_arrays(
        pa.array(chunk.history_offsets), pa.array(chunk.history_items)
    )
    columns = [
        pa.array(chunk.label),
        pa.array(chunk.probability),
        pa.array(users),
        _strings(USER_TYPES, world.user_type[users]),
        pa.array(world.user_is_seller[users]),
        _strings(REGIONS, world.user_region[users]),
        _strings(MEMBERSHIPS, world.user_membership[users]),
        pa.array(world.user_power[users]),
        pa.array(items),
        pa.array(world.item_category[items]),
        pa.array(world.item_top_category[items]),
        pa.array(world.item_brand[items]),
        pa.array(world.item_seller[items]),
        pa.array(world.item_price[items]),
        pa.array(world.item_price_band[items]),
        pa.array(world.item_min_order_qty[items]),
        pa.array(np.full(users.size, chunk.hour, dtype=np.int8)),
        _strings(PLATFORMS, chunk.platform),
        pa.array(chunk.position),
        recent_clicks,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _strings(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(names, pa.string()), pa.array(codes))


# --------------------------------------------------------------------------- world


class _CdfSampler:
    """Draws indices with probability proportional to fixed weights."""

    def __init__(self, weights: np.ndarray) -> None:
        cdf = np.cumsum(weights, dtype=np.float64)
        self._cdf = cdf / cdf[-1]

    def __call__(self, uniforms: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self._cdf, uniforms, side="right")
        return np.minimum(index, self._cdf.size - 1)


class _GroupedSampler:
    """Draws a member of a given group, proportional to the members' weights.

    All groups share one sorted key array: a member's key is its group plus its
    cumulative share within the group, so a draw from group g with uniform u is
    one `searchsorted` for g + u. Only groups with a positive total weight may be
    drawn from.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, num_groups: int):
        self._members = np.argsort(groups, kind="stable")
        sorted_weights = weights[self._members].astype(np.float64)
        counts = np.bincount(groups, minlength=num_groups)
        starts = np.cumsum(counts) - counts
        self._ends = starts + counts - 1
        cumulative = np.r_[0.0, np.cumsum(sorted_weights)]
        before = np.repeat(cumulative[starts], counts)
        totals = np.repeat(cumulative[starts + counts] - cumulative[starts], counts)
        # The last member's share is total / total, exactly 1.
        share = np.divide(
            cumulative[1:] - before,
            totals,
            out=np.ones_like(totals),
            where=totals > 0,
        )
        self._keys = groups[self._members] + share

    def __call__(self, groups: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self._keys, groups + uniforms, side="right")
        # Rounding of g + u can step one past the group's last key.
        return self._members[np.minimum(index, self._ends[groups])]


@dataclass(frozen=True, eq=False)
class _World:
    """Everything fixed for a run: users, items, samplers, click-model tables.

    User arrays are indexed by user id (U,), item arrays by item id (I,).
    """

    user_type: np.ndarray  # int8, BUSINESS or CONSUMER
    user_is_seller: np.ndarray  # int8
    user_region: np.ndarray  # index into REGIONS
    user_membership: np.ndarray  # index into MEMBERSHIPS
    user_power: np.ndarray  # float32 purchasing power
    user_power_z: np.ndarray  # standardized log purchasing power
    user_bias: np.ndarray  # click propensity, log-odds
    user_platform: np.ndarray  # usual platform, index into PLATFORMS
    user_interests: np.ndarray  # (U, NUM_INTERESTS) leaf categories
    users_of_type: tuple[np.ndarray, ...]
    user_samplers: tuple[_CdfSampler | None, ...]  # activity within each type
    type_activity: np.ndarray  # (2,) total activity of each user type
    item_category: np.ndarray  # leaf category
    item_top_category: np.ndarray
    item_brand: np.ndarray
    item_seller: np.ndarray
    item_price: np.ndarray  # float32
    item_price_band: np.ndarray  # decile of the price within its leaf
    item_min_order_qty: np.ndarray  # float32
    item_band_z: np.ndarray  # price band centred and scaled
    item_min_order_z: np.ndarray  # standardized log minimum order quantity
    item_quality: np.ndarray  # log-odds, tied to popularity
    item_trend: np.ndarray  # log-odds gained per day
    item_sampler: _CdfSampler  # by popularity
    items_in_leaf: _GroupedSampler  # by popularity within a leaf
    affinity_start: np.ndarray  # (2, NUM_TOP_CATEGORIES) log-odds on day 0
    affinity_turn: np.ndarray  # (2, NUM_TOP_CATEGORIES) direction of the drift
    type_leaf_factors: np.ndarray  # (2, NUM_LEAF_CATEGORIES, AFFINITY_RANK)
    brand_factors: np.ndarray  # (NUM_BRANDS, AFFINITY_RANK)
    region_top_affinity: np.ndarray  # (NUM_REGIONS, NUM_TOP_CATEGORIES)
    seller_leaf_affinity: np.ndarray  # (NUM_LEAF_CATEGORIES,)
    hour_platform_logit: np.ndarray  # (24, len(PLATFORMS))
    hour_profile: np.ndarray  # (2, 24) share of each type's activity by hour


def _build_world(rng: np.random.Generator, num_users: int, num_items: int) -> _World:
    """Draw the users, the catalog and the click-model tables from `rng`."""
    leaf_top = np.r_[
        np.arange(NUM_TOP_CATEGORIES),
        _CdfSampler(_zipf_weights(NUM_TOP_CATEGORIES, 0.7, rng))(
            rng.random(NUM_LEAF_CATEGORIES - NUM_TOP_CATEGORIES)
        ),
    ]
    top_log_price = rng.normal(3.5, 1.0, NUM_TOP_CATEGORIES)
    leaf_log_price = top_log_price[leaf_top] + rng.normal(0.0, 0.5, NUM_LEAF_CATEGORIES)
    top_wholesale = rng.beta(2.0, 2.0, NUM_TOP_CATEGORIES)

    items = _draw_items(rng, num_items, leaf_top, leaf_log_price, top_wholesale)
    leaf_counts = np.bincount(items["item_category"], minlength=NUM_LEAF_CATEGORIES)
    users = _draw_users(rng, num_users, leaf_top, leaf_counts, top_wholesale)

    hours = np.arange(24)
    peaks = rng.uniform(0.0, 24.0, len(PLATFORMS))
    amplitudes = np.array([0.3, 0.3, 0.2])
    hour_platform = amplitudes * np.cos(2 * np.pi * (hours[:, None] - peaks) / 24)
    hour_profile = np.stack(
        [
            _daily_bumps(hours, [10.0, 15.0], [1.5, 2.0], [1.0, 0.9], floor=0.04),
            _daily_bumps(hours, [12.5, 21.0], [1.2, 2.5], [0.5, 1.0], floor=0.08),
        ]
    )
    return _World(
        **users,
        **items,
        affinity_start=rng.normal(0.0, 0.45, (2, NUM_TOP_CATEGORIES)),
        affinity_turn=rng.normal(0.0, 0.45, (2, NUM_TOP_CATEGORIES)),
        # A sum of AFFINITY_RANK products of three unit normals has variance
        # AFFINITY_RANK; 0.2 scales the third-order term to a spread of ~0.4.
        type_leaf_factors=0.2
        * rng.normal(0.0, 1.0, (2, NUM_LEAF_CATEGORIES, AFFINITY_RANK)),
        brand_factors=rng.normal(0.0, 1.0, (NUM_BRANDS, AFFINITY_RANK)),
        region_top_affinity=rng.normal(0.0, 0.15, (NUM_REGIONS, NUM_TOP_CATEGORIES)),
        seller_leaf_affinity=rng.normal(0.0, 0.6, NUM_LEAF_CATEGORIES),
        hour_platform_logit=hour_platform,
        hour_profile=hour_profile / hour_profile.sum(axis=1, keepdims=True),
    )


def _draw_items(
    rng: np.random.Generator,
    num_items: int,
    leaf_top: np.ndarray,
    leaf_log_price: np.ndarray,
    top_wholesale: np.ndarray,
) -> dict[str, Any]:
    leaf_share = _zipf_weights(NUM_LEAF_CATEGORIES, 0.9, rng)
    category = _CdfSampler(leaf_share)(rng.random(num_items))
    top = leaf_top[category]

    # Brands mostly sell within one top-level category; every top has one.
    brand_top = np.r_[
        np.arange(NUM_TOP_CATEGORIES),
        rng.integers(0, NUM_TOP_CATEGORIES, NUM_BRANDS - NUM_TOP_CATEGORIES),
    ]
    brand_weights = _zipf_weights(NUM_BRANDS, 1.1, rng)
    home_brand = _GroupedSampler(brand_top, brand_weights, NUM_TOP_CATEGORIES)(
        top, rng.random(num_items)
    )
    any_brand = _CdfSampler(brand_weights)(rng.random(num_items))
    brand = np.where(rng.random(num_items) < 0.85, home_brand, any_brand)

    num_sellers = max(1, num_items // 25)
    seller = _CdfSampler(_zipf_weights(num_sellers, 1.0, rng))(rng.random(num_items))

    # The band is the price's decile within its leaf: the noise's normal decile.
    price_noise = rng.normal(0.0, 1.0, num_items)
    price = np.maximum(
        np.round(np.exp(leaf_log_price[category] + 0.6 * price_noise), 2), 0.01
    )
    price_band = np.searchsorted(NORMAL_DECILES, price_noise, side="right")

    wholesale = rng.random(num_items) < top_wholesale[top]
    wholesale_order = np.ceil(10.0 * (1.0 + rng.pareto(1.2, num_items)))
    retail_order = 1.0 + np.floor(rng.pareto(2.5, num_items))
    min_order = np.minimum(np.where(wholesale, wholesale_order, retail_order), 1e5)

    popularity = _zipf_weights(num_items, 0.9, rng)
    quality = 0.12 * _standardize(np.log(popularity)) + rng.normal(0.0, 0.3, num_items)
    trend_kind = rng.random(num_items)
    rising = rng.normal(0.15, 0.05, num_items)
    fading = rng.normal(-0.1, 0.03, num_items)
    trend = np.where(
        trend_kind < 0.05, rising, np.where(trend_kind < 0.08, fading, 0.0)
    )

    return {
        "item_category": category.astype(np.int64),
        "item_top_category": top.astype(np.int64),
        "item_brand": brand.astype(np.int64),
        "item_seller": seller.astype(np.int64),
        "item_price": price.astype(np.float32),
        "item_price_band": price_band.astype(np.int64),
        "item_min_order_qty": min_order.astype(np.float32),
        # Centred and scaled to unit variance (bands are uniform on 0..9).
        "item_band_z": (price_band - (NUM_PRICE_BANDS - 1) / 2)
        / math.sqrt((NUM_PRICE_BANDS**2 - 1) / 12),
        "item_min_order_z": _standardize(np.log(min_order)),
        "item_quality": quality,
        "item_trend": trend,
        "item_sampler": _CdfSampler(popularity),
        "items_in_leaf": _GroupedSampler(category, popularity, NUM_LEAF_CATEGORIES),
    }


def _draw_users(
    rng: np.random.Generator,
    num_users: int,
    leaf_top: np.ndarray,
    leaf_counts: np.ndarray,
    top_wholesale: np.ndarray,
) -> dict[str, Any]:
    user_type = (rng.random(num_users) >= BUSINESS_SHARE).astype(np.int8)
    is_seller = (rng.random(num_users) < SELLER_SHARE[user_type]).astype(np.int8)
    region = _CdfSampler(_zipf_weights(NUM_REGIONS, 0.8, rng))(rng.random(num_users))
    membership = _draw_by_row(MEMBERSHIP_SHARE, user_type, rng.random(num_users))
    log_power = (
        7.0
        + 1.0 * (user_type == BUSINESS)
        + 0.25 * membership
        + rng.normal(0.0, 0.8, num_users)
    )
    platform = _draw_by_row(PLATFORM_SHARE, user_type, rng.random(num_users))
    activity = _zipf_weights(num_users, 0.5, rng)

    # Interests: a home top-level category (business users lean to wholesale
    # ones), then leaves mostly under it, weighted by how many items they hold.
    top_items = np.bincount(leaf_top, weights=leaf_counts, minlength=NUM_TOP_CATEGORIES)
    home = np.zeros(num_users, np.int64)
    home_uniforms = rng.random(num_users)
    for kind, lean in ((BUSINESS, top_wholesale), (CONSUMER, 1.0 - top_wholesale)):
        mask = user_type == kind
        if mask.any():
            home[mask] = _CdfSampler(top_items * lean)(home_uniforms[mask])
    leaves_in_top = _GroupedSampler(leaf_top, leaf_counts, NUM_TOP_CATEGORIES)
    any_leaf = _CdfSampler(leaf_counts)
    interests = np.empty((num_users, NUM_INTERESTS), np.int64)
    for column in range(NUM_INTERESTS):
        near = rng.random(num_users) < 0.7
        interests[:, column] = np.where(
            near,
            leaves_in_top(home, rng.random(num_users)),
            any_leaf(rng.random(num_users)),
        )

    users_of_type = tuple(np.flatnonzero(user_type == kind) for kind in (0, 1))
    return {
        "user_type": user_type,
        "user_is_seller": is_seller,
        "user_region": region.astype(np.int8),
        "user_membership": membership.astype(np.int8),
        "user_power": np.exp(log_power).astype(np.float32),
        "user_power_z": _standardize(log_power),
        "user_bias": rng.normal(0.0, 0.35, num_users),
        "user_platform": platform.astype(np.int8),
        "user_interests": interests,
        "users_of_type": users_of_type,
        "user_samplers": tuple(
            _CdfSampler(activity[ids]) if ids.size else None for ids in users_of_type
        ),
        "type_activity": np.array([activity[ids].sum() for ids in users_of_type]),
    }


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weights rank**-exponent, the ranks shuffled over the n ids."""
    ranks = rng.permutation(n) + 1.0
    return ranks**-exponent


def _standardize(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def _draw_by_row(
    shares: np.ndarray, rows: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """Draw a column of `shares` for each entry, from the row it names."""
    cdf = np.cumsum(shares, axis=1)
    drawn = (uniforms[:, None] >= cdf[rows]).sum(axis=1)
    return np.minimum(drawn, shares.shape[1] - 1)


def _daily_bumps(
    hours: np.ndarray,
    centres: list[float],
    widths: list[float],
    heights: list[float],
    floor: float,
) -> np.ndarray:
    """Activity by hour: a floor plus Gaussian bumps on the 24-hour circle."""
    distance = np.abs(hours[:, None] - np.array(centres))
    distance = np.minimum(distance, 24 - distance)
    bumps = np.array(heights) * np.exp(-0.5 * (distance / np.array(widths)) ** 2)
    return floor + bumps.sum(axis=1)


# ------------------------------------------------------------------------- history


@dataclass(frozen=True, eq=False)
class _HistoryView:
    """Recent clicks of a chunk's rows, flattened.

    Row r's clicks are `items[offsets[r]:offsets[r + 1]]`, oldest first; `rows`
    names each entry's row and `ages` counts back from the newest (0).
    """

    offsets: np.ndarray  # (B + 1,) int32
    items: np.ndarray  # (total,) int64
    rows: np.ndarray  # (total,)
    ages: np.ndarray  # (total,)


class _ClickHistory:
    """Each user's last `length` clicked items, in one ring buffer per user.

    User u's k-th click ever (k from 0) sits at slot k % length of row u, so the
    newest `min(count[u], length)` slots before `count[u] % length` are the
    history and older clicks are overwritten.
    """

    def __init__(self, num_users: int, length: int) -> None:
        self.length = length
        self._items = np.zeros((num_users, length), np.int64)
        self._count = np.zeros(num_users, np.int64)

    def read(self, users: np.ndarray) -> _HistoryView:
        count = self._count[users]
        lengths = np.minimum(count, self.length)
        offsets = np.zeros(users.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = np.repeat(np.arange(users.size), lengths)
        oldest_first = np.arange(offsets[-1]) - offsets[rows]
        slots = (count[rows] - lengths[rows] + oldest_first) % self.length
        return _HistoryView(
            offsets=offsets.astype(np.int32),
            items=self._items[users[rows], slots],
            rows=rows,
            ages=lengths[rows] - 1 - oldest_first,
        )

    def append(self, users: np.ndarray, items: np.ndarray) -> None:
        """Add clicks, given in time order, to their users' histories."""
        if users.size == 0:
            return
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        counts = np.diff(np.r_[starts, users.size])
        rank = np.arange(users.size) - np.repeat(starts, counts)
        # Only each user's last `length` clicks survive; writing just those keeps
        # the slots distinct, so the fancy assignment has no duplicates.
        keep = rank >= np.repeat(counts, counts) - self.length
        kept_users = users[keep]
        slots = (self._count[kept_users] + rank[keep]) % self.length
        self._items[kept_users, slots] = items[keep]
        self._count[users[starts]] += counts


# ------------------------------------------------------------------------ simulate


@dataclass(frozen=True, eq=False)
class _DayState:
    """What changes from day to day: activity by hour and the drifting tables."""

    day_index: int
    hour_share: np.ndarray  # (24,) share of the day's impressions
    business_share: np.ndarray  # (24,) share of an hour's impressions by business
    affinity: np.ndarray  # (2, NUM_TOP_CATEGORIES) user type x top category

    @classmethod
    def start(cls, world: _World, *, date: datetime.date, day_index: int) -> _DayState:
        business_scale = WEEKEND_BUSINESS_ACTIVITY if date.weekday() >= 5 else 1.0
        business = world.type_activity[BUSINESS] * world.hour_profile[BUSINESS]
        business = business * business_scale
        consumer = world.type_activity[CONSUMER] * world.hour_profile[CONSUMER]
        total = business + consumer
        # The affinity table turns on a circle, slowly enough that neighbouring
        # days agree and a week apart they clearly differ.
        angle = DRIFT_RADIANS_PER_DAY * day_index
        return cls(
            day_index=day_index,
            hour_share=total / total.sum(),
            business_share=business / total,
            affinity=world.affinity_start * np.cos(angle)
            + world.affinity_turn * np.sin(angle),
        )


@dataclass(frozen=True, eq=False)
class _Chunk:
    """Impressions simulated together; rows are in time order within the hour."""

    hour: int
    users: np.ndarray  # (B,) int64
    items: np.ndarray  # (B,) int64
    platform: np.ndarray  # (B,) int8
    position: np.ndarray  # (B,) int16
    probability: np.ndarray  # (B,) float32
    label: np.ndarray  # (B,) int8
    history_offsets: np.ndarray  # (B + 1,) int32
    history_items: np.ndarray  # int64


def _simulate(
    world: _World,
    history: _ClickHistory,
    day: _DayState,
    rng: np.random.Generator,
    *,
    hour: int,
    count: int,
) -> _Chunk:
    """Draw `count` impressions of one hour and their clicks."""
    is_business = rng.random(count) < day.business_share[hour]
    user_uniforms = rng.random(count)
    users = np.empty(count, np.int64)
    for kind, mask in ((BUSINESS, is_business), (CONSUMER, ~is_business)):
        sampler = world.user_samplers[kind]
        if sampler is not None and mask.any():
            users[mask] = world.users_of_type[kind][sampler(user_uniforms[mask])]

    usual = rng.random(count) < USUAL_PLATFORM_SHARE
    platform = np.where(
        usual, world.user_platform[users], rng.integers(0, len(PLATFORMS), count)
    ).astype(np.int8)
    tail = 1.0 - np.exp(-NUM_POSITIONS / POSITION_SCALE)
    position = np.floor(-POSITION_SCALE * np.log1p(-rng.random(count) * tail))
    position = np.minimum(position, NUM_POSITIONS - 1).astype(np.int16)

    recent = history.read(users)
    items = _recall(world, recent, rng, users)
    logits = _click_logits(world, day, recent, users, items, hour, platform, position)
    probability = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    label = (rng.random(count) < probability).astype(np.int8)
    return _Chunk(
        hour=hour,
        users=users,
        items=items,
        platform=platform,
        position=position,
        probability=probability,
        label=label,
        history_offsets=recent.offsets,
        history_items=recent.items,
    )


def _recall(
    world: _World, recent: _HistoryView, rng: np.random.Generator, users: np.ndarray
) -> np.ndarray:
    """Pick each impression's item as a feed's candidate step would."""
    count = users.size
    source = rng.random(count)
    interest = _CdfSampler(INTEREST_SHARE)(rng.random(count))
    leaf = world.user_interests[users, interest]

    lengths = np.diff(recent.offsets)
    pick = rng.random(count)
    similar = (source < SIMILAR_SHARE) & (lengths > 0)
    if similar.any():
        back = np.minimum(pick[similar] * lengths[similar], lengths[similar] - 1)
        index = recent.offsets[:-1][similar] + back.astype(np.int64)
        leaf[similar] = world.item_category[recent.items[index]]

    item_uniforms = rng.random(count)
    explore = source >= 1.0 - EXPLORE_SHARE
    items = np.empty(count, np.int64)
    items[explore] = world.item_sampler(item_uniforms[explore])
    items[~explore] = world.items_in_leaf(leaf[~explore], item_uniforms[~explore])
    return items


def _click_logits(
    world: _World,
    day: _DayState,
    recent: _HistoryView,
    users: np.ndarray,
    items: np.ndarray,
    hour: int,
    platform: np.ndarray,
    position: np.ndarray,
) -> np.ndarray:
    """The hidden click model's log-odds for each impression, shape (B,)."""
    user_type = world.user_type[users]
    leaf = world.item_category[items]
    top = world.item_top_category[items]
    brand = world.item_brand[items]

    logits = BASE_LOGIT + world.user_bias[users] + world.item_quality[items]
    logits += world.item_trend[items] * day.day_index
    logits -= POSITION_WEIGHT * np.log1p(position / 2.0)
    logits += day.affinity[user_type, top]
    logits += np.einsum(
        "br,br->b", world.type_leaf_factors[user_type, leaf], world.brand_factors[brand]
    )
    logits += world.region_top_affinity[world.user_region[users], top]
    logits += MEMBERSHIP_LOGIT[world.user_membership[users]]
    logits += world.seller_leaf_affinity[leaf] * world.user_is_seller[users]
    logits += world.hour_platform_logit[hour, platform]
    band_z = world.item_band_z[items]
    logits += (POWER_BAND_WEIGHT * world.user_power_z[users] - BAND_WEIGHT) * band_z
    logits += (
        MIN_ORDER_WEIGHT * MIN_ORDER_SIGN[user_type] * world.item_min_order_z[items]
    )

    # The recency-weighted share of recent clicks in the item's leaf (brand)
    # raises the odds. A share, not a count, so the effect does not keep growing
    # while histories fill up over the first days.
    weight = HISTORY_RECENCY ** recent.ages.astype(np.float64)
    same_leaf = world.item_category[recent.items] == leaf[recent.rows]
    same_brand = world.item_brand[recent.items] == brand[recent.rows]
    size = users.size
    total = np.bincount(recent.rows, weights=weight, minlength=size)
    total = np.where(total > 0, total, 1.0)
    leaf_score = np.bincount(recent.rows, weights=weight * same_leaf, minlength=size)
    brand_score = np.bincount(recent.rows, weights=weight * same_brand, minlength=size)
    logits += HISTORY_CATEGORY_WEIGHT * leaf_score / total
    logits += HISTORY_BRAND_WEIGHT * brand_score / total
    return logits
