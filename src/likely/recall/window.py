"""What recall needs from the raw logs of a window: items, users, clicks.

The prepared arrays hold encoded ids only, and every item seen fewer than
`min_count` times shares one out-of-vocabulary id there; recall needs each
item by its raw id, with its own features. So the window's files are read
again here, one at a time, keeping only:

- the latest row of each item of the training days, with its click and
  impression counts (the catalogue, and the popularity list);
- the latest row of each user (their features and behaviour sequence as the
  logs last recorded them);
- the target day's clicked (user, item) pairs, for evaluation.

"Latest" is the last row in file order, files in day order; the synthetic
logs are written hour by hour, so that is the latest in time. A user's
behaviour sequence is as the last impression saw it, so clicks made in the
same hour as that impression are not in it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from likely.config import ExperimentConfig, FeatureSpec, Side
from likely.data.encoders import EncodedColumns, FeatureEncoders
from likely.data.prepare import Prepared
from likely.data.readers import ColumnRoles, read_file

logger = logging.getLogger(__name__)

CLICKS = "recall_clicks"
IMPRESSIONS = "recall_impressions"
# The counts `read_window` adds to the item rows: no column of the logs.
COUNT_COLUMNS = (CLICKS, IMPRESSIONS)


@dataclass(frozen=True)
class WindowRows:
    """The latest raw row of each item and each user of a training window.

    Attributes:
        items: one row per item: its item-side columns, `recall_clicks` and
            `recall_impressions`, most clicked first.
        users: one row per user: the user column and the user-side columns.
        template: no rows, every raw column the encoders read, with its type.
    """

    items: pl.DataFrame
    users: pl.DataFrame
    template: pl.DataFrame


def side_columns(config: ExperimentConfig, side: Side) -> list[str]:
    """Raw columns of the features of one side, in feature order."""
    return list(dict.fromkeys(f.source for f in config.features if f.side == side))


def item_column(config: ExperimentConfig) -> str:
    """The raw column naming an item (`recall.item_feature`'s source)."""
    name = config.recall.item_feature
    return next(f.source for f in config.features if f.name == name)


def user_column(config: ExperimentConfig) -> str:
    """The raw column naming a user; recall needs `data.user_column`.

    Raises:
        ValueError: the config has no `data.user_column`.
    """
    if not config.data.user_column:
        raise ValueError(
            "recall needs data.user_column (users are queried, and evaluated, "
            "by it); set it in the config's data section"
        )
    return config.data.user_column


def behaviour_column(config: ExperimentConfig) -> str | None:
    """The user-side sequence of items the user clicked, if there is one: the
    sequence sharing the item feature's table (`recent_clicks`)."""
    item = next(f for f in config.features if f.name == config.recall.item_feature)
    for feature in config.sequence_features:
        if feature.side == Side.USER and feature.group == item.group:
            return feature.source
    return None


def _window_files(config: ExperimentConfig, prepared: Prepared) -> list[Path]:
    return [Path(entry[0]) for entry in prepared.manifest["files"]]


def _split_rows(
    config: ExperimentConfig, prepared: Prepared, file: Path, frame: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training-day rows, target-day rows) of one file."""
    data = config.data
    manifest = prepared.manifest
    if data.date_column is not None:
        day = pl.col(data.date_column).cast(pl.String)
        train = frame.filter(day.is_in(manifest["train_days"]))
        target = frame.filter(day == manifest["target_date"])
        return train, target
    if data.test_path is not None and file.is_relative_to(data.test_path):
        return frame.clear(), frame
    return frame, frame.clear()


def read_window(config: ExperimentConfig, prepared: Prepared) -> WindowRows:
    """Latest item and user rows of the window's training days.

    One file is in memory at a time; each is reduced to its last row per item
    and per user before the next is read.
    """
    data = config.data
    roles = ColumnRoles.from_config(config)
    item, user = item_column(config), user_column(config)
    item_columns = list(dict.fromkeys([item, *side_columns(config, Side.ITEM)]))
    user_columns = list(dict.fromkeys([user, *side_columns(config, Side.USER)]))
    items, users, counts = [], [], []
    template = None
    for file in _window_files(config, prepared):
        frame = read_file(file, data, roles, root=data.path).frame
        if template is None:
            template = frame.clear()
        train, _ = _split_rows(config, prepared, file, frame)
        if not train.height:
            continue
        items.append(train.select(item_columns).unique(item, keep="last"))
        users.append(train.select(user_columns).unique(user, keep="last"))
        counts.append(
            train.group_by(item).agg(
                pl.col(data.label).cast(pl.Int64).sum().alias(CLICKS),
                pl.len().cast(pl.Int64).alias(IMPRESSIONS),
            )
        )
    if template is None or not items:
        raise ValueError(f"no training rows in the window of {prepared.folder}")
    totals = (
        pl.concat(counts)
        .group_by(item)
        .agg(pl.col(CLICKS).sum(), pl.col(IMPRESSIONS).sum())
    )
    latest_items = (
        pl.concat(items, how="vertical_relaxed")
        .unique(item, keep="last", maintain_order=True)
        .join(totals, on=item, how="left")
        .sort([CLICKS, IMPRESSIONS, item], descending=[True, True, False])
    )
    latest_users = (
        pl.concat(users, how="vertical_relaxed")
        .unique(user, keep="last", maintain_order=True)
        .sort(user)
    )
    logger.info(
        "window rows: %d items (%d clicked), %d users",
        latest_items.height,
        int((latest_items[CLICKS] > 0).sum()),
        latest_users.height,
    )
    return WindowRows(latest_items, latest_users, template)


def target_clicks(config: ExperimentConfig, prepared: Prepared) -> pl.DataFrame:
    """Distinct (user, item) pairs clicked on the target day (the test split).

    Raises:
        ValueError: the window has no target day rows.
    """
    data = config.data
    roles = ColumnRoles.from_config(config)
    item, user = item_column(config), user_column(config)
    parts = []
    for file in _window_files(config, prepared):
        frame = read_file(file, data, roles, root=data.path).frame
        _, target = _split_rows(config, prepared, file, frame)
        clicked = target.filter(pl.col(data.label) > 0)
        parts.append(clicked.select(user, item))
    if not parts or not sum(p.height for p in parts):
        raise ValueError(
            f"the prepared window {prepared.folder} has no clicks on its target day"
        )
    return pl.concat(parts, how="vertical_relaxed").unique(maintain_order=True)


class RowEncoder:
    """Encode raw rows that hold only some columns, with a run's encoders.

    Columns the rows lack are added as nulls of the logs' type (so their ids
    are the missing id, which the tower reading them ignores); the label is 0
    and the day the target day, so nothing is undefined.

    Args:
        encoders: the run's fitted encoders.
        template: no rows, the raw columns and types of the logs.
        defaults: values for columns the rows lack instead of null.
    """

    def __init__(
        self,
        encoders: FeatureEncoders,
        template: pl.DataFrame,
        defaults: dict[str, Any],
    ):
        self.encoders, self.template = encoders, template.clear()
        self.defaults = {k: v for k, v in defaults.items() if k in template.columns}

    @classmethod
    def for_config(
        cls,
        config: ExperimentConfig,
        encoders: FeatureEncoders,
        template: pl.DataFrame,
        target_date: str | None,
    ) -> RowEncoder:
        defaults: dict[str, Any] = {config.data.label: 0}
        if config.data.date_column and target_date:
            defaults[config.data.date_column] = dt.date.fromisoformat(target_date)
        return cls(encoders, template, defaults)

    def complete(self, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` with every column of the template, in the template's types."""
        missing = {
            name: value
            for name, value in self.defaults.items()
            if name not in rows.columns
        }
        filled = rows.with_columns(
            [
                pl.lit(value).cast(self.template.schema[name]).alias(name)
                for name, value in missing.items()
            ]
        )
        return pl.concat([self.template, filled], how="diagonal_relaxed").select(
            self.template.columns
        )

    def encode(self, rows: pl.DataFrame) -> EncodedColumns:
        return self.encoders.transform(self.complete(rows))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _same_kind(value: Any, dtype: pl.DataType) -> bool:
    """Whether a JSON value is of the kind a column holds (None fits all)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return dtype == pl.Boolean
    if dtype.is_integer():
        return isinstance(value, int)
    if dtype.is_float():
        return isinstance(value, int | float)
    if dtype in (pl.String, pl.Categorical):
        return isinstance(value, str)
    if isinstance(dtype, pl.List):
        return isinstance(value, list)
    return True


def on_side(features: Sequence[FeatureSpec], side: Side) -> np.ndarray:
    """`(n,)` bool: which of these features are of `side`."""
    return np.array([f.side == side for f in features], dtype=bool)


# Encoded user and context parts kept between requests. A part is two small
# rows, so 100k of them take a few MB; past that the cache starts afresh.
CACHE_SIZE = 100_000


@dataclass(frozen=True)
class QueryRow:
    """The encoded row of one request, item-side columns left at 0.

    Attributes:
        sparse: `(1, F)` ids.
        dense: `(1, F_dense)`.
        sequence: `(1, S, L)`.
    """

    sparse: np.ndarray
    dense: np.ndarray
    sequence: np.ndarray


class QueryEncoder:
    """Encode the one row of an online request (a user's columns, their
    behaviour list, the context) as `RowEncoder` would, but fast.

    Each side is encoded on its own: a feature reads its own column only
    (crosses are hashed later, over assembled ids), so encoding the user
    columns alone gives the ids a whole row would. The user and context
    parts are cached by their values; a request then encodes only its
    behaviour lists, a lookup of a few ids instead of a full encoding pass.
    """

    def __init__(self, config: ExperimentConfig, rows: RowEncoder):
        self.config, self.rows = config, rows
        self.encoders = rows.encoders
        sequences = config.sequence_features
        self.sides = {
            side: (
                on_side(config.sparse_features, side),
                on_side(config.dense_features, side),
                list(
                    dict.fromkeys(
                        f.source
                        for f in config.features
                        if f.side == side and f not in sequences
                    )
                ),
            )
            for side in (Side.USER, Side.CONTEXT)
        }
        self.sequence_columns = [f.source for f in sequences]
        self._lengths = [f.max_length or 1 for f in sequences]
        self._parts: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        # The id of each behaviour item by (sequence column, item): a request
        # looks up its ~20 recent clicks instead of encoding them afresh.
        self._item_ids: dict[tuple[str, Any], int] = {}

    def encode(self, user: Mapping[str, Any], context: Mapping[str, Any]) -> QueryRow:
        """The encoded row of raw user values (behaviour lists included) and
        raw context values; item-side columns are left at 0."""
        user_sparse, user_dense = self._part(Side.USER, user)
        context_sparse, context_dense = self._part(Side.CONTEXT, context)
        sparse = np.where(self.sides[Side.USER][0], user_sparse, context_sparse)
        dense = np.where(self.sides[Side.USER][1], user_dense, context_dense)
        lists = {**context, **user}
        return QueryRow(sparse, dense, self._sequences(lists))

    def _sequences(self, lists: Mapping[str, Any]) -> np.ndarray:
        """`(1, S, L)` ids of the behaviour lists, as `sequence_ids` gives them:
        the last L items of each, left-aligned, padded with 0."""
        # As `sequence_ids`: (1, 0, 1) where the config has no sequences.
        longest = max(self._lengths, default=1)
        out = np.zeros((1, len(self._lengths), longest), dtype=np.int32)
        for s, (column, length) in enumerate(
            zip(self.sequence_columns, self._lengths, strict=True)
        ):
            items = lists.get(column) or []
            if not isinstance(items, list):  # delimited text: the general path
                out[0, s] = self._encoded_list(column, items)
                continue
            # A null item is none, as in `sequence_ids`.
            items = [_hashable(i) for i in items if i is not None][-length:]
            # Read into a local dict first: another request's thread may clear
            # the memo between this one's writes and reads.
            ids = {item: self._item_ids.get((column, item)) for item in items}
            unknown = [item for item, id_ in ids.items() if id_ is None]
            if unknown:
                # Unseen items go through the general path, a list of at most
                # `length` of them, so each gets exactly the id it would there.
                encoded = self._encoded_list(column, unknown).tolist()
                if len(self._item_ids) + len(unknown) > CACHE_SIZE:
                    self._item_ids.clear()
                for item, id_ in zip(unknown, encoded, strict=False):
                    ids[item] = self._item_ids[(column, item)] = id_
            out[0, s, : len(items)] = [ids[item] for item in items]
        return out

    def _encoded_list(self, column: str, items: Any) -> np.ndarray:
        """`(L,)` ids of one behaviour value through `sequence_ids`."""
        values = {c: [] for c in self.sequence_columns}
        values[column] = items
        ids = self.encoders.sequence_ids(self.typed_row(values))
        return ids[0, self.sequence_columns.index(column)]

    def _part(
        self, side: Side, values: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(1, F)` ids and `(1, F_dense)` values of one side's columns."""
        columns = self.sides[side][2]
        key = (side, *(_hashable(values.get(c)) for c in columns))
        part = self._parts.get(key)
        if part is None:
            known = {c: values[c] for c in columns if values.get(c) is not None}
            encoded = self.rows.encode(self.typed_row(known))
            part = (encoded.sparse, encoded.dense)
            if len(self._parts) >= CACHE_SIZE:
                self._parts.clear()
            self._parts[key] = part
        return part

    def warm(self, users: pl.DataFrame) -> None:
        """Encode the user parts of many rows in one pass (at start)."""
        columns = self.sides[Side.USER][2]
        present = [c for c in columns if c in users.columns]
        rows = users.select(present).unique(maintain_order=True)
        rows = rows.head(max(CACHE_SIZE - len(self._parts), 0))
        encoded = self.rows.encode(rows)
        for i, row in enumerate(rows.iter_rows()):
            named = dict(zip(present, row, strict=True))
            key = (Side.USER, *(_hashable(named.get(c)) for c in columns))
            self._parts[key] = (encoded.sparse[i : i + 1], encoded.dense[i : i + 1])

    def typed_row(self, row: Mapping[str, Any], *, exact: bool = False) -> pl.DataFrame:
        """One row in the logs' column types; columns the logs lack are dropped.

        Args:
            row: raw values by column.
            exact: refuse values whose JSON kind is not the column's (3.5 or
                true for an integer, 7 for text) instead of converting them;
                for values a client sent.

        Raises:
            ValueError: a value does not fit its column's type; names both.
        """
        schema = self.rows.template.schema
        columns = []
        for name, value in row.items():
            if name not in schema:
                continue
            if exact and not _same_kind(value, schema[name]):
                raise ValueError(f"{name}: {value!r} is not a {schema[name]} value")
            try:
                series = pl.Series(name, [value]).cast(schema[name], strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError):
                raise ValueError(
                    f"{name}: {value!r} is not a {schema[name]} value"
                ) from None
            columns.append(series)
        # A frame needs a height even when no column is known (a cold user
        # with an empty context): one row of a column the template ignores.
        return pl.DataFrame(columns) if columns else pl.DataFrame({"_": [0]})
