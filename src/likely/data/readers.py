"""Readers: impression logs in, validated polars frames out.

Every reader returns the same thing, a `ReadResult` whose frame holds the label
(Int8, 0/1), the day (Date, where the logs have one) and the raw feature
columns the config asks for. Rows are parsed by polars; nothing here loops over
rows in Python.

Malformed input (a wrong number of fields, a non-number in a numeric column, a
label other than 0/1, a date that does not parse, an empty file) raises
`LogFormatError` naming the file, line and column, unless the policy is `skip`:
then bad rows are dropped and counted, and the count is logged by reason.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from likely.config import DataConfig, ErrorPolicy, ExperimentConfig, LogFormat

logger = logging.getLogger(__name__)

CRITEO_COLUMNS = (
    ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
)
DAY = "day"
LINE = "__line"  # 1-based line of a row in its file; dropped before returning


class LogFormatError(ValueError):
    """A log file that cannot be read as configured, with where it went wrong."""

    def __init__(self, path: Path, line: int | None, column: str | None, what: str):
        self.path, self.line, self.column = path, line, column
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {what}")


@dataclass
class ReadResult:
    """A validated frame and what was dropped on the way."""

    frame: pl.DataFrame
    files: list[Path]
    rows_read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True)
class ColumnRoles:
    """Which raw columns a config needs, and how each must parse."""

    label: str
    date: str | None
    date_format: str | None
    numeric: tuple[str, ...]  # dense features and the true probability
    keep: tuple[str, ...]  # every other column to return as read

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> ColumnRoles:
        data = config.data
        numeric = [f.source for f in config.features if f.kind == "dense"]
        if data.probability_column:
            numeric.append(data.probability_column)
        keep = [f.source for f in config.features if f.kind != "dense"]
        if data.user_column and data.user_column not in keep:
            keep.append(data.user_column)
        keep = [c for c in dict.fromkeys(keep) if c not in numeric]
        return cls(
            label=data.label,
            date=data.date_column,
            date_format=data.date_format,
            numeric=tuple(dict.fromkeys(numeric)),
            keep=tuple(keep),
        )

    @property
    def columns(self) -> list[str]:
        named = [self.label, *self.numeric, *self.keep]
        if self.date is not None:
            named.append(self.date)
        return list(dict.fromkeys(named))


def list_files(path: Path, log_format: LogFormat) -> list[Path]:
    """Files behind a config path: the file itself, a folder's files, or a glob."""
    if _is_glob(str(path)):
        # A glob also matches folders, and below its fixed part the hidden and
        # underscore entries (_SUCCESS, _temporary/) that a folder read skips.
        base = Path(*itertools.takewhile(lambda part: not _is_glob(part), path.parts))
        files = sorted(
            p for p in map(Path, _glob(path)) if p.is_file() and not _hidden(p, base)
        )
    elif path.is_dir():
        pattern = "*.parquet" if log_format == LogFormat.PARQUET else "*"
        files = sorted(
            p for p in path.rglob(pattern) if p.is_file() and not _hidden(p, path)
        )
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no log file or folder at {path}")
    if not files:
        raise FileNotFoundError(f"no {log_format.value} files found under {path}")
    return files


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _glob(path: Path) -> list[str]:
    import glob

    return glob.glob(str(path), recursive=True)


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in file.relative_to(root).parts)


def read_logs(
    data: DataConfig,
    roles: ColumnRoles,
    path: Path | None = None,
    files: list[Path] | None = None,
) -> ReadResult:
    """Read and validate every file under `path` (default `data.path`).

    `files` limits the read to some of those files (a window's days); partition
    values in their folder names are still taken relative to `path`.
    """
    root = path or data.path
    files = files if files is not None else list_files(root, data.format)
    if not files:
        raise FileNotFoundError(f"no {data.format.value} files to read under {root}")
    results = [read_file(file, data, roles, root=root) for file in files]
    frames = [r.frame for r in results if r.frame.height]
    frame = pl.concat(frames, how="vertical_relaxed") if frames else results[0].frame
    dropped: Counter[str] = Counter()
    for r in results:
        dropped.update(r.dropped)
    result = ReadResult(frame, files, sum(r.rows_read for r in results), dropped)
    _log_result(root, result)
    return result


