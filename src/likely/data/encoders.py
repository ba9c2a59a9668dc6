"""Encoders: raw columns to id and float arrays, fitted once, saved with the model.

Ids of every categorical table share one layout:

    0 padding (sequence slots with no item; its embedding row stays zero)
    1 out of vocabulary (values too rare at fit time, or never seen)
    2 missing (a null in the log)
    3.. known values, in the order they were first fitted

`extend` appends new values after the existing ones, so an id never moves and
incremental training can grow an embedding table by appending rows. Hashed
fields use a stable 64-bit hash of the value (the same in every process and on
every machine, unlike Python's salted `hash`).

Every transform is vectorised: polars `replace_strict` (a hash join) for
vocabularies, numpy for hashes and bucket boundaries.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from likely.config import (
    DenseTransform,
    ExperimentConfig,
    FeatureKind,
    FeatureSpec,
)

logger = logging.getLogger(__name__)

PAD, OOV, MISSING, FIRST_ID = 0, 1, 2, 3
# Frames up to this many rows (a request's) take numpy paths where polars'
# fixed cost per plan would dominate; larger ones are encoded by polars.
FEW_ROWS = 64
# A vocabulary merges the counts of this many chunks into one as it fits.
PENDING_CHUNKS = 8
ENCODERS_VERSION = 1

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads nearby integers over all 64 bits."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def stable_hash(values: pl.Series) -> np.ndarray:
    """64-bit hash of each value, identical across processes and machines.

    Integers are mixed with splitmix64; text is FNV-1a over its UTF-8 bytes, then
    mixed. Nulls hash to 0 (callers map them to the missing id first).

    >>> int(stable_hash(pl.Series(["a"]))[0]) == int(stable_hash(pl.Series(["a"]))[0])
    True
    """
    # Each polars operation on a Series costs tens of microseconds whatever its
    # length; the casts and fills below run only where needed, so that one
    # request's row (serving) hashes in microseconds, not milliseconds.
    nulls = values.null_count()
    if values.dtype.is_integer():
        if nulls:
            values = values.fill_null(0)
        return _mix64(values.to_numpy().astype(np.int64).view(np.uint64))
    text = values if values.dtype == pl.String else values.cast(pl.String)
    if nulls:
        text = text.fill_null("")
    array = text.to_arrow()
    if hasattr(array, "combine_chunks"):
        array = array.combine_chunks()
    array = array.cast("large_string")
    _, offsets_buffer, data_buffer = array.buffers()
    n = len(array)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        array.offset : array.offset + n + 1
    ]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    longest = int(lengths.max()) if n else 0
    with np.errstate(over="ignore"):
        for position in range(longest):
            rows = np.flatnonzero(lengths > position)
            byte = data[starts[rows] + position].astype(np.uint64)
            hashes[rows] = (hashes[rows] ^ byte) * _FNV_PRIME
    return _mix64(hashes)


def _as_keys(
    column: pl.Expr, dtype: pl.DataType, kind: Literal["int", "str"]
) -> pl.Expr:
    """Values in the key type of a vocabulary; text that is no integer gives null."""
    if kind == "int":
        if dtype.is_integer():
            return column.cast(pl.Int64)
        return column.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    return column.cast(pl.String)


def _apply(encoder: IdEncoder | DenseScaler, values: pl.Series) -> np.ndarray:
    """Run an encoder's expression on one series."""
    frame = values.rename("v").to_frame().lazy()
    selected = frame.select(encoder.expr(pl.col("v"), values.dtype)).collect()
    return selected.to_series().to_numpy()


def _all_integers(text: pl.Series) -> bool:
    """Every value parses as an integer and prints back the same ("007" does not)."""
    stripped = text.str.strip_chars()
    parsed = stripped.cast(pl.Int64, strict=False)
    return parsed.null_count() == 0 and bool((parsed.cast(pl.String) == stripped).all())


def _key_kind(values: pl.Series) -> Literal["int", "str"]:
    """Integer keys where every present value is an integer (faster to join)."""
    if values.dtype.is_integer():
        return "int"
    if values.dtype != pl.String:
        return "str"
    present = values.drop_nulls()
    # Most text columns (hashed hex ids, names) fail on the first values; check a
    # sample before paying for a parse of the whole column.
    if not len(present) or not _all_integers(present.head(1000)):
        return "str"
    return "int" if _all_integers(present) else "str"


