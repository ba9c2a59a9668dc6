"""Readers: real logs, every malformed case for every format, Parquet, listing."""

from __future__ import annotations

import csv
import datetime as dt
import gc
import random
import re
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from likely.config import LogFormat, parse_config
from likely.data import readers
from likely.data.readers import (
    CRITEO_COLUMNS,
    ColumnRoles,
    LogFormatError,
    ReadResult,
    list_files,
    read_logs,
)

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
EOLS = {"lf": "\n", "crlf": "\r\n"}
FRAPPE_FIELDS = (
    "user",
    "item",
    "daytime",
    "weekday",
    "isweekend",
    "homework",
    "cost",
    "weather",
    "country",
    "city",
)
CRITEO_DENSE = CRITEO_COLUMNS[1:14]
CRITEO_SPARSE = CRITEO_COLUMNS[14:]
LABEL = "column 'label': expected a label of 0 or 1"
PAIRS = "expected index:value pairs after the label"


def sparse(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "kind": "sparse"} for name in names]


def dense(*names: str) -> list[dict[str, str]]:
    return [{"name": name, "kind": "dense"} for name in names]


def read(
    path: Path,
    features: list[dict[str, str]],
    files: list[Path] | None = None,
    **data: Any,
) -> ReadResult:
    """Read `path` with a config made of `data` (format and options) and features."""
    config = parse_config({"data": {"path": str(path), **data}, "features": features})
    return read_logs(config.data, ColumnRoles.from_config(config), files=files)


def write_lines(path: Path, lines: list[str], eol: str = "\n") -> Path:
    path.write_bytes("".join(line + eol for line in lines).encode())
    return path