def _log_result(root: Path, result: ReadResult) -> None:
    logger.info(
        "read %d rows from %d file(s) under %s; kept %d, dropped %d",
        result.rows_read,
        len(result.files),
        root,
        result.frame.height,
        result.rows_dropped,
    )
    for reason, count in sorted(result.dropped.items()):
        logger.warning("dropped %d row(s): %s", count, reason)


# Text is parsed in pieces of about this size: at 1M Criteo rows 32 MiB peaked
# at ~410 MB against ~650 MB for 64 MiB, as fast; 16 MiB (~340 MB) was 10-15%
# slower.
CHUNK_BYTES = 32 << 20


def read_file(
    file: Path, data: DataConfig, roles: ColumnRoles, root: Path | None = None
) -> ReadResult:
    """Read and validate one file; see the module docstring for the rules."""
    chunks = list(read_chunks(file, data, roles, root))
    frames = [c.frame for c in chunks]
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")
    dropped: Counter[str] = Counter()
    for chunk in chunks:
        dropped.update(chunk.dropped)
    return ReadResult(frame, [file], sum(c.rows_read for c in chunks), dropped)


def read_chunks(
    file: Path,
    data: DataConfig,
    roles: ColumnRoles,
    root: Path | None = None,
    chunk_bytes: int | None = None,
) -> Iterator[ReadResult]:
    """Read and validate one file in pieces, so a huge text log never sits whole
    in memory. Line numbers in errors count from the start of the file."""
    if file.stat().st_size == 0:
        raise LogFormatError(file, None, None, "the file is empty")
    # Delimited text can have polars parse the numbers (the fast path); Parquet is
    # typed already and libFM has its own parser.
    typed_by_polars = data.format not in (LogFormat.PARQUET, LogFormat.LIBFM)
    numeric = (roles.label, *roles.numeric) if typed_by_polars else ()
    rows = 0
    for parse in _parsers(file, data, root, chunk_bytes or CHUNK_BYTES):
        try:
            result = _checked(file, data, roles, parse(numeric))
        except LogFormatError:
            if not numeric:
                raise
            # Numbers were parsed by polars; parse the piece again as text so
            # the error quotes the value exactly as the file holds it.
            result = _checked(file, data, roles, parse(()))
        rows += result.rows_read
        yield result
    if rows == 0:
        raise LogFormatError(file, None, None, "the file has no data rows")


Parsed = tuple[pl.DataFrame, Counter]  # rows with their LINE, and dropped rows
Parser = Callable[[tuple[str, ...]], Parsed]


def _parsers(
    file: Path, data: DataConfig, root: Path | None, chunk_bytes: int
) -> Iterator[Parser]:
    """One parser per piece of the file; each takes the columns to parse as
    numbers."""
    if data.format == LogFormat.PARQUET:
        yield lambda numeric: (_parquet(file, root).with_row_index(LINE, 1), Counter())
    elif data.format == LogFormat.LIBFM:
        yield lambda numeric: parse_libfm(file, data)
    else:
        yield from _delimited_parsers(file, data, chunk_bytes)


def _checked(
    file: Path, data: DataConfig, roles: ColumnRoles, parsed: Parsed
) -> ReadResult:
    frame, dropped = parsed
    frame = frame.with_columns(pl.col(LINE).cast(pl.Int64))
    rows_read = frame.height + sum(dropped.values())
    sources: dict[str, str] = {}  # derived column -> the column it comes from
    if data.format == LogFormat.AVAZU and "hour" in frame.columns:
        frame, sources = avazu_day(frame), {DAY: "hour"}
    missing = [c for c in roles.columns if c not in frame.columns]
    if missing and frame.height:
        raise LogFormatError(
            file,
            None,
            None,
            f"missing column(s) {missing}; the file has {_shown(frame.columns)}",
        )
    if missing:
        frame = frame.with_columns(pl.lit(None, pl.String).alias(c) for c in missing)
    extra = [c for c in sources.values() if c not in roles.columns]
    frame = frame.select(LINE, *roles.columns, *extra)
    frame, bad = _validate(file, frame, roles, data.on_error, sources)
    dropped.update(bad)
    return ReadResult(frame.drop(LINE, *extra), [file], rows_read, dropped)


