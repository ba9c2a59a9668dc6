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

Output is one Parquet file per day in Hive layout,
``out_dir/day=YYYY-MM-DD/part-0.parquet``, plus ``out_dir/_generator.json`` with
the arguments, the version and per-day numbers.

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
# Log-odds weights of the click model; BASE_LOGIT puts the overall CTR near 5%.
BASE_LOGIT = -3.75
POSITION_WEIGHT = 0.55
DRIFT_RADIANS_PER_DAY = 0.1
HISTORY_CATEGORY_WEIGHT = 0.6
HISTORY_BRAND_WEIGHT = 0.5
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

    Note that polars lists every file under a folder, manifest included, so read
    the days with a glob: ``pl.scan_parquet(out_dir / "**" / "*.parquet",
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
    partial_dir = out_dir.parent / f".{out_dir.name}.partial"
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
    day = _DayState.start(world, rng, date=date, day_index=day_index)
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