@dataclass
class Vocabulary:
    """Value -> id for one embedding group, by count at fit time.

    Values seen fewer than `min_count` times map to the OOV id; the counts kept
    are those of the fitted batches, which `likely info` and the popularity
    fall-back of recall read.
    """

    min_count: int
    kind: Literal["int", "str"] = "int"
    keys: pl.Series | None = None
    counts: np.ndarray | None = None

    @property
    def size(self) -> int:
        """Rows the embedding table needs, the reserved ids included."""
        return FIRST_ID + (0 if self.keys is None else len(self.keys))

    _pending: list[pl.DataFrame] = field(default_factory=list, repr=False)
    _table: tuple[int, np.ndarray] | None = field(default=None, repr=False)
    # Built expressions by (column, dtype): a cast to an Enum of 100k keys
    # costs ~15 ms to build, more than running it on a piece of 250k rows.
    _exprs: dict[tuple[str, pl.DataType], pl.Expr] = field(
        default_factory=dict, repr=False
    )
    # A Categorical column (as `FeatureEncoders.categorize` makes for prepare)
    # is counted by code, and its text read once per category at settle; it
    # is encoded by gathering each category's id, found once per category.
    # Each pairs an empty Series of the Categorical with an array by code: a
    # category set lives only while some Series uses it.
    _coded: tuple[pl.Series, np.ndarray] | None = field(default=None, repr=False)
    _coded_ids: tuple[pl.Series, np.ndarray] | None = field(default=None, repr=False)

    def fit(self, values: pl.Series) -> Vocabulary:
        self.keys, self.counts, self._pending, self._exprs = None, None, [], {}
        self._coded = None
        return self.observe(values).settle()

    def extend(self, values: pl.Series) -> Vocabulary:
        """Append values not yet known; existing ids keep their place."""
        return self.observe(values).settle()

    def observe(self, values: pl.Series) -> Vocabulary:
        """Count a chunk of values; `settle` turns the counts into ids."""
        if isinstance(values.dtype, pl.Categorical):
            self._count_codes(values)
            return self
        return self._count(values)

    def _count_codes(self, values: pl.Series) -> None:
        if self._coded is not None and self._coded[0].dtype != values.dtype:
            self._flush_codes()
        anchor, total = self._coded or (values.head(0), np.zeros(0, np.int64))
        codes = values.to_physical().drop_nulls().to_numpy()
        counts = np.bincount(codes, minlength=len(total)).astype(np.int64)
        counts[: len(total)] += total
        self._coded = (anchor, counts)

    def _flush_codes(self) -> None:
        """Counts by code -> counts by key, as if the text had been observed."""
        if self._coded is None:
            return
        anchor, total = self._coded
        self._coded = None
        present = np.flatnonzero(total)
        if len(present):
            self._count(anchor.dtype.categories.to_series()[present], total[present])

    def _count(self, values: pl.Series, counts: np.ndarray | None = None) -> Vocabulary:
        """Count `values`, or add `counts` (one per distinct value) where given."""
        if self.keys is None:
            kind = _key_kind(values)
            if not self._pending:
                self.kind = kind
            elif kind == "str" and self.kind == "int":
                # A later chunk holds text: count every chunk's keys as text.
                self.kind = "str"
                self._pending = [
                    c.with_columns(pl.col("key").cast(pl.String)) for c in self._pending
                ]
        keys = (
            values.rename("key")
            .to_frame()
            .lazy()
            .select(_as_keys(pl.col("key"), values.dtype, self.kind).alias("key"))
        )
        if counts is None:
            counted = keys.drop_nulls().group_by("key").len()
        else:
            # Distinct texts may still be one key (" 7" and "7" as integers).
            counted = (
                keys.with_columns(len=pl.lit(pl.Series(counts)))
                .drop_nulls("key")
                .group_by("key")
                .agg(pl.col("len").sum().cast(pl.get_index_type()))
            )
        self._pending.append(counted.collect())
        if len(self._pending) >= PENDING_CHUNKS:
            # Each chunk's counts repeat most keys of the others: merged, the
            # counts of a long window take about one copy of its distinct keys.
            self._pending = [self._merged()]
        return self

    def _merged(self) -> pl.DataFrame:
        """`key`, `len`: the pending chunks' counts summed per key."""
        if len(self._pending) == 1:
            return self._pending[0]
        return pl.concat(self._pending).group_by("key").agg(pl.col("len").sum())

    def settle(self) -> Vocabulary:
        """Append every value counted since the last settle at least min_count times."""
        self._flush_codes()
        if not self._pending:
            return self
        counted = (
            self._merged()
            .filter(pl.col("len") >= self.min_count)
            .sort(["len", "key"], descending=[True, False])
        )
        self._pending, self._table, self._exprs = [], None, {}
        self._coded_ids = None
        if self.keys is None:
            self.keys = counted["key"]
            self.counts = counted["len"].to_numpy().astype(np.int64)
            return self
        known = pl.DataFrame({"key": self.keys})
        new = counted.join(known, on="key", how="anti", maintain_order="left")
        seen = counted.join(known.with_row_index("id"), on="key", how="inner")
        counts = self.counts.copy()
        np.add.at(counts, seen["id"].to_numpy(), seen["len"].to_numpy())
        self.keys = pl.concat([self.keys, new["key"]])
        self.counts = np.concatenate([counts, new["len"].to_numpy().astype(np.int64)])
        return self

    def transform(self, values: pl.Series) -> np.ndarray:
        """Ids `(N,)` int32: known values, OOV for unknown, MISSING for null."""
        ids = self.lookup(values)
        return ids if ids is not None else _apply(self, values)

    def lookup(self, values: pl.Series) -> np.ndarray | None:
        """Ids by direct indexing, for integer keys in a compact range, else None.

        A table indexed by `key - min_key` is several times faster than a hash
        join; it is used when it costs at most ~8 entries per known key.
        """
        if isinstance(values.dtype, pl.Categorical) and self.keys is not None:
            return self.lookup_codes(values.to_physical(), values.head(0))
        if self.kind != "int" or not values.dtype.is_integer() or self.keys is None:
            return None
        if self._table is None:
            keys = self.keys.to_numpy()
            if not len(keys):
                return None
            low, span = int(keys.min()), int(keys.max()) - int(keys.min()) + 1
            if span > 8 * len(keys) + (1 << 20):
                self._table = (0, np.zeros(0, np.int32))
            else:
                table = np.full(span, OOV, dtype=np.int32)
                table[keys - low] = np.arange(FIRST_ID, self.size, dtype=np.int32)
                self._table = (low, table)
        low, table = self._table
        if not len(table):
            return None
        raw = values.fill_null(low).to_numpy().astype(np.int64, copy=False)
        offset = raw - low
        outside = (offset < 0) | (offset >= len(table))
        ids = table[np.where(outside, 0, offset)]
        ids[outside] = OOV
        if values.null_count():
            ids[values.is_null().to_numpy()] = MISSING
        return ids

    def lookup_codes(self, codes: pl.Series, anchor: pl.Series) -> np.ndarray:
        """Ids of values given as the codes (physical values) of a Categorical,
        whose dtype `anchor` has: each category's id is found once, then
        gathered by code."""
        highest = -1 if codes.null_count() == len(codes) else int(codes.max())
        known = self._coded_ids
        if known is None or known[0].dtype != anchor.dtype or highest >= len(known[1]):
            # Categories only grow: ids of those already known stay right.
            names = anchor.dtype.categories.to_series()
            known = (anchor.head(0), self.transform(names))
            self._coded_ids = known
        ids = known[1][codes.fill_null(0).to_numpy()]
        if codes.null_count():
            ids[codes.is_null().to_numpy()] = MISSING
        return ids

    def expr(self, column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        """The transform as a polars expression, so columns encode in parallel."""
        if self.keys is None:
            raise RuntimeError("vocabulary used before fit")
        key = (str(column), dtype)
        if key not in self._exprs:
            self._exprs[key] = self._expr(column, dtype)
        return self._exprs[key]

    def _expr(self, column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        if self.kind == "str":
            # A cast to an Enum of the keys gives each key's position; about
            # twice as fast as replace_strict on text. Unknown text gives null.
            position = column.cast(pl.String).cast(pl.Enum(self.keys), strict=False)
            ids = (position.to_physical().cast(pl.Int32) + FIRST_ID).fill_null(OOV)
        else:
            ids = _as_keys(column, dtype, self.kind).replace_strict(
                self.keys,
                pl.int_range(FIRST_ID, self.size, dtype=pl.Int32, eager=True),
                default=OOV,
                return_dtype=pl.Int32,
            )
        return pl.when(column.is_null()).then(pl.lit(MISSING, pl.Int32)).otherwise(ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "vocabulary",
            "min_count": self.min_count,
            "kind": self.kind,
            "keys": [] if self.keys is None else self.keys.to_list(),
            "counts": [] if self.counts is None else self.counts.tolist(),
        }

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> Vocabulary:
        dtype = pl.Int64 if blob["kind"] == "int" else pl.String
        return cls(
            min_count=int(blob["min_count"]),
            kind=blob["kind"],
            keys=pl.Series("key", blob["keys"], dtype=dtype),
            counts=np.asarray(blob["counts"], dtype=np.int64),
        )


@dataclass
class HashBuckets:
    """Value -> FIRST_ID + stable_hash(value) mod buckets, for huge fields."""

    buckets: int

    @property
    def size(self) -> int:
        return FIRST_ID + self.buckets

    def fit(self, values: pl.Series) -> HashBuckets:
        return self

    def extend(self, values: pl.Series) -> HashBuckets:
        return self

    def observe(self, values: pl.Series) -> HashBuckets:
        return self

    def settle(self) -> HashBuckets:
        return self

    def transform(self, values: pl.Series) -> np.ndarray:
        nulls = values.null_count()
        if nulls == len(values):  # e.g. the item half of a query row
            return np.full(len(values), MISSING, dtype=np.int32)
        ids = FIRST_ID + (stable_hash(values) % np.uint64(self.buckets)).astype(
            np.int64
        )
        if nulls:
            ids[values.is_null().to_numpy()] = MISSING
        return ids.astype(np.int32)

    def to_json(self) -> dict[str, Any]:
        return {"type": "hash", "buckets": self.buckets}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> HashBuckets:
        return cls(int(blob["buckets"]))


@dataclass
class DenseScaler:
    """A dense column to float32: log1p, standardize, or as is; nulls become 0.

    `log1p` is signed (sign(x) * log1p(|x|)) so counts of -1, as in Criteo, stay
    finite. `standardize` subtracts the fitted mean and divides by the fitted
    standard deviation, so a null (set to 0 after scaling) means "average".
    """

    transform_name: DenseTransform
    mean: float = 0.0
    std: float = 1.0

    def _scaled(self, column: pl.Expr) -> pl.Expr:
        x = column.cast(pl.Float64)
        if self.transform_name == DenseTransform.LOG1P:
            x = x.sign() * x.abs().log1p()
        return x

    # Running count, sum and sum of squares of the scaled finite values.
    _moments: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], repr=False)

    def fit(self, values: pl.Series) -> DenseScaler:
        self._moments = [0.0, 0.0, 0.0]
        return self.observe(values).settle()

    def observe(self, values: pl.Series) -> DenseScaler:
        if self.transform_name != DenseTransform.STANDARDIZE:
            return self
        x = values.rename("x").to_frame().lazy().select(self._scaled(pl.col("x")))
        finite = pl.col("x").filter(pl.col("x").is_finite())
        n, total, squares = (
            x.select(
                finite.len().alias("n"),
                finite.sum().alias("total"),
                (finite * finite).sum().alias("squares"),
            )
            .collect()
            .row(0)
        )
        self._moments = [
            a + (b or 0.0)
            for a, b in zip(self._moments, (n, total, squares), strict=True)
        ]
        return self

    def settle(self) -> DenseScaler:
        n, total, squares = self._moments
        if self.transform_name == DenseTransform.STANDARDIZE and n:
            self.mean = total / n
            variance = max(squares / n - self.mean**2, 0.0)
            self.std = math.sqrt(variance) if variance > 0 else 1.0
        return self

    def transform(self, values: pl.Series) -> np.ndarray:
        return _apply(self, values)

    def scale(self, values: pl.Series) -> np.ndarray:
        """`expr`'s values computed in numpy: for a few rows (one request's),
        where building and running a polars plan costs more than the math."""
        x = values.cast(pl.Float64).to_numpy()  # a null becomes NaN
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if self.transform_name == DenseTransform.LOG1P:
                x = np.sign(x) * np.log1p(np.abs(x))
            if self.transform_name == DenseTransform.STANDARDIZE:
                x = (x - self.mean) / self.std
        return np.where(np.isfinite(x), x, 0.0).astype(np.float32)

    def expr(self, column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        x = self._scaled(column)
        if self.transform_name == DenseTransform.STANDARDIZE:
            x = (x - self.mean) / self.std
        finite = x.is_finite().fill_null(False)
        return pl.when(finite).then(x).otherwise(0.0).cast(pl.Float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "dense",
            "transform": self.transform_name.value,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> DenseScaler:
        return cls(DenseTransform(blob["transform"]), blob["mean"], blob["std"])


@dataclass
class QuantileBuckets:
    """A dense column to a bucket id, by quantile boundaries fitted on the window."""

    num_buckets: int
    boundaries: np.ndarray | None = None

    @property
    def size(self) -> int:
        edges = 0 if self.boundaries is None else len(self.boundaries)
        return FIRST_ID + edges + 1

    # Boundaries come from a seeded sample of at most this many values per chunk,
    # so fitting over many files keeps memory flat.
    sample_per_chunk: int = 200_000
    _samples: list[np.ndarray] = field(default_factory=list, repr=False)

    def fit(self, values: pl.Series) -> QuantileBuckets:
        self.boundaries, self._samples = None, []
        return self.observe(values).settle()

    def extend(self, values: pl.Series) -> QuantileBuckets:
        # Boundaries stay fixed: moving them would change what every id means.
        return self

    def observe(self, values: pl.Series) -> QuantileBuckets:
        if self.boundaries is not None:
            return self
        x = values.cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
        if x.size > self.sample_per_chunk:
            rng = np.random.default_rng(len(self._samples))
            x = rng.choice(x, self.sample_per_chunk, replace=False)
        self._samples.append(x)
        return self

    def settle(self) -> QuantileBuckets:
        if self.boundaries is not None:
            return self
        x = np.concatenate(self._samples) if self._samples else np.zeros(0)
        self._samples = []
        inner = np.linspace(0, 1, self.num_buckets + 1)[1:-1]
        self.boundaries = np.unique(np.quantile(x, inner)) if x.size else np.zeros(0)
        return self

    def transform(self, values: pl.Series) -> np.ndarray:
        if self.boundaries is None:
            raise RuntimeError("quantile buckets used before fit")
        x = values.cast(pl.Float64).to_numpy()
        ids = FIRST_ID + np.searchsorted(self.boundaries, x, side="right")
        ids[np.isnan(x)] = MISSING
        return ids.astype(np.int32)

    def expr(self, column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        return column.map_batches(
            lambda s: pl.Series(self.transform(s)), return_dtype=pl.Int32
        )

    def to_json(self) -> dict[str, Any]:
        edges = [] if self.boundaries is None else self.boundaries.tolist()
        return {
            "type": "quantile",
            "num_buckets": self.num_buckets,
            "boundaries": edges,
        }

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> QuantileBuckets:
        return cls(int(blob["num_buckets"]), np.asarray(blob["boundaries"], float))


IdEncoder = Vocabulary | HashBuckets | QuantileBuckets
_ID_ENCODERS: dict[str, Any] = {
    "vocabulary": Vocabulary,
    "hash": HashBuckets,
    "quantile": QuantileBuckets,
}


@dataclass
class EncodedColumns:
    """One split's arrays; every array has the same first dimension N."""

    sparse: np.ndarray  # (N, F) int32
    dense: np.ndarray  # (N, F_dense) float32
    sequence: np.ndarray  # (N, S, L) int32, padded with 0
    cross: np.ndarray  # (N, C) int32, hashed crossed ids for the wide part
    label: np.ndarray  # (N,) float32
    user: np.ndarray  # (N,) int64, stable user key for grouped metrics
    day: np.ndarray  # (N,) int32, days since 1970-01-01; -1 where undated
    probability: np.ndarray | None = None  # (N,) float32, true click probability

    def __len__(self) -> int:
        return len(self.label)


def _flatten_sequence(values: pl.Series, separator: str, max_length: int):
    """Sequence column -> (lengths (N,), flat values) keeping the last L items."""
    if values.dtype == pl.String:
        values = values.str.split(separator).list.eval(
            pl.element().filter(pl.element().str.len_bytes() > 0)
        )
    elif not isinstance(values.dtype, pl.List | pl.Array):
        raise TypeError(
            f"sequence column '{values.name}' must be a list or text with "
            f"'{separator}' between items, got {values.dtype}"
        )
    values = values.cast(pl.List(values.dtype.inner)).fill_null([])
    tail = values.list.tail(max_length)
    flat = tail.explode(empty_as_null=False)
    if flat.null_count():
        # A null inside a list is no item: dropped before the last L are kept,
        # so that the lengths count only items (a rare case, paid only here).
        tail = values.list.drop_nulls().list.tail(max_length)
        flat = tail.explode(empty_as_null=False)
    lengths = tail.list.len().to_numpy().astype(np.int64)
    return lengths, flat


class FeatureEncoders:
    """Every encoder of an experiment, fitted together and saved as one JSON.

    Example:
        >>> from likely.config import parse_config
        >>> config = parse_config({
        ...     "data": {"path": "x.csv", "format": "csv"},
        ...     "features": [{"name": "item", "kind": "sparse"}],
        ... })
        >>> frame = pl.DataFrame({"item": ["a", "b", "a"], "label": [1, 0, 0]})
        >>> encoders = FeatureEncoders(config).fit(frame)
        >>> encoders.transform(frame).sparse[:, 0].tolist()
        [3, 4, 3]
    """

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.tables: dict[str, IdEncoder] = {}
        self.scalers: dict[str, DenseScaler] = {}
        # Per table, an empty Series of its Categorical, which keeps the
        # category set alive between pieces; and the table of each column
        # that `categorize` cast (see there).
        self._categories: dict[str, pl.Series] = {}
        self._coded: dict[str, str] = {}
        for feature in config.categorical_features:
            if feature.group in self.tables:
                continue
            self.tables[feature.group] = self._new_id_encoder(feature)
        for feature in config.dense_features:
            self.scalers[feature.name] = DenseScaler(feature.transform)

    @staticmethod
    def _new_id_encoder(feature: FeatureSpec) -> IdEncoder:
        if feature.kind == FeatureKind.DENSE:
            return QuantileBuckets(feature.num_buckets)
        if feature.vocabulary.hash_buckets is not None:
            return HashBuckets(feature.vocabulary.hash_buckets)
        return Vocabulary(feature.vocabulary.min_count)

    def categorize(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with the text columns of vocabularies as Categorical, one
        category set per table (kept by these encoders).

        For prepare: a vocabulary counts a Categorical by code (a bincount), a
        piece spills its codes (`physical`) rather than its text, and encoding
        codes (`transform(coded=True)`) gathers each category's id, found once.
        Each distinct text is then hashed about once a piece, instead of once
        to count it, once to spill and once to encode it. Tables with a
        sequence member, hashed and bucketed tables, the user column and
        columns that two tables read keep their columns as they are.
        """
        readers: dict[str, set[str]] = {}
        for feature in self.config.categorical_features:
            readers.setdefault(feature.source, set()).add(feature.group)
        casts = []
        for group, encoder in self.tables.items():
            members = [f for f in self.config.categorical_features if f.group == group]
            if not isinstance(encoder, Vocabulary) or any(
                f.kind != FeatureKind.SPARSE for f in members
            ):
                continue
            sources = {
                f.source
                for f in members
                if frame.schema.get(f.source) == pl.String
                and len(readers[f.source]) == 1
                and f.source != self.config.data.user_column
            }
            if sources:
                if group not in self._categories:
                    dtype = pl.Categorical(pl.Categories.random())
                    self._categories[group] = pl.Series(group, [], dtype=dtype)
                dtype = self._categories[group].dtype
                casts += [pl.col(source).cast(dtype) for source in sorted(sources)]
                self._coded.update(dict.fromkeys(sources, group))
        return frame.with_columns(casts) if casts else frame

    def physical(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A categorized frame with codes (UInt32) in place of its Categoricals:
        what `transform(coded=True)` takes back."""
        coded = [c for c in frame.columns if c in self._coded]
        return frame.with_columns(pl.col(coded).to_physical()) if coded else frame

    def _group_values(self, frame: pl.DataFrame, group: str) -> pl.Series:
        """Every value of every column in a group (sequences flattened)."""
        parts = []
        for feature in self.config.categorical_features:
            if feature.group != group:
                continue
            column = frame[feature.source]
            if feature.kind == FeatureKind.SEQUENCE:
                _, column = _flatten_sequence(
                    column, feature.list_separator, feature.max_length or 1
                )
            parts.append(column)
        if len(parts) == 1:
            return parts[0]
        if len({p.dtype for p in parts}) > 1:
            parts = [p.cast(pl.String) for p in parts]
        return pl.concat([p.rename("value") for p in parts])

    def fit(self, frame: pl.DataFrame) -> FeatureEncoders:
        """Fit every encoder on a training frame (as returned by the readers)."""
        self.reset()
        return self.observe(frame).settle()

    def reset(self) -> FeatureEncoders:
        """Forget everything fitted, ready for `observe` over a new window."""
        self.__init__(self.config)
        return self

    def observe(
        self, frame: pl.DataFrame, *, vocabularies_only: bool = False
    ) -> FeatureEncoders:
        """Count one chunk of the training window; `settle` after the last one.

        Fitting chunk by chunk gives the same vocabularies and scalers as one
        fit on all rows (quantile boundaries come from a seeded sample), so a
        window need never be in memory at once. On fitted encoders, counting
        with `vocabularies_only` and settling is `extend` in chunks: new values
        get new ids after the old ones, and the dense transforms stay fixed.
        """
        for group, encoder in self.tables.items():
            encoder.observe(self._group_values(frame, group))
        if not vocabularies_only:
            for name, scaler in self.scalers.items():
                scaler.observe(frame[self._feature(name).source])
        return self

    def settle(self) -> FeatureEncoders:
        """Finish fitting from every chunk observed since `reset`."""
        for encoder in self.tables.values():
            encoder.settle()
        for scaler in self.scalers.values():
            scaler.settle()
        self._log_sizes("fitted")
        return self

    def extend(self, frame: pl.DataFrame) -> FeatureEncoders:
        """Add the new values of a later batch; known ids and scalers stay fixed."""
        before = self.vocab_sizes()
        self.observe(frame, vocabularies_only=True)
        for encoder in self.tables.values():
            encoder.settle()
        grown = {
            group: size - before[group]
            for group, size in self.vocab_sizes().items()
            if size != before[group]
        }
        logger.info("extended vocabularies, new ids per table: %s", grown or "none")
        return self

    def _feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.config.features if f.name == name)

    def _log_sizes(self, verb: str) -> None:
        sizes = ", ".join(f"{g} {n:,}" for g, n in self.vocab_sizes().items())
        logger.info("%s %d tables (ids per table): %s", verb, len(self.tables), sizes)

    def vocab_sizes(self) -> dict[str, int]:
        """Rows per embedding table, reserved ids included."""
        return {group: encoder.size for group, encoder in self.tables.items()}

    def transform(self, frame: pl.DataFrame, *, coded: bool = False) -> EncodedColumns:
        """Encode a frame with the fitted encoders; unknown values get OOV.

        `coded`: the columns `categorize` cast hold their codes, as `physical`
        gives them.
        """
        config, data = self.config, self.config.data
        n = frame.height
        schema = frame.schema
        sparse = self._sparse(frame, coded)
        if n <= FEW_ROWS:
            dense = np.zeros((n, len(config.dense_features)), dtype=np.float32)
            for j, f in enumerate(config.dense_features):
                dense[:, j] = self.scalers[f.name].scale(frame[f.source])
        else:
            dense = self._select(
                frame,
                [
                    self.scalers[f.name].expr(pl.col(f.source), schema[f.source])
                    for f in config.dense_features
                ],
                np.float32,
            )
        sequence = self.sequence_ids(frame)
        cross = self.cross_ids(sparse)
        label = frame[data.label].cast(pl.Float32).to_numpy()
        user = (
            stable_hash(frame[data.user_column]).view(np.int64)
            if data.user_column
            else np.zeros(n, dtype=np.int64)
        )
        if data.date_column:
            day = frame[data.date_column].cast(pl.Int32).to_numpy()
        else:
            day = np.full(n, -1, dtype=np.int32)
        probability = (
            frame[data.probability_column].cast(pl.Float32).to_numpy()
            if data.probability_column
            else None
        )
        return EncodedColumns(
            sparse,
            dense,
            sequence,
            cross,
            label,
            user,
            day.astype(np.int32),
            probability,
        )

    def _sparse(self, frame: pl.DataFrame, coded: bool = False) -> np.ndarray:
        """`(N, F)` ids: direct lookups where possible, the rest in one select."""
        features = self.config.sparse_features
        columns: list[np.ndarray | None] = []
        for feature in features:
            encoder = self.tables[feature.group]
            fast = None
            if coded and feature.source in self._coded:
                anchor = self._categories[self._coded[feature.source]]
                fast = encoder.lookup_codes(frame[feature.source], anchor)
            elif isinstance(encoder, Vocabulary):
                fast = encoder.lookup(frame[feature.source])
            elif isinstance(encoder, HashBuckets):
                # Hashing has no polars expression; it is numpy over the column.
                fast = encoder.transform(frame[feature.source])
            columns.append(fast)
        rest = [j for j, column in enumerate(columns) if column is None]
        if not columns:
            return np.zeros((frame.height, 0), dtype=np.int32)
        if not rest:
            return np.stack(columns, axis=1)
        schema = frame.schema
        exprs = [
            pl.lit(pl.Series(columns[j])).alias(f"c{j}")
            if columns[j] is not None
            else self.tables[features[j].group]
            .expr(pl.col(features[j].source), schema[features[j].source])
            .alias(f"c{j}")
            for j in range(len(features))
        ]
        # One select and one row-major copy: a column-by-column stack into
        # (N, F) costs more than the lookups themselves.
        selected = frame.lazy().select(exprs).collect()
        return selected.to_numpy(order="c").astype(np.int32, copy=False)

    @staticmethod
    def _select(frame: pl.DataFrame, exprs: list[pl.Expr], dtype) -> np.ndarray:
        """`(N, len(exprs))` array of the expressions, evaluated in parallel."""
        if not exprs:
            return np.zeros((frame.height, 0), dtype=dtype)
        named = [e.alias(f"c{j}") for j, e in enumerate(exprs)]
        # Lazy, not DataFrame.select: polars' eager select re-evaluates the
        # vocabulary literals per call and was 10x slower here.
        selected = frame.lazy().select(named).collect()
        return selected.to_numpy(order="c").astype(dtype, copy=False)

    def sequence_ids(self, frame: pl.DataFrame) -> np.ndarray:
        """`(N, S, L)` ids of the sequence columns, the last L items of each,
        left-aligned and padded with 0."""
        features = self.config.sequence_features
        longest = max((f.max_length or 1 for f in features), default=1)
        out = np.zeros((frame.height, len(features), longest), dtype=np.int32)
        for s, feature in enumerate(features):
            lengths, flat = _flatten_sequence(
                frame[feature.source], feature.list_separator, feature.max_length or 1
            )
            ids = self.tables[feature.group].transform(flat)
            # Item k of row r goes to flat position r*S*L + s*L + (k - start_r):
            # one repeat of a per-row shift and one 1-D scatter.
            starts = np.cumsum(lengths) - lengths
            width = len(features) * longest
            shift = np.arange(frame.height) * width + s * longest - starts
            target = np.arange(len(ids)) + np.repeat(shift, lengths)
            out.reshape(-1)[target] = ids
        return out

    def cross_ids(self, sparse: np.ndarray) -> np.ndarray:
        """Hash of the member fields' ids, so a cross needs no vocabulary of its own."""
        position = {f.name: j for j, f in enumerate(self.config.sparse_features)}
        out = np.zeros((len(sparse), len(self.config.crosses)), dtype=np.int32)
        for c, cross in enumerate(self.config.crosses):
            mixed = np.full(len(sparse), _FNV_OFFSET, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for name in cross.fields:
                    ids = sparse[:, position[name]].astype(np.uint64)
                    mixed = _mix64(mixed ^ ids) * _FNV_PRIME
            out[:, c] = FIRST_ID + (_mix64(mixed) % np.uint64(cross.hash_buckets))
        return out

    def cross_sizes(self) -> list[int]:
        return [FIRST_ID + cross.hash_buckets for cross in self.config.crosses]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ENCODERS_VERSION,
            "config_fingerprint": self.config.fingerprint(),
            "tables": {group: enc.to_json() for group, enc in self.tables.items()},
            "scalers": {name: s.to_json() for name, s in self.scalers.items()},
        }

    def save(self, path: Path) -> None:
        """Write as JSON, via a temporary file renamed into place."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, config: ExperimentConfig) -> FeatureEncoders:
        return cls.from_json(json.loads(Path(path).read_text()), config, origin=path)

    @classmethod
    def from_json(
        cls, blob: dict[str, Any], config: ExperimentConfig, origin: object = "encoders"
    ) -> FeatureEncoders:
        if blob.get("version") != ENCODERS_VERSION:
            raise ValueError(
                f"{origin}: encoders version {blob.get('version')!r}, "
                f"expected {ENCODERS_VERSION}"
            )
        encoders = cls(config)
        if set(blob["tables"]) != set(encoders.tables):
            raise ValueError(
                f"{origin}: tables {sorted(blob['tables'])} do not match the config's "
                f"{sorted(encoders.tables)}"
            )
        for group, table in blob["tables"].items():
            encoders.tables[group] = _ID_ENCODERS[table["type"]].from_json(table)
        for name, scaler in blob["scalers"].items():
            encoders.scalers[name] = DenseScaler.from_json(scaler)
        return encoders


def sparse_table_names(config: ExperimentConfig) -> list[str]:
    """Table (group) of each sparse field, in column order of `sparse`."""
    return [f.group for f in config.sparse_features]