def csv_rows(file: Path) -> list[list[str]]:
    with file.open(newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (../shared/data)")
    return REAL_DATA


# --- The reader x malformed-case grid -------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One malformed line and what reading it must report."""

    text: str
    column: str | None
    message: str
    reason: str  # the key it is counted under when skipped


@dataclass(frozen=True)
class Layout:
    """A log format with three good lines, what they read as, and bad lines."""

    name: str
    data: dict[str, Any]
    features: list[dict[str, str]]
    header: str | None
    good: tuple[str, str, str]
    expected: list[tuple[Any, ...]]
    bad: dict[str, Bad]

    @property
    def header_lines(self) -> int:
        """Lines before the first row; Parquet rows are numbered from 1."""
        return 0 if self.header is None or self.data["format"] == "parquet" else 1

    def write(self, path: Path, body: list[str], eol: str = "\n") -> Path:
        """Write the header (if any) and `body`; Parquet takes comma-split fields."""
        lines = body if self.header is None else [self.header, *body]
        if self.data["format"] != "parquet":
            return write_lines(path, lines, eol)
        names = lines[0].split(",")
        rows = [[value or None for value in line.split(",")] for line in lines[1:]]
        columns = {n: [row[i] for row in rows] for i, n in enumerate(names)}
        pl.DataFrame(columns, schema=dict.fromkeys(names, pl.String)).write_parquet(
            path
        )
        return path

    def read(self, path: Path, **data: Any) -> ReadResult:
        return read(path, self.features, **{**self.data, **data})


def delimited_bad(sep: str, day: str, bad_day: str) -> dict[str, Bad]:
    """Bad lines for the label,price,day,user layout (four fields)."""
    ragged = "expected 4 fields"
    return {
        "too_many": Bad(
            sep.join(["1", "2.5", day, "u9", "x"]),
            None,
            "expected 4 fields, found 5",
            ragged,
        ),
        "too_few": Bad(
            sep.join(["1", "2.5", day]),
            None,
            "expected 4 fields, found 3",
            ragged,
        ),
        "not_a_number": Bad(
            sep.join(["1", "abc", day, "u9"]),
            "price",
            "expected a number, got 'abc'",
            "column 'price': expected a number",
        ),
        "label_2": Bad(
            sep.join(["2", "2.5", day, "u9"]),
            "label",
            "expected a label of 0 or 1, got '2'",
            LABEL,
        ),
        "label_yes": Bad(
            sep.join(["yes", "2.5", day, "u9"]),
            "label",
            "expected a label of 0 or 1, got 'yes'",
            LABEL,
        ),
        "label_empty": Bad(
            sep.join(["", "2.5", day, "u9"]),
            "label",
            "expected a label of 0 or 1, got None",
            LABEL,
        ),
        "bad_date": Bad(
            sep.join(["1", "2.5", bad_day, "u9"]),
            "day",
            f"expected a date, got '{bad_day}'",
            "column 'day': expected a date",
        ),
    }


DAYS_EXPECTED = [
    (1, 2.5, "u1", dt.date(2024, 3, 1)),
    (0, None, "u2", dt.date(2024, 3, 2)),
    (1, 7.0, "u3", dt.date(2024, 3, 3)),
]
CSV = Layout(
    "csv",
    {"format": "csv", "date_column": "day"},
    dense("price") + sparse("user"),
    "label,price,day,user",
    ("1,2.5,2024-03-01,u1", "0,,2024-03-02,u2", "1,7,2024-03-03,u3"),
    DAYS_EXPECTED,
    delimited_bad(",", "2024-03-04", "2024-13-40"),
)
TSV = Layout(
    "tsv",
    {"format": "tsv", "date_column": "day", "date_format": "%Y%m%d"},
    dense("price") + sparse("user"),
    "label\tprice\tday\tuser",
    ("1\t2.5\t20240301\tu1", "0\t\t20240302\tu2", "1\t7\t20240303\tu3"),
    DAYS_EXPECTED,
    delimited_bad("\t", "20240304", "20241340"),
)
PARQUET = Layout(
    "parquet",
    {"format": "parquet", "date_column": "day"},
    dense("price") + sparse("user"),
    "label,price,day,user",
    CSV.good,
    DAYS_EXPECTED,
    {k: v for k, v in CSV.bad.items() if not k.startswith("too_")},
)


def criteo_line(
    label: str, i1: str, c1: str, c26: str, sep: str = "\t", extra: int = 0
) -> str:
    """A Criteo line: I2..I13 empty, C2..C25 'x'; `extra` fields added (or cut)."""
    fields = [label, i1, *[""] * 12, c1, *["x"] * 24, c26]
    fields = fields + ["e"] * extra if extra >= 0 else fields[:extra]
    return sep.join(fields)


def criteo_bad(sep: str) -> dict[str, Bad]:
    return {
        "too_many": Bad(
            criteo_line("1", "5", "a9", "z9", sep, extra=1),
            None,
            "expected 40 fields, found 41",
            "expected 40 fields",
        ),
        "too_few": Bad(
            criteo_line("1", "5", "a9", "z9", sep, extra=-1),
            None,
            "expected 40 fields, found 39",
            "expected 40 fields",
        ),
        "not_a_number": Bad(
            criteo_line("1", "abc", "a9", "z9", sep),
            "I1",
            "expected a number, got 'abc'",
            "column 'I1': expected a number",
        ),
        "label_2": Bad(
            criteo_line("2", "5", "a9", "z9", sep),
            "label",
            "expected a label of 0 or 1, got '2'",
            LABEL,
        ),
        "label_yes": Bad(
            criteo_line("yes", "5", "a9", "z9", sep),
            "label",
            "expected a label of 0 or 1, got 'yes'",
            LABEL,
        ),
        "label_empty": Bad(
            criteo_line("", "5", "a9", "z9", sep),
            "label",
            "expected a label of 0 or 1, got None",
            LABEL,
        ),
    }


# The second good line ends in an empty field: with CRLF it must read as null.
CRITEO_EXPECTED = [(1, 5.0, "a1", "z1"), (0, None, "a2", None), (1, -3.0, "a3", "z3")]
CRITEO_RAW = Layout(
    "criteo_raw",
    {"format": "criteo"},
    dense("I1") + sparse("C1", "C26"),
    None,
    (
        criteo_line("1", "5", "a1", "z1"),
        criteo_line("0", "", "a2", ""),
        criteo_line("1", "-3", "a3", "z3"),
    ),
    CRITEO_EXPECTED,
    criteo_bad("\t"),
)
CRITEO_HEADER = Layout(
    "criteo_header",
    {"format": "criteo", "separator": ",", "has_header": True},
    dense("I1") + sparse("C1", "C26"),
    ",".join(CRITEO_COLUMNS),
    (
        criteo_line("1", "5", "a1", "z1", ","),
        criteo_line("0", "", "a2", "", ","),
        criteo_line("1", "-3", "a3", "z3", ","),
    ),
    CRITEO_EXPECTED,
    criteo_bad(","),
)
CLICK = "column 'click': expected a label of 0 or 1"
AVAZU = Layout(
    "avazu",
    {"format": "avazu", "label": "click", "date_column": "day"},
    dense("banner_pos") + sparse("site_id", "hour_of_day"),
    "id,click,hour,banner_pos,site_id",
    ("1,1,14102100,0,s1", "2,0,14102105,,s2", "3,1,14102223,1,s3"),
    [
        (1, 0.0, "s1", 0, dt.date(2014, 10, 21)),
        (0, None, "s2", 5, dt.date(2014, 10, 21)),
        (1, 1.0, "s3", 23, dt.date(2014, 10, 22)),
    ],
    {
        "too_many": Bad(
            "4,0,14102100,0,s4,x",
            None,
            "expected 5 fields, found 6",
            "expected 5 fields",
        ),
        "too_few": Bad(
            "4,0,14102100,0", None, "expected 5 fields, found 4", "expected 5 fields"
        ),
        "not_a_number": Bad(
            "4,0,14102100,abc,s4",
            "banner_pos",
            "expected a number, got 'abc'",
            "column 'banner_pos': expected a number",
        ),
        "label_2": Bad(
            "4,2,14102100,0,s4", "click", "expected a label of 0 or 1, got '2'", CLICK
        ),
        "label_yes": Bad(
            "4,yes,14102100,0,s4",
            "click",
            "expected a label of 0 or 1, got 'yes'",
            CLICK,
        ),
        "label_empty": Bad(
            "4,,14102100,0,s4", "click", "expected a label of 0 or 1, got None", CLICK
        ),
        "bad_date": Bad(
            "4,0,14103200,0,s4",
            "hour",
            "expected a date, got '14103200'",
            "column 'hour': expected a date",
        ),
        "bad_hour": Bad(
            "4,0,14102125,0,s4",
            "hour",
            "expected a date, got '14102125'",
            "column 'hour': expected a date",
        ),
    },
)
LIBFM = Layout(
    "libfm",
    {"format": "libfm"},
    dense("v0") + sparse("c0", "c1"),
    None,
    ("1 3:1 7:0.5", "0 2:1 7:1", "1 5:2.5"),
    [(1, 1.0, 3, 7), (0, 1.0, 2, 7), (1, 2.5, 5, None)],
    {
        "too_many": Bad(
            "1 3:1:2 7:1", "c0", "expected an index:value pair, got '3:1:2'", PAIRS
        ),
        "too_few": Bad("1 3 7:1", "c0", "expected an index:value pair, got '3'", PAIRS),
        "bad_index": Bad(
            "1 7:1 x:1", "c1", "expected an index:value pair, got 'x:1'", PAIRS
        ),
        "not_a_number": Bad(
            "1 3:abc 7:1",
            "v0",
            "expected a number, got 'abc'",
            "column 'v0': expected a number",
        ),
        "label_2": Bad(
            "2 3:1 7:1", "label", "expected a label of 0 or 1, got '2'", LABEL
        ),
        "label_yes": Bad(
            "yes 3:1 7:1", "label", "expected a label of 0 or 1, got 'yes'", LABEL
        ),
        # Without a label the first pair stands where the label should be.
        "label_empty": Bad(
            " 3:1 7:1", "label", "expected a label of 0 or 1, got '3:1'", LABEL
        ),
    },
)
LAYOUTS = [CSV, TSV, CRITEO_RAW, CRITEO_HEADER, AVAZU, LIBFM, PARQUET]
TEXT_LAYOUTS = [layout for layout in LAYOUTS if layout is not PARQUET]


def grid() -> list[Any]:
    params = []
    for layout in LAYOUTS:
        eols = ["lf"] if layout is PARQUET else list(EOLS)
        for case in layout.bad:
            for eol in eols:
                params.append(
                    pytest.param(layout, case, eol, id=f"{layout.name}-{case}-{eol}")
                )
    return params


def write_with_bad(layout: Layout, case: str, eol: str, tmp_path: Path) -> Path:
    """Good lines 1 and 2, the bad line, good line 3 (after any header)."""
    first, second, third = layout.good
    body = [first, second, layout.bad[case].text, third]
    suffix = ".parquet" if layout is PARQUET else ".txt"
    return layout.write(tmp_path / f"logs{suffix}", body, EOLS[eol])


@pytest.mark.parametrize(("layout", "case", "eol"), grid())
def test_a_malformed_line_raises_naming_file_line_and_column(
    layout: Layout, case: str, eol: str, tmp_path: Path
) -> None:
    file = write_with_bad(layout, case, eol, tmp_path)
    bad = layout.bad[case]
    line = layout.header_lines + 3

    with pytest.raises(LogFormatError) as caught:
        layout.read(file)

    error = caught.value
    assert (error.path, error.line, error.column) == (file, line, bad.column)
    where = f"{file}, line {line}"
    if bad.column is not None:
        where += f", column '{bad.column}'"
    assert str(error) == f"{where}: {bad.message}"


@pytest.mark.parametrize(("layout", "case", "eol"), grid())
def test_skip_drops_only_the_malformed_line_and_counts_it(
    layout: Layout, case: str, eol: str, tmp_path: Path
) -> None:
    file = write_with_bad(layout, case, eol, tmp_path)

    result = layout.read(file, on_error="skip")

    assert result.frame.rows() == layout.expected
    assert result.frame.schema[layout.data.get("label", "label")] == pl.Int8
    assert result.dropped == Counter({layout.bad[case].reason: 1})
    assert (result.rows_read, result.rows_dropped) == (4, 1)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("eol", list(EOLS))
def test_good_lines_read_the_same_with_lf_and_crlf(
    layout: Layout, eol: str, tmp_path: Path
) -> None:
    file = layout.write(tmp_path / "logs", list(layout.good), EOLS[eol])

    result = layout.read(file)

    assert result.frame.rows() == layout.expected
    assert (result.rows_read, result.dropped) == (3, Counter())


def empty_files() -> list[Any]:
    params = []
    for layout in LAYOUTS:
        params.append(pytest.param(layout, "empty", "lf", id=f"{layout.name}-empty"))
        if layout.header is None:
            continue
        eols = ["lf"] if layout is PARQUET else list(EOLS)
        for eol in eols:
            name = f"{layout.name}-header_only-{eol}"
            params.append(pytest.param(layout, "header_only", eol, id=name))
    return params


@pytest.mark.parametrize(("layout", "case", "eol"), empty_files())
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_file_without_data_rows_raises_under_either_policy(
    layout: Layout, case: str, eol: str, policy: str, tmp_path: Path
) -> None:
    file = tmp_path / "logs"
    if case == "empty":
        file.write_bytes(b"")
    else:
        layout.write(file, [], EOLS[eol])

    with pytest.raises(LogFormatError) as caught:
        layout.read(file, on_error=policy)

    what = "the file is empty" if case == "empty" else "the file has no data rows"
    assert (caught.value.path, caught.value.line) == (file, None)
    assert str(caught.value) == f"{file}: {what}"


@pytest.mark.parametrize("layout", TEXT_LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("eol", list(EOLS))
def test_blank_lines_are_ignored_and_later_lines_keep_their_numbers(
    layout: Layout, eol: str, tmp_path: Path
) -> None:
    first, second, third = layout.good
    bad = layout.bad["label_2"]
    body = ["", first, "", "", second, bad.text, third, ""]
    file = layout.write(tmp_path / "logs", body, EOLS[eol])

    with pytest.raises(LogFormatError) as caught:
        layout.read(file)
    assert caught.value.line == layout.header_lines + 6
    assert f"line {layout.header_lines + 6}," in str(caught.value)

    result = layout.read(file, on_error="skip")
    assert result.frame.rows() == layout.expected
    assert result.dropped == Counter({bad.reason: 1})
    assert result.rows_read == 4


@pytest.mark.parametrize("layout", TEXT_LAYOUTS, ids=lambda layout: layout.name)
def test_a_long_and_a_short_line_that_balance_the_separators_are_both_found(
    layout: Layout, tmp_path: Path
) -> None:
    # One field too many and one too few: the piece has as many separators as
    # well-formed lines would, so only polars' refusal of the long line can
    # send the read down the path that counts every line.
    first, second, third = layout.good
    long, short = layout.bad["too_many"], layout.bad["too_few"]
    file = layout.write(
        tmp_path / "logs", [first, long.text, second, short.text, third]
    )

    with pytest.raises(LogFormatError) as caught:
        layout.read(file)
    assert caught.value.line == layout.header_lines + 2
    assert str(caught.value).endswith(long.message)

    result = layout.read(file, on_error="skip")
    assert result.frame.rows() == layout.expected
    assert result.dropped == Counter({long.reason: 2})


@pytest.mark.parametrize("layout", TEXT_LAYOUTS, ids=lambda layout: layout.name)
def test_well_formed_text_is_parsed_without_counting_each_lines_fields(
    layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def counted(*args: Any) -> None:
        raise AssertionError("a well-formed piece was checked line by line")

    monkeypatch.setattr(readers, "_field_counts", counted)
    file = layout.write(tmp_path / "logs", list(layout.good))

    assert layout.read(file).frame.rows() == layout.expected


@pytest.mark.parametrize("layout", TEXT_LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("bad", [None, "too_many", "not_a_number"])
def test_a_parsed_piece_is_freed_without_the_cycle_collector(
    layout: Layout, bad: str | None, tmp_path: Path
) -> None:
    # A parser that refers to itself would keep its piece of text alive until
    # the cyclic garbage collector happens to run: a piece's worth of memory
    # per piece read, on the fast path and on both fall-backs.
    body = list(layout.good) + ([layout.bad[bad].text] if bad else [])
    file = layout.write(tmp_path / "logs", body)
    data = {"path": str(file), **layout.data, "on_error": "skip"}
    config = parse_config({"data": data, "features": layout.features})
    roles = ColumnRoles.from_config(config)
    gc.disable()
    try:
        parser = next(readers._parsers(file, config.data, None, 1 << 20))
        parser((roles.label, *roles.numeric))
        alive = weakref.ref(parser)
        del parser
        assert alive() is None
    finally:
        gc.enable()


# --- Errors found through the grid, pinned down on their own ---------------------


def test_the_earliest_bad_line_is_reported(tmp_path: Path) -> None:
    lines = [CSV.header, CSV.good[0], "1,abc,2024-03-01,u1", "7,2.5,2024-03-01,u1"]
    file = write_lines(tmp_path / "logs.csv", lines)

    with pytest.raises(LogFormatError) as caught:
        CSV.read(file)

    assert (caught.value.line, caught.value.column) == (3, "price")


def test_a_row_bad_in_two_columns_is_dropped_and_counted_once(tmp_path: Path) -> None:
    lines = [CSV.header, *CSV.good, "7,abc,2024-13-40,u4"]
    file = write_lines(tmp_path / "logs.csv", lines)

    result = CSV.read(file, on_error="skip")

    assert result.frame.rows() == CSV.expected
    assert result.dropped == Counter({LABEL: 1})
    assert result.rows_read == result.frame.height + result.rows_dropped == 4


@pytest.mark.parametrize("extra", [-1, 1, -39], ids=["short", "long", "one_field"])
def test_raw_criteo_whose_first_line_is_ragged_keeps_every_good_field(
    extra: int, tmp_path: Path
) -> None:
    ragged = criteo_line("1", "5", "a0", "z0", extra=extra)
    file = write_lines(tmp_path / "day0.txt", [ragged, *CRITEO_RAW.good])

    result = CRITEO_RAW.read(file, on_error="skip")

    assert result.frame.rows() == CRITEO_EXPECTED
    assert result.dropped == Counter({"expected 40 fields": 1})


def test_raw_criteo_rejects_a_header_line_unless_told(tmp_path: Path) -> None:
    header = "\t".join(CRITEO_COLUMNS)
    file = write_lines(tmp_path / "day0.txt", [header, *CRITEO_RAW.good])

    with pytest.raises(LogFormatError) as caught:
        CRITEO_RAW.read(file)
    assert (caught.value.line, caught.value.column) == (1, "label")
    assert "got 'label'" in str(caught.value)

    told = CRITEO_RAW.read(file, has_header=True)
    assert told.frame.rows() == CRITEO_EXPECTED


def test_criteo_with_a_header_of_the_wrong_width(tmp_path: Path) -> None:
    header = ",".join(CRITEO_COLUMNS[:-1])
    file = write_lines(tmp_path / "day0.csv", [header, *CRITEO_HEADER.good])

    with pytest.raises(
        LogFormatError, match="expected 40 names in the header"
    ) as caught:
        CRITEO_HEADER.read(file)

    assert caught.value.line == 1


def test_libfm_skip_counts_every_dropped_pair(tmp_path: Path) -> None:
    lines = [*LIBFM.good, "1 3", "0 x:1", "1 2:1 4:"]
    file = write_lines(tmp_path / "logs.libfm", lines)

    result = LIBFM.read(file, on_error="skip")

    assert result.frame.rows() == LIBFM.expected
    assert result.dropped == Counter({PAIRS: 3})
    assert result.rows_read == 6


# --- Missing columns ------------------------------------------------------------


@pytest.mark.parametrize("layout", [CSV, AVAZU, PARQUET], ids=lambda x: x.name)
def test_a_missing_required_column_is_named(layout: Layout, tmp_path: Path) -> None:
    file = layout.write(tmp_path / "logs", list(layout.good))
    features = [*layout.features, *dense("bid"), *sparse("campaign")]

    with pytest.raises(LogFormatError) as caught:
        read(file, features, **layout.data)

    assert (caught.value.path, caught.value.line, caught.value.column) == (
        file,
        None,
        None,
    )
    assert "missing column(s) ['bid', 'campaign']" in str(caught.value)
    assert str(file) in str(caught.value)


# --- Parquet --------------------------------------------------------------------


@pytest.fixture
def hive(tmp_path: Path) -> Path:
    """Two day partitions as Spark writes them, plus files a reader must skip."""
    root = tmp_path / "logs"
    days = {"2024-03-01": (["u1", "u2"], [1, 0]), "2024-03-02": (["u3"], [0])}
    for day, (users, labels) in days.items():
        folder = root / f"day={day}"
        folder.mkdir(parents=True)
        frame = pl.DataFrame({"label": labels, "user": users})
        frame.write_parquet(folder / "part-0.parquet")
        (folder / ".part-0.parquet.crc").write_bytes(b"not parquet")
    (root / "_SUCCESS").write_bytes(b"")
    (root / "_temporary").mkdir()
    (root / "_temporary" / "part-9.parquet").write_bytes(b"not parquet")
    return root


def test_hive_partitions_give_the_day(hive: Path) -> None:
    result = read(hive, sparse("user"), format="parquet", date_column="day")

    assert result.frame.schema["day"] == pl.Date
    assert result.frame.rows() == [
        (1, "u1", dt.date(2024, 3, 1)),
        (0, "u2", dt.date(2024, 3, 1)),
        (0, "u3", dt.date(2024, 3, 2)),
    ]
    assert [f.parent.name for f in result.files] == ["day=2024-03-01", "day=2024-03-02"]


def test_files_limits_the_read(hive: Path) -> None:
    second = hive / "day=2024-03-02" / "part-0.parquet"

    result = read(
        hive, sparse("user"), files=[second], format="parquet", date_column="day"
    )

    assert result.files == [second]
    assert result.frame.rows() == [(0, "u3", dt.date(2024, 3, 2))]


def test_no_files_to_read_is_an_error_not_an_index_error(hive: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(hive))):
        read(hive, sparse("user"), files=[], format="parquet", date_column="day")


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_corrupt_parquet_file_is_named(where: str, hive: Path) -> None:
    corrupt = hive / "day=2024-03-03" / "part-0.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(random.Random(0).randbytes(512))
    path = corrupt if where == "file" else hive

    with pytest.raises(LogFormatError) as caught:
        read(path, sparse("user"), format="parquet")

    assert caught.value.path == corrupt
    assert str(caught.value).startswith(f"{corrupt}: not a readable Parquet file")


def test_typed_parquet_columns_are_checked_by_row(tmp_path: Path) -> None:
    file = tmp_path / "logs.parquet"
    pl.DataFrame(
        {"label": [1, 0, 2, 1], "price": [1.5, None, 2.0, 3.0], "user": list("abcd")}
    ).write_parquet(file)
    features = dense("price") + sparse("user")

    with pytest.raises(LogFormatError) as caught:
        read(file, features, format="parquet")
    assert (caught.value.line, caught.value.column) == (3, "label")
    assert str(caught.value).endswith("expected a label of 0 or 1, got 2")

    result = read(file, features, format="parquet", on_error="skip")
    assert result.frame.rows() == [(1, 1.5, "a"), (0, None, "b"), (1, 3.0, "d")]


# --- Listing files --------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """CSV logs with hidden and underscore files and folders beside them."""
    root = tmp_path / "logs"
    (root / "sub").mkdir(parents=True)
    (root / "_tmp").mkdir()
    (root / ".cache").mkdir()
    for name, user in [("a.csv", "u1"), ("b.csv", "u2"), ("sub/d.csv", "u4")]:
        write_lines(root / name, ["label,user", f"1,{user}"])
    for name in ["_tmp/c.csv", ".cache/e.csv", ".hidden.csv", "_SUCCESS"]:
        (root / name).write_bytes(b"junk that is not a log")
    return root


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "logs.csv"

    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        list_files(missing, LogFormat.CSV)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read(missing, sparse("user"), format="csv")


def test_a_folder_skips_hidden_and_underscore_files(folder: Path) -> None:
    files = list_files(folder, LogFormat.CSV)

    assert files == [folder / "a.csv", folder / "b.csv", folder / "sub" / "d.csv"]
    result = read(folder, sparse("user"), format="csv")
    assert result.frame.rows() == [(1, "u1"), (1, "u2"), (1, "u4")]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.csv", ["a.csv", "b.csv"]),
        ("*", ["a.csv", "b.csv"]),
        ("**/*.csv", ["a.csv", "b.csv", "sub/d.csv"]),
        ("sub/*.csv", ["sub/d.csv"]),
        ("[ab].csv", ["a.csv", "b.csv"]),
    ],
)
def test_globs(folder: Path, pattern: str, expected: list[str]) -> None:
    files = list_files(folder / pattern, LogFormat.CSV)

    assert files == [folder / name for name in expected]


def test_a_glob_that_matches_nothing(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "*.tsv"))):
        list_files(folder / "*.tsv", LogFormat.TSV)