def _shown(columns: list[str], limit: int = 12) -> str:
    shown = [c for c in columns if c != LINE]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return f"{shown[:limit]}{more}"


def partition_values(file: Path, root: Path | None) -> dict[str, str]:
    """`key=value` folder names between `root` and `file`, as Spark writes them.

    >>> partition_values(Path("logs/day=2026-11-01/part-0.parquet"), Path("logs"))
    {'day': '2026-11-01'}
    """
    if root is None:
        return {}
    try:
        parts = file.relative_to(root).parts[:-1]
    except ValueError:
        return {}
    found = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if sep:
            found[key] = value
    return found


def with_partitions(frame: pl.DataFrame, file: Path, root: Path | None) -> pl.DataFrame:
    """Add the partition values of a file's folders as columns it lacks."""
    values = partition_values(file, root)
    return frame.with_columns(
        pl.lit(value).alias(key)
        for key, value in values.items()
        if key not in frame.columns
    )


def _parquet(file: Path, root: Path | None) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(file, hive_partitioning=False)
    except Exception as error:  # polars raises several types for corrupt files
        raise LogFormatError(
            file, None, None, f"not a readable Parquet file: {error}"
        ) from error
    return with_partitions(frame, file, root)


def _separator(data: DataConfig) -> str:
    if data.separator is not None:
        return data.separator
    if data.format in (LogFormat.TSV, LogFormat.CRITEO):
        return "\t"
    return ","


@dataclass(frozen=True)
class _TextPiece:
    """Whole lines of a text file, and the file line number of the first."""

    data: bytes
    first_line: int
    lines: int  # a last line without its newline counts too
    separators: int  # bytes equal to the separator


def _text_pieces(file: Path, chunk_bytes: int, separator: str) -> Iterator[_TextPiece]:
    line = 1
    with file.open("rb") as handle:
        while block := handle.read(chunk_bytes):
            if not block.endswith(b"\n"):
                block += handle.readline()
            newlines, separators = _byte_counts(block, separator.encode())
            lines = newlines + (not block.endswith(b"\n"))
            yield _TextPiece(block, line, lines, separators)
            line += lines


def _byte_counts(text: bytes, separator: bytes) -> tuple[int, int]:
    """Newlines and separators in `text`, counted by numpy in cache-sized
    blocks: about six times faster than two `bytes.count`."""
    if len(separator) != 1:
        return text.count(b"\n"), text.count(separator)
    codes = np.frombuffer(text, dtype=np.uint8)
    newline, mark = ord("\n"), separator[0]
    newlines = separators = 0
    for start in range(0, len(codes), 1 << 20):
        block = codes[start : start + (1 << 20)]
        newlines += int(np.count_nonzero(block == newline))
        separators += int(np.count_nonzero(block == mark))
    return newlines, separators


def _delimited_parsers(
    file: Path, data: DataConfig, chunk_bytes: int
) -> Iterator[Parser]:
    """CSV-like text, piece by piece: check each line's field count, then parse.

    Columns asked for as numbers (the label, dense features) are parsed by polars
    where every value is one; else everything is read as text for `_validate`.
    """
    separator = _separator(data)
    names = data.column_names
    if names is None and data.format == LogFormat.CRITEO:
        names = CRITEO_COLUMNS
    if not data.header and names is None:
        raise LogFormatError(
            file,
            None,
            None,
            "has_header is false but data.column_names is not set; name the columns",
        )
    for index, piece in enumerate(_text_pieces(file, chunk_bytes, separator)):
        header = data.header and index == 0
        if header:
            if not piece.data.split(b"\n", 1)[0].rstrip(b"\r"):
                raise LogFormatError(file, 1, None, "expected a header line")
            header_names = _header_names(piece.data, separator)
            if names is not None and len(header_names) != len(names):
                raise LogFormatError(
                    file,
                    1,
                    None,
                    f"expected {len(names)} names in the header, "
                    f"found {len(header_names)}",
                )
            names = names or header_names
        yield _PieceParser(file, data, piece, header, names, separator)


