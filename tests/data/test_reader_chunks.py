"""Reading text in pieces must give exactly what one read gives."""

from collections import Counter

import polars as pl
import pytest

from likely.config import parse_config
from likely.data.readers import ColumnRoles, LogFormatError, read_chunks, read_file


def config(path, **data):
    return parse_config(
        {
            "data": {"path": str(path), "format": "csv", **data},
            "features": [
                {"name": "item", "kind": "sparse"},
                {"name": "price", "kind": "dense"},
            ],
        }
    )


def write(path, rows, eol="\n", header=True):
    lines = (["label,item,price"] if header else []) + rows
    path.write_bytes(eol.join(lines).encode() + eol.encode())
    return path


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("chunk_bytes", [7, 40, 1 << 20])
def test_pieces_equal_one_read(tmp_path, eol, chunk_bytes):
    rows = [f"{i % 2},item{i % 7},{i * 0.5}" for i in range(300)]
    path = write(tmp_path / "logs.csv", rows, eol)
    cfg = config(path)
    roles = ColumnRoles.from_config(cfg)
    pieces = list(read_chunks(path, cfg.data, roles, chunk_bytes=chunk_bytes))
    if chunk_bytes < 100:
        assert len(pieces) > 5
    joined = pl.concat([p.frame for p in pieces])
    assert joined.equals(read_file(path, cfg.data, roles).frame)
    assert joined.height == 300 and joined["price"][299] == 149.5
    assert joined["item"][8] == "item1"
    assert sum(p.rows_read for p in pieces) == 300


@pytest.mark.parametrize("chunk_bytes", [16, 64, 1 << 20])
def test_line_numbers_count_from_the_file_start(tmp_path, chunk_bytes):
    rows = [f"0,a,{i}" for i in range(200)]
    rows[150] = "0,a,notanumber"
    path = write(tmp_path / "logs.csv", rows)
    cfg = config(path)
    with pytest.raises(LogFormatError) as caught:
        list(
            read_chunks(
                path, cfg.data, ColumnRoles.from_config(cfg), chunk_bytes=chunk_bytes
            )
        )
    assert caught.value.line == 152 and caught.value.column == "price"
    assert "'notanumber'" in str(caught.value)
    rows[150] = "0,a"
    write(path, rows)
    with pytest.raises(LogFormatError, match="line 152: expected 3 fields, found 2"):
        list(
            read_chunks(
                path, cfg.data, ColumnRoles.from_config(cfg), chunk_bytes=chunk_bytes
            )
        )


def test_skip_in_pieces_drops_each_bad_row_once(tmp_path):
    rows = [f"{i % 2},a,{i}" for i in range(100)]
    rows[10], rows[60], rows[61] = "5,a,1", "0,a", "0,a,x"
    path = write(tmp_path / "logs.csv", rows)
    cfg = config(path, on_error="skip")
    pieces = list(
        read_chunks(path, cfg.data, ColumnRoles.from_config(cfg), chunk_bytes=50)
    )
    kept = pl.concat([p.frame for p in pieces])
    assert kept.height == 97 and sum(p.rows_read for p in pieces) == 100
    dropped = Counter()
    for piece in pieces:
        dropped.update(piece.dropped)
    assert sum(dropped.values()) == 3


def test_header_only_and_headerless_pieces(tmp_path):
    path = write(tmp_path / "logs.csv", [])
    cfg = config(path)
    with pytest.raises(LogFormatError, match="no data rows"):
        list(read_chunks(path, cfg.data, ColumnRoles.from_config(cfg), chunk_bytes=4))
    path = write(tmp_path / "raw.csv", [f"1,b,{i}" for i in range(50)], header=False)
    cfg = config(path, has_header=False, column_names=["label", "item", "price"])
    frame = pl.concat(
        p.frame
        for p in read_chunks(
            path, cfg.data, ColumnRoles.from_config(cfg), chunk_bytes=30
        )
    )
    assert frame.height == 50 and frame["price"].to_list() == [
        float(i) for i in range(50)
    ]