# --- Real logs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def frappe(real_data: Path) -> Path:
    return real_data / "frappe" / "valid.csv"


@pytest.fixture(scope="module")
def frappe_rows(frappe: Path) -> list[list[str]]:
    rows = csv_rows(frappe)
    assert rows[0] == ["label", *FRAPPE_FIELDS]
    return rows[1:]


def test_frappe_valid_with_crlf(frappe: Path, frappe_rows: list[list[str]]) -> None:
    assert frappe.read_bytes()[:200].count(b"\r\n") >= 2  # as published

    result = read(frappe, sparse(*FRAPPE_FIELDS), format="csv")

    frame = result.frame
    assert (frame.height, result.rows_read, result.dropped) == (57_722, 57_722, {})
    assert frame.schema["label"] == pl.Int8
    assert sorted(frame["label"].unique()) == [0, 1]
    assert frame["label"].mean() == pytest.approx(1 / 3, abs=0.005)
    assert not frame["city"].str.contains("\r", literal=True).any()
    assert frame["city"].str.contains(r"^\d+$").all()
    assert frame.rows() == [(int(row[0]), *row[1:]) for row in frappe_rows]


def test_frappe_skip_keeps_every_good_row_in_order(
    frappe_rows: list[list[str]], tmp_path: Path
) -> None:
    bad = set(range(5, len(frappe_rows), 997))
    lines = ["label," + ",".join(FRAPPE_FIELDS)]
    for i, row in enumerate(frappe_rows):
        lines.append(",".join(["2" if i in bad else row[0], *row[1:]]))
    file = write_lines(tmp_path / "valid.csv", lines, "\r\n")

    with pytest.raises(LogFormatError) as caught:
        read(file, sparse(*FRAPPE_FIELDS), format="csv")
    assert (caught.value.line, caught.value.column) == (7, "label")

    result = read(file, sparse(*FRAPPE_FIELDS), format="csv", on_error="skip")
    kept = [(int(r[0]), *r[1:]) for i, r in enumerate(frappe_rows) if i not in bad]
    assert result.frame.rows() == kept
    assert result.dropped == Counter({LABEL: len(bad)})