def _header_names(text: bytes, separator: str) -> list[str]:
    first = text.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    return first.split(separator)


@dataclass
class _PieceParser:
    """Parse one piece, dropping or refusing lines with the wrong field count.

    Most pieces have no such line, and that is proved without looking at each
    line: polars refuses a line with too many fields, and if the piece has
    exactly `len(names) - 1` separators per line, no line (blank ones included)
    can then have too few. Only a piece that fails the proof pays for counting
    every line's fields.

    A class, not a closure that calls itself: such a closure is a reference
    cycle, and each one kept its piece's 32 MiB alive until the cyclic garbage
    collector ran, which with so few Python objects made was hardly ever
    (peak memory grew by a piece per piece read).
    """

    file: Path
    data: DataConfig
    piece: _TextPiece
    header: bool
    names: list[str]
    separator: str

    def __post_init__(self) -> None:
        self.first_row_line = self.piece.first_line + (1 if self.header else 0)
        width = len(self.names)
        self.whole = self.piece.separators == (width - 1) * self.piece.lines

    def __call__(self, numeric: tuple[str, ...]) -> Parsed:
        if self.whole:
            try:
                return self._read(numeric, strict=True), Counter()
            except pl.exceptions.ComputeError:
                if numeric:  # perhaps a number polars cannot parse
                    return self(())
                self.whole = False  # a line with too many fields
        skip, dropped = self._line_checks
        try:
            # Fast path: polars parses the numeric columns itself. Any value it
            # cannot parse fails the whole piece, and the text parse finds it.
            frame = self._read(numeric, strict=False)
        except pl.exceptions.ComputeError:
            if not numeric:
                raise
            return self(())
        if skip.len():
            frame = frame.filter(~pl.col(LINE).is_in(skip.implode()))
        return frame, Counter(dropped)

    @cached_property
    def _line_checks(self) -> tuple[pl.Series, Counter[str]]:
        """Lines to skip (blank or of the wrong width) and what was dropped;
        counted once, however many times the piece is parsed."""
        width = len(self.names)
        counts = _field_counts(self.piece.data, self.separator)
        body = counts.slice(1 if self.header else 0).with_row_index(
            LINE, offset=self.first_row_line
        )
        blank = body.filter(pl.col("fields").is_null())
        ragged = body.filter(
            pl.col("fields").is_not_null() & (pl.col("fields") != width)
        )
        dropped: Counter[str] = Counter()
        if ragged.height and self.data.on_error == ErrorPolicy.RAISE:
            line, got = ragged.row(0)[0], ragged.row(0)[1]
            raise LogFormatError(
                self.file, line, None, f"expected {width} fields, found {got}"
            )
        if ragged.height:
            dropped[f"expected {width} fields"] += ragged.height
        if blank.height:
            logger.info("%s: ignored %d blank line(s)", self.file, blank.height)
        return pl.concat([blank[LINE], ragged[LINE]]).cast(pl.Int64), dropped

    def _read(self, numeric: tuple[str, ...], strict: bool) -> pl.DataFrame:
        typed = dict.fromkeys(numeric, pl.Float64)
        kwargs: dict[str, Any] = {
            "separator": self.separator,
            "has_header": self.header,
            "infer_schema": False,
            "truncate_ragged_lines": not strict,
            "quote_char": None,
        }
        if self.header:
            kwargs |= {"schema_overrides": typed}
        else:
            # Without a header polars takes the width from the first line, which
            # may be short or blank; fix it to the known names and pad short lines.
            # (`missing_columns` and `extra_columns` need polars 2.)
            kwargs |= {
                "schema": {n: typed.get(n, pl.String) for n in self.names},
                "missing_columns": "insert",
                "extra_columns": "raise" if strict else "ignore",
            }
        frame = pl.read_csv(io.BytesIO(self.piece.data), **kwargs)
        frame = frame.with_row_index(LINE, offset=self.first_row_line)
        return frame.with_columns(pl.col(LINE).cast(pl.Int64))


