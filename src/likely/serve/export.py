"""A day of the service's events, written back as a day of impression logs.

This is where the loop closes: the feature store records every impression
the service served, with the raw values it ranked with, and every click; the
export turns one UTC day of them into the logs' own schema, in the Hive layout
`likely prepare` reads, so the model can learn from them the next day.

- One row per impression, in arrival order. Its columns come from the
  impression's `features`, typed as the logs type them (the store's template);
  a column the features lack is null, except the user and item columns, which
  fall back to the event's ids. A column like the generator's `probability`
  therefore stays null.
- The label is 1 when the same user clicked the same item on the same day at
  or after the impression (when both carry a request id, they must match).
  A click labels one impression only: the latest such impression at or
  before it. Clicks with no such impression are counted and logged; so are
  clicks on a later day than their impression, which stay unlabelled.
- The file is `out_dir/<date column>=YYYY-MM-DD/part-0.parquet`, as
  `likely generate` writes a day; the date is the folder, not a column.
  It is written beside its final name and renamed into place, so a reader
  never meets half a file, and exporting a day again replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from likely.serve.store import FeatureStore

logger = logging.getLogger(__name__)

# As the synthetic generator names a day's file.
FILE_NAME = "part-0.parquet"
# The partition folder's key for logs whose config names no date column.
DEFAULT_DATE_COLUMN = "day"
_KEYS = ["user_id", "item_id"]


class ExportError(ValueError):
    """A day that cannot be exported from this store."""


@dataclass(frozen=True)
class LabelledDay:
    """A day's impressions as log rows, and what became of its clicks.

    Attributes:
        day: the UTC day.
        rows: one row per impression, the template's columns and types less
            the date column, the label filled.
        label_column: the column holding the label.
        date_column: the key of the partition folder.
        clicks: click events of the day.
        unmatched_clicks: clicks that labelled no impression.
    """

    day: dt.date
    rows: pl.DataFrame
    label_column: str
    date_column: str
    clicks: int
    unmatched_clicks: int

    @property
    def positives(self) -> int:
        """Impressions labelled 1."""
        return int(self.rows[self.label_column].cast(pl.Int64).sum())


def label_day(
    store: FeatureStore,
    day: dt.date,
    *,
    label_column: str | None = None,
    date_column: str | None = None,
) -> LabelledDay:
    """Build a day's log rows from the store's events; see the module docstring.

    Args:
        store: a feature store with profiles loaded (for the logs' schema).
        day: the UTC day.
        label_column: the label's column; default the store's.
        date_column: the partition key; default the store's, else "day".

    Raises:
        ExportError: the store has no profiles loaded, or no impressions on
            that day.
    """
    meta, template = store.meta(), store.template()
    if meta is None or template is None:
        raise ExportError(
            f"the feature store {store!r} has no profiles loaded, so it knows no "
            "log schema to export in; load profiles first"
        )
    label_column = label_column or meta.label_column
    date_column = date_column or meta.date_column or DEFAULT_DATE_COLUMN
    events = store.events(day).with_row_index("event")
    impressions = events.filter(pl.col("kind") == "impression")
    clicks = events.filter(pl.col("kind") == "click")
    if impressions.height == 0:
        raise ExportError(
            f"no impressions on {day} in the feature store {store!r}; nothing to "
            "export"
        )
    matched = _matched_impressions(impressions, clicks)
    label = impressions["event"].is_in(matched["impression"].implode())

    decoded = [json.loads(text) for text in impressions["features"]]
    fallback = {meta.user_column: "user_id", meta.item_column: "item_id"}
    columns = []
    if label_column not in template.columns:
        columns.append(label.cast(pl.Int8).alias(label_column))
    for name, dtype in template.schema.items():
        if name == date_column:
            continue
        if name == label_column:
            series = label.cast(dtype).alias(name)
        else:
            series = _column(name, dtype, [row.get(name) for row in decoded])
        if name in fallback:
            ids = impressions[fallback[name]].cast(dtype, strict=False)
            series = series.fill_null(ids)
        columns.append(series)
    unmatched = clicks.height - matched.height
    if unmatched:
        logger.warning(
            "%s: %d of %d click(s) follow no impression of their item that day; "
            "left out",
            day,
            unmatched,
            clicks.height,
        )
    return LabelledDay(
        day=day,
        rows=pl.DataFrame(columns),
        label_column=label_column,
        date_column=date_column,
        clicks=clicks.height,
        unmatched_clicks=unmatched,
    )


def _matched_impressions(
    impressions: pl.DataFrame, clicks: pl.DataFrame
) -> pl.DataFrame:
    """The impression each click labels: `click`, `impression` (event indices).

    A click's candidates are the impressions of its user and item at or
    before it; when the click has a request id, those with another request id
    are not candidates. The latest candidate wins (by time, then arrival).
    """
    shown = impressions.select(
        *_KEYS,
        "timestamp",
        "request_id",
        pl.col("timestamp").alias("shown_at"),
        pl.col("event").alias("impression"),
    ).sort("timestamp", "impression")
    clicked = clicks.select(
        *_KEYS, "timestamp", "request_id", pl.col("event").alias("click")
    ).sort("timestamp", "click")
    has_request = pl.col("request_id").is_not_null()

    def latest(left: pl.DataFrame, right: pl.DataFrame, by: list[str]):
        right = right.select(*by, "timestamp", "shown_at", "impression")
        found = left.select(*by, "timestamp", "click").join_asof(
            right, on="timestamp", by=by, strategy="backward", check_sortedness=False
        )
        return found.select("click", "impression", "shown_at")

    candidates = pl.concat(
        [
            # Clicks without a request id: any impression of the pair.
            latest(clicked.filter(~has_request), shown, _KEYS),
            # Clicks with one: impressions of that request...
            latest(
                clicked.filter(has_request),
                shown.filter(has_request),
                [*_KEYS, "request_id"],
            ),
            # ...or impressions that carry none.
            latest(clicked.filter(has_request), shown.filter(~has_request), _KEYS),
        ]
    )
    return (
        candidates.drop_nulls("impression")
        .sort("shown_at", "impression")
        .group_by("click", maintain_order=True)
        .last()
        .select("click", "impression")
    )


def _column(name: str, dtype: pl.DataType, values: list[Any]) -> pl.Series:
    """A template column from the features' values; values of another type
    become null, counted in a warning."""
    try:
        return pl.Series(name, values, dtype=dtype, strict=True)
    except (TypeError, OverflowError, pl.exceptions.PolarsError):
        pass
    try:
        series = pl.Series(name, values, dtype=dtype, strict=False)
    except (TypeError, OverflowError, pl.exceptions.PolarsError) as error:
        raise ExportError(
            f"column {name!r}: the impressions' values cannot be read as {dtype}: "
            f"{error}"
        ) from None
    lost = sum(value is not None for value in values) - series.count()
    if lost:
        logger.warning(
            "column %r: %d value(s) in the impressions' features are not %s; "
            "left null",
            name,
            lost,
            dtype,
        )
    return series


def write_day(labelled: LabelledDay, out_dir: Path) -> Path:
    """Write a labelled day as `out_dir/<date column>=YYYY-MM-DD/part-0.parquet`.

    The file is written to a hidden name beside it (readers skip names that
    start with a dot), flushed to disk and renamed over any earlier export of
    the day.

    Returns:
        The path written.
    """
    folder = Path(out_dir) / f"{labelled.date_column}={labelled.day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    temporary = folder / f".{FILE_NAME}.tmp-{os.getpid()}"
    try:
        labelled.rows.write_parquet(temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    # The rename is durable only once the folder is synced too.
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    logger.info(
        "exported %d impression(s) of %s, %d clicked (%d click event(s)), to %s",
        labelled.rows.height,
        labelled.day,
        labelled.positives,
        labelled.clicks,
        path,
    )
    return path


def export_day(
    store: FeatureStore,
    day: dt.date,
    out_dir: Path,
    *,
    label_column: str | None = None,
    date_column: str | None = None,
) -> Path:
    """Write a day of the store's events as a day of logs; returns the file.

    `label_day`, then `write_day`: see the module docstring for the rows and
    the layout. The label and date columns default to those the profiles
    were loaded with.

    Raises:
        ExportError: the store has no profiles loaded, or no impressions on
            that day.
    """
    labelled = label_day(store, day, label_column=label_column, date_column=date_column)
    return write_day(labelled, out_dir)
