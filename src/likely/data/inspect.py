"""`likely init`: look at a log file and write a starting experiment config.

Every guess is a rule a user can read in the YAML comment beside it: the
label, day and user columns are found by name and by their values; integer and
text columns become sparse ids (hashed where they have very many values);
floats become dense features with a transform picked from their distribution;
list columns become sequences. The written config loads and prepares as it is;
the comments say what to revisit.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from likely.config import LogFormat
from likely.data.readers import (
    CRITEO_COLUMNS,
    avazu_day,
    list_files,
    with_partitions,
)

SAMPLE_ROWS = 200_000
SMALL_FILE_EPOCHS = 10  # for logs of fewer than SAMPLE_ROWS rows, with a holdout
LABEL_NAMES = ("label", "click", "clicked", "is_click", "target", "y")
DATE_NAMES = ("day", "date", "dt", "ds", "event_date", "partition_date")
USER_NAMES = ("user_id", "user", "uid", "userid", "member_id", "customer_id")
ITEM_HINTS = (
    "item",
    "product",
    "goods",
    "ad",
    "brand",
    "category",
    "seller",
    "price",
    "shop",
    "sku",
    "offer",
    "moq",
    "min_order",
)
USER_HINTS = (
    "user",
    "member",
    "buyer",
    "customer",
    "age",
    "gender",
    "region",
    "membership",
    "purchasing",
    "is_seller",
    "device",
)
HASH_ABOVE = 1_000_000  # distinct values beyond which a field is hashed
SPARSE_INT_MAX_DISTINCT = 50_000_000
_LIBFM_LINE = re.compile(r"^\S+( +\d+:\S+)+\s*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\- ]*$")


@dataclass
class Guess:
    """One line of the config and the reason for it."""

    yaml: str
    why: str


@dataclass
class Inspection:
    """What `init` found: the format, the data section and the features."""

    path: Path
    format: LogFormat
    data: dict[str, object] = field(default_factory=dict)
    data_notes: list[str] = field(default_factory=list)
    features: list[Guess] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows_sampled: int = 0
    train: dict[str, object] = field(default_factory=dict)
    train_notes: list[str] = field(default_factory=list)
    test_path: Path | None = None


def _sniff_format(path: Path) -> tuple[LogFormat, bool, str | None]:
    """Format, header presence and separator from the name and the first lines."""
    files = list_files(path, LogFormat.PARQUET if path.is_dir() else LogFormat.CSV)
    first = files[0]
    if first.suffix == ".parquet":
        return LogFormat.PARQUET, True, None
    with first.open("rb") as handle:
        head = handle.read(1 << 16).decode("utf-8", errors="replace")
    lines = [line.rstrip("\r") for line in head.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{first} is empty; nothing to inspect")
    if _LIBFM_LINE.match(lines[0]):
        return LogFormat.LIBFM, False, None
    separator = "\t" if lines[0].count("\t") > lines[0].count(",") else ","
    fields = lines[0].split(separator)
    header = all(_IDENTIFIER.match(f.strip('"')) for f in fields if f) and not all(
        _is_number(f) for f in fields
    )
    lowered = [f.lower() for f in fields]
    if header and {"click", "hour", "id"} <= set(lowered):
        return LogFormat.AVAZU, True, None
    if not header and len(fields) == len(CRITEO_COLUMNS) and separator == "\t":
        return LogFormat.CRITEO, False, None
    if header and lowered == [c.lower() for c in CRITEO_COLUMNS]:
        return LogFormat.CRITEO, True, separator
    if separator == "\t":
        return LogFormat.TSV, header, None
    return LogFormat.CSV, header, None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sample(path: Path, log_format: LogFormat, header: bool, sep: str | None):
    files = list_files(path, log_format)
    if log_format == LogFormat.PARQUET:
        frames, rows = [], 0
        for file in files:
            frame = pl.read_parquet(file, n_rows=SAMPLE_ROWS - rows)
            frames.append(with_partitions(frame, file, path if path.is_dir() else None))
            rows += frame.height
            if rows >= SAMPLE_ROWS:
                break
        return pl.concat(frames, how="vertical_relaxed")
    if log_format == LogFormat.LIBFM:
        from likely.config import DataConfig
        from likely.data.readers import LINE, parse_libfm

        frame, _ = parse_libfm(files[0], DataConfig(path=files[0], format=log_format))
        return frame.drop(LINE).head(SAMPLE_ROWS)
    separator = sep or (
        "\t" if log_format in (LogFormat.TSV, LogFormat.CRITEO) else ","
    )
    frame = pl.read_csv(
        files[0],
        separator=separator,
        has_header=header,
        new_columns=CRITEO_COLUMNS if log_format == LogFormat.CRITEO else None,
        n_rows=SAMPLE_ROWS,
        infer_schema_length=10_000,
        truncate_ragged_lines=True,
        quote_char=None,
    )
    if log_format == LogFormat.AVAZU:
        frame = avazu_day(frame).drop("hour")
    return frame


def _binary(series: pl.Series) -> bool:
    values = series.drop_nulls()
    if not len(values):
        return False
    try:
        numbers = values.cast(pl.Float64, strict=True)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
        return False
    return bool(numbers.is_in([0.0, 1.0]).all()) and numbers.n_unique() == 2


def _find_label(frame: pl.DataFrame) -> tuple[str, str]:
    by_name = {c.lower(): c for c in frame.columns}
    for name in LABEL_NAMES:
        column = by_name.get(name)
        if column is not None and _binary(frame[column]):
            return column, f"named '{column}' and holds only 0 and 1"
    for column in frame.columns:
        if _binary(frame[column]):
            return column, "the first column holding only 0 and 1"
    raise ValueError(
        f"no label column found: no column of only 0/1 among {frame.columns[:20]}; "
        "write the config by hand"
    )


def _date_like(series: pl.Series) -> bool:
    if series.dtype in (pl.Date,) or isinstance(series.dtype, pl.Datetime):
        return True
    if series.dtype != pl.String:
        return False
    parsed = series.drop_nulls().head(1000).str.to_date("%Y-%m-%d", strict=False)
    return parsed.len() > 0 and parsed.null_count() == 0


def _days(series: pl.Series) -> int:
    if series.dtype == pl.String:
        series = series.str.to_date("%Y-%m-%d", strict=False)
    elif isinstance(series.dtype, pl.Datetime):
        series = series.dt.date()
    return series.drop_nulls().n_unique()


def _find_date(frame: pl.DataFrame) -> tuple[str | None, str]:
    for column in frame.columns:
        if column.lower() in DATE_NAMES and _date_like(frame[column]):
            return column, f"named '{column}' and holds dates"
    for column in frame.columns:
        if _date_like(frame[column]):
            return column, f"'{column}' holds dates"
    return None, "no date column: the whole file trains, with a random holdout"


def _find_user(frame: pl.DataFrame, taken: set[str]) -> tuple[str | None, str]:
    by_name = {c.lower(): c for c in frame.columns if c not in taken}
    for name in USER_NAMES:
        if name in by_name:
            return by_name[name], f"named '{by_name[name]}'"
    for lower, column in by_name.items():
        if "user" in lower:
            return column, "its name contains 'user'"
    return None, "no user column found: GAUC will not be available"


def _side(name: str) -> str:
    lower = name.lower()
    if any(hint in lower for hint in USER_HINTS):
        return "user"
    if any(hint in lower for hint in ITEM_HINTS):
        return "item"
    return "context"


def _dense_transform(series: pl.Series) -> tuple[str, str]:
    values = series.cast(pl.Float64).drop_nulls().drop_nans()
    if not len(values):
        return "standardize", "no values in the sample; standardize is harmless"
    low, median, high = values.min(), values.median(), values.quantile(0.99)
    skew = float(values.skew() or 0.0)
    if low >= -1 and skew > 2:
        return "log1p", f"skewed (skewness {skew:.1f}, min {low:g}): log1p"
    if values.n_unique() > 1000 and abs(skew) > 1:
        return "quantile", f"long-tailed ({values.n_unique()} values): buckets"
    return "standardize", (
        f"roughly symmetric (median {median:g}, p99 {high:g}): standardize"
    )


def _sequence(frame: pl.DataFrame, column: str, sparse: list[str]):
    """Length and shared table of a list column: the item column it draws from."""
    lengths = frame[column].list.len().drop_nulls()
    max_length = int(min(max(lengths.quantile(0.95) or 1, 1), 100))
    items = frame[column].explode().drop_nulls()
    group, why = None, f"list column; max_length {max_length} covers 95% of rows"
    best = 0.0
    item_side = [c for c in sparse if _side(c) == "item"]
    for other in item_side or sparse:
        if items.dtype != frame[other].dtype or not len(items):
            continue
        overlap = items.is_in(frame[other].unique().implode()).mean()
        if overlap is not None and overlap > max(best, 0.5):
            group, best = other, overlap
    if group:
        why += f"; {best:.0%} of its items are '{group}' values, so they share a table"
    return max_length, group, why


def inspect_logs(path: Path) -> Inspection:
    """Sample a log file or folder and guess a config for it."""
    log_format, header, separator = _sniff_format(path)
    frame = _sample(path, log_format, header, separator)
    result = Inspection(path=path, format=log_format, rows_sampled=frame.height)
    result.data["format"] = log_format.value
    if log_format in (LogFormat.CSV, LogFormat.TSV):
        result.data["has_header"] = header
    if separator and log_format == LogFormat.CRITEO:
        result.data["separator"] = separator
        result.data["has_header"] = header

    label, why = _find_label(frame)
    result.data["label"] = label
    result.data_notes.append(f"label: {why}")
    date, why = _find_date(frame)
    whole_file = frame.height < SAMPLE_ROWS
    if date and whole_file and _days(frame[date]) < 2:
        # A day window needs earlier days to train on; with one day in all the
        # logs, a random holdout is the only split that can train.
        why = f"'{date}' holds dates, but only one day: trains on a random holdout"
        date = None
    result.data_notes.append(f"date_column: {why}")
    if date:
        result.data["date_column"] = date
        result.data["window_days"] = 7
    else:
        result.data["holdout_fraction"] = 0.1
        result.test_path = _sibling_test_file(path, header, separator)
        if result.test_path is not None:
            result.data_notes.append(
                f"test_path: '{result.test_path.name}' lies beside it with the "
                "same columns: the test set"
            )
        if whole_file:
            # One pass over a small file teaches an embedding row little; the
            # holdout can pick the epoch instead.
            result.train["epochs"] = SMALL_FILE_EPOCHS
            result.train_notes.append(
                f"{frame.height:,} rows in all, too few for one pass: the holdout "
                f"picks the best of up to {SMALL_FILE_EPOCHS} epochs (training "
                "stops after 2 without a gain in AUC)"
            )
    user, why = _find_user(frame, {label, date or ""})
    result.data_notes.append(f"user_column: {why}")
    if user:
        result.data["user_column"] = user
    if "probability" in frame.columns and frame["probability"].dtype.is_float():
        result.data["probability_column"] = "probability"
        result.data_notes.append(
            "probability_column: a float column named 'probability' (true CTR)"
        )

    taken = {label, date, result.data.get("probability_column")}
    sparse: list[str] = []
    lists: list[str] = []
    for column in frame.columns:
        if column in taken:
            continue
        series = frame[column]
        if isinstance(series.dtype, pl.List):
            lists.append(column)
            continue
        if log_format == LogFormat.CRITEO and column.startswith("I"):
            result.features.append(
                Guess(
                    f"{{name: {column}, kind: dense, side: context, transform: log1p}}",
                    "a Criteo count: heavy-tailed, some -1; signed log1p",
                )
            )
            continue
        guess = _feature(column, series, frame.height, column == user)
        if guess is None:
            why = (
                "the same value on every sampled row"
                if series.n_unique() <= 1
                else "a different value on every row (an impression id?)"
            )
            result.skipped.append(f"{column}: {why}")
            continue
        if "kind: sparse" in guess.yaml:
            sparse.append(column)
        result.features.append(guess)
    for column in lists:
        max_length, group, why = _sequence(frame, column, sparse)
        text = (
            f"{{name: {_name(column)}, kind: sequence, side: user, "
            f"max_length: {max_length}"
        )
        if group:
            text += f", embedding_group: {_name(group)}"
            _share_group(result, group)
        result.features.append(Guess(text + "}", why))
    return result


def _share_group(result: Inspection, column: str) -> None:
    """Put an item column into the group its sequence shares."""
    name = _name(column)
    for guess in result.features:
        if guess.yaml.startswith(f"{{name: {name}, kind: sparse"):
            if "embedding_group" not in guess.yaml:
                guess.yaml = guess.yaml[:-1] + f", embedding_group: {name}}}"
            return


def _name(column: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", column)
    return clean if re.match(r"^[A-Za-z_]", clean) else f"f_{clean}"


def _feature(column: str, series: pl.Series, rows: int, is_user: bool) -> Guess | None:
    name, side = _name(column), "user" if is_user else _side(column)
    head = f"{{name: {name}, "
    if name != column:
        head += f"column: '{column}', "
    distinct = series.n_unique()
    if distinct <= 1:
        return None
    if series.dtype.is_float():
        integral = bool((series.drop_nulls() == series.drop_nulls().round()).all())
        if not (integral and distinct <= 100):
            transform, why = _dense_transform(series)
            return Guess(
                head + f"kind: dense, side: {side}, transform: {transform}}}",
                f"float; {why}",
            )
    row_id = column.lower() in ("id", "impression_id", "request_id", "event_id")
    if distinct == rows and (rows > 1000 or row_id) and not is_user:
        return None
    share = distinct / max(rows, 1)
    estimate = distinct if share < 0.5 else int(distinct / max(share, 1e-9))
    if estimate > HASH_ABOVE:
        return Guess(
            head
            + f"kind: sparse, side: {side}, vocabulary: {{hash_buckets: 1000003}}}}",
            f"about {distinct:,} distinct in {rows:,} sampled rows: too many to count, "
            "hashed",
        )
    min_count = 1 if rows < 1_000_000 or distinct < 10_000 else 5
    why = f"{series.dtype} with {distinct:,} distinct values: ids"
    vocabulary = "" if min_count == 1 else f", vocabulary: {{min_count: {min_count}}}"
    return Guess(head + f"kind: sparse, side: {side}{vocabulary}}}", why)


def _sibling_test_file(path: Path, header: bool, separator: str | None) -> Path | None:
    """A test split published beside a training or validation file (as
    `valid.csv` and `test.csv`): the one file in the same folder with the same
    suffix, "test" in its name and the same header (or, without a header, as
    many fields on its first line)."""
    if path.is_dir() or "test" in path.stem.lower():
        return None
    found = [
        other
        for other in path.parent.iterdir()
        if other != path
        and other.is_file()
        and other.suffix == path.suffix
        and "test" in other.stem.lower()
    ]
    if len(found) != 1:
        return None

    def first_line(file: Path) -> str:
        with file.open("rb") as handle:
            return handle.readline().decode("utf-8", errors="replace").rstrip("\r\n")

    mine, theirs = first_line(path), first_line(found[0])
    if header:
        return found[0] if mine == theirs else None
    if separator is None:  # libFM and the like: no fixed columns to compare
        return None
    return found[0] if mine.count(separator) == theirs.count(separator) else None


def render_config(inspection: Inspection, out: Path) -> str:
    """The YAML text, with a comment on each guess; paths relative to `out`."""
    relative = os.path.relpath(inspection.path.resolve(), out.resolve().parent)
    lines = [
        f"# Written by `likely init` from {inspection.rows_sampled:,} sampled rows of",
        f"# {inspection.path}. Every line is a guess: read the comments, then",
        "# adjust kinds, sides and transforms to what you know of the data.",
        "data:",
        f"  path: {relative}  # relative to this file",
    ]
    if inspection.test_path is not None:
        test = os.path.relpath(inspection.test_path.resolve(), out.resolve().parent)
        lines.append(f"  test_path: {test}")
    for note in inspection.data_notes:
        lines.append(f"  # {note}")
    for key, value in inspection.data.items():
        shown = {True: "true", False: "false"}.get(value, value)  # type: ignore[arg-type]
        if key == "separator":
            shown = f"'{value}'" if value != "\t" else '"\\t"'
        lines.append(f"  {key}: {shown}")
    if inspection.train:
        lines.append("train:")
        for note in inspection.train_notes:
            lines += [f"  # {line}" for line in textwrap.wrap(note, 76)]
        lines += [f"  {key}: {value}" for key, value in inspection.train.items()]
    lines += ["embedding_dim: 16", "features:"]
    for guess in inspection.features:
        lines.append(f"  # {guess.why}")
        lines.append(f"  - {guess.yaml}")
    if inspection.skipped:
        lines.append("# Left out:")
        lines += [f"#   {reason}" for reason in inspection.skipped]
    return "\n".join(lines) + "\n"