def _field_counts(text: bytes, separator: str) -> pl.DataFrame:
    """Number of fields on each line (null for a blank line), one pass in polars.

    Quoting is not interpreted: a separator inside a quoted field counts, so
    quoted CSV with embedded separators must be converted (or read as Parquet).
    """
    line = pl.col("line")
    counts = line.str.count_matches(separator, literal=True) + 1
    blank = line.str.len_bytes() == 0
    blank = blank | ((line.str.len_bytes() == 1) & line.str.ends_with("\r"))
    lines = pl.read_csv(
        io.BytesIO(text),
        separator="\x1f",
        has_header=False,
        quote_char=None,
        schema={"line": pl.String},
    )
    return lines.select(pl.when(~blank).then(counts).alias("fields"))


def avazu_day(frame: pl.DataFrame) -> pl.DataFrame:
    """Avazu's `hour` is YYMMDDHH: derive `day` (Date) and `hour_of_day`."""
    if "hour" not in frame.columns:
        return frame
    hour = pl.col("hour").cast(pl.String).str.strip_chars()
    hour_of_day = hour.str.slice(6, 2).cast(pl.Int8, strict=False)
    day = (
        pl.when(hour.str.contains(r"^\d{8}$") & hour_of_day.is_between(0, 23))
        .then(hour.str.slice(0, 6).str.to_date("%y%m%d", strict=False))
        .alias(DAY)
    )
    return frame.with_columns(day).with_columns(
        pl.when(pl.col(DAY).is_not_null()).then(hour_of_day).alias("hour_of_day")
    )


def parse_libfm(file: Path, data: DataConfig) -> tuple[pl.DataFrame, Counter[str]]:
    """libFM / libSVM: `label idx:val idx:val ...`, separated by spaces.

    Pair i becomes columns `c{i}` (its index, Int64) and `v{i}` (its value); a
    row with fewer pairs than the longest has nulls in the missing positions.
    """
    lines = pl.read_csv(
        file,
        separator="\x1f",
        has_header=False,
        quote_char=None,
        new_columns=["line"],
        schema_overrides={"line": pl.String},
    ).with_row_index(LINE, offset=1)
    lines = lines.filter(pl.col("line").str.strip_chars().str.len_bytes() > 0)
    tokens = lines.select(
        LINE, pl.col("line").str.strip_chars().str.split(data.separator or " ")
    )
    width = int(tokens["line"].list.len().max() or 1)
    pairs = [f"p{i}" for i in range(width - 1)]
    tokens = tokens.select(
        LINE,
        pl.col("line").list.get(0).alias("label"),
        *[
            pl.col("line").list.get(i + 1, null_on_oob=True).alias(pair)
            for i, pair in enumerate(pairs)
        ],
    )
    columns = [pl.col(LINE), pl.col("label")]
    bad_pairs = []  # per position: a token that is not exactly `int:value`
    for i, pair in enumerate(pairs):
        parts = pl.col(pair).str.split_exact(":", 1)
        index, value = parts.struct.field("field_0"), parts.struct.field("field_1")
        columns += [index.alias(f"c{i}"), value.alias(f"v{i}")]
        bad_pairs.append(
            pl.col(pair).is_not_null()
            & (
                (pl.col(pair).str.count_matches(":", literal=True) != 1)
                | index.cast(pl.Int64, strict=False).is_null()
                | (value.str.len_bytes() == 0)
            )
        )
    bad_pair = pl.any_horizontal(bad_pairs or [pl.lit(False)])
    bad = tokens.filter(bad_pair)
    dropped: Counter[str] = Counter()
    if bad.height and data.on_error == ErrorPolicy.RAISE:
        first = bad.head(1)
        i = next(i for i, expr in enumerate(bad_pairs) if first.select(expr).item())
        raise LogFormatError(
            file,
            int(first[LINE].item()),
            f"c{i}",
            f"expected an index:value pair, got {first[pairs[i]].item()!r}",
        )
    if bad.height:
        dropped["expected index:value pairs after the label"] += bad.height
        tokens = tokens.filter(~bad_pair)
    frame = tokens.select(columns).with_columns(
        [pl.col(f"c{i}").cast(pl.Int64) for i in range(width - 1)]
    )
    return frame.with_columns(pl.col(LINE).cast(pl.Int64)), dropped