def test_libfm_made_from_frappe(frappe_rows: list[list[str]], tmp_path: Path) -> None:
    lines = [
        row[0] + " " + " ".join(f"{value}:1" for value in row[1:])
        for row in frappe_rows
    ]
    file = write_lines(tmp_path / "valid.libfm", lines, "\r\n")
    columns = [f"c{i}" for i in range(len(FRAPPE_FIELDS))]

    result = read(file, dense("v9") + sparse(*columns), format="libfm")

    frame = result.frame
    assert frame.height == len(frappe_rows) == 57_722
    assert frame["label"].to_list() == [int(row[0]) for row in frappe_rows]
    assert (frame["v9"] == 1.0).all()
    for i, column in enumerate(columns):
        assert frame.schema[column] == pl.Int64
        assert frame[column].to_list() == [int(row[i + 1]) for row in frappe_rows]


@pytest.fixture(scope="module")
def criteo(real_data: Path) -> Path:
    return real_data / "samples" / "criteo_sample.txt"


def criteo_expected(file: Path) -> list[tuple[Any, ...]]:
    rows = csv_rows(file)
    assert rows[0] == CRITEO_COLUMNS
    return [
        (
            int(row[0]),
            *[float(value) if value else None for value in row[1:14]],
            *[value or None for value in row[14:]],
        )
        for row in rows[1:]
    ]


CRITEO_FEATURES = dense(*CRITEO_DENSE) + sparse(*CRITEO_SPARSE)


def test_criteo_sample_as_csv_with_header(criteo: Path) -> None:
    result = read(
        criteo, CRITEO_FEATURES, format="criteo", separator=",", has_header=True
    )

    frame = result.frame
    assert frame.height == 200
    assert all(frame.schema[c] == pl.Float64 for c in CRITEO_DENSE)
    assert frame["I1"].null_count() > 0  # empty fields are missing, not zero
    assert frame.rows() == criteo_expected(criteo)


def test_criteo_sample_in_the_raw_layout(criteo: Path, tmp_path: Path) -> None:
    rows = csv_rows(criteo)[1:]
    raw = write_lines(tmp_path / "day_0", ["\t".join(row) for row in rows])

    result = read(raw, CRITEO_FEATURES, format="criteo")

    assert result.frame.height == 200
    assert result.frame.rows() == criteo_expected(criteo)


def test_avazu_sample(real_data: Path) -> None:
    file = real_data / "samples" / "avazu_sample.txt"
    rows = csv_rows(file)
    header, rows = rows[0], rows[1:]
    click, hour, site = (header.index(n) for n in ("click", "hour", "site_id"))
    features = sparse("site_id", "app_id", "hour_of_day")

    result = read(file, features, format="avazu", label="click", date_column="day")

    frame = result.frame
    assert frame.height == 100
    assert frame.schema["day"] == pl.Date
    assert frame["day"].unique().to_list() == [dt.date(2014, 10, 21)]
    assert frame["hour_of_day"].to_list() == [int(row[hour][6:]) for row in rows]
    assert frame["click"].to_list() == [int(row[click]) for row in rows]
    assert frame["site_id"].to_list() == [row[site] for row in rows]