def _validate(
    file: Path,
    frame: pl.DataFrame,
    roles: ColumnRoles,
    policy: ErrorPolicy,
    sources: dict[str, str] | None = None,
) -> tuple[pl.DataFrame, Counter[str]]:
    """Type the label, numeric and date columns; find rows that do not parse.

    `sources` names the file's column behind a derived one (Avazu's `hour` behind
    `day`), so an error points at what the file holds.
    """
    sources = sources or {}
    checks: list[tuple[str, str, pl.Expr, pl.Expr]] = []  # column, what, bad, value

    label_raw = pl.col(roles.label)
    if frame.schema[roles.label].is_numeric():
        label = label_raw.cast(pl.Float64)
    else:
        label = label_raw.cast(pl.String).str.strip_chars()
        label = label.cast(pl.Float64, strict=False)
    checks.append(
        (
            roles.label,
            "expected a label of 0 or 1",
            ~label.is_in([0.0, 1.0]) | label.is_null(),
            label_raw,
        )
    )
    typed = [label.cast(pl.Int8).alias(roles.label)]

    for column in roles.numeric:
        raw = pl.col(column)
        if frame.schema[column].is_numeric():
            value = raw.cast(pl.Float64)
        else:
            value = raw.str.strip_chars().cast(pl.Float64, strict=False)
        bad = raw.is_not_null() & value.is_null()
        if frame.schema[column] == pl.String:
            bad = bad & (raw.str.strip_chars() != "")
        checks.append((column, "expected a number", bad, raw))
        typed.append(value.alias(column))

    if roles.date is not None:
        day = _parse_day(frame.schema[roles.date], roles.date, roles.date_format)
        source = sources.get(roles.date, roles.date)
        checks.append((source, "expected a date", day.is_null(), pl.col(source)))
        typed.append(day.alias(roles.date))

    flags = frame.select(
        LINE,
        *[
            bad.fill_null(True).alias(f"bad{i}")
            for i, (_, _, bad, _) in enumerate(checks)
        ],
    )
    dropped: Counter[str] = Counter()
    any_bad = pl.any_horizontal([pl.col(f"bad{i}") for i in range(len(checks))])
    bad_rows = flags.filter(any_bad)
    if bad_rows.height == 0:
        return frame.with_columns(typed), dropped
    if policy == ErrorPolicy.RAISE:
        first = bad_rows.row(0, named=True)  # the earliest bad line in the file
        i = next(i for i in range(len(checks)) if first[f"bad{i}"])
        column, what, _, raw = checks[i]
        line = int(first[LINE])
        value = frame.filter(pl.col(LINE) == line).select(raw).item()
        raise LogFormatError(file, line, column, f"{what}, got {value!r}")
    # Each dropped row is counted once, under the first check it fails.
    remaining = bad_rows
    for i, (column, what, _, _) in enumerate(checks):
        hits = remaining.filter(pl.col(f"bad{i}")).height
        if hits:
            dropped[f"column '{column}': {what}"] += hits
        remaining = remaining.filter(~pl.col(f"bad{i}"))
    keep = frame.filter(~pl.col(LINE).is_in(bad_rows[LINE].implode()))
    return keep.with_columns(typed), dropped


def _parse_day(dtype: pl.DataType, column: str, date_format: str | None) -> pl.Expr:
    raw = pl.col(column)
    if dtype == pl.Date:
        return raw
    if isinstance(dtype, pl.Datetime):
        return raw.dt.date()
    text = raw.cast(pl.String).str.strip_chars()
    if date_format is not None:
        if any(code in date_format for code in ("%H", "%M", "%S")):
            return text.str.to_datetime(date_format, strict=False).dt.date()
        return text.str.to_date(date_format, strict=False)
    return pl.coalesce(
        text.str.to_date("%Y-%m-%d", strict=False),
        text.str.to_date("%Y%m%d", strict=False),
    )
