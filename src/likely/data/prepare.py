"""Prepare: logs -> day window -> fitted encoders -> cached arrays on disk.

A prepared folder holds, per split (`train`, `valid`, `test`), the arrays of
`EncodedColumns` as `.npy` files that training opens with memory mapping, plus
`encoders.json` and `manifest.json`. Its name is a digest of the config, the
target date and every input file's path, size and modification time, so a
changed config or file never reuses a stale cache. It is built under a
temporary name and renamed when complete: an interrupted prepare leaves nothing
that a later run could mistake for a finished one.

Inputs are processed in pieces, twice: a first pass fits the encoders and
counts rows, a second encodes into preallocated arrays. Text is cut into pieces
of about 32 MiB; a Parquet file is one piece, so memory is bounded by the
largest Parquet file (or a few text pieces), not the window: Parquet logs
should come in files of a day or less, as day-partitioned logs do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import numpy as np
import polars as pl

from likely import __version__
from likely.config import DataConfig, ExperimentConfig, LogFormat
from likely.data.encoders import EncodedColumns, FeatureEncoders, stable_hash
from likely.data.readers import (
    ColumnRoles,
    ReadResult,
    list_files,
    partition_values,
    read_chunks,
    read_file,
    read_logs,
)
from likely.data.windows import DayWindow, select_window

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ENCODERS = "encoders.json"
ARRAY_NAMES = ("sparse", "dense", "sequence", "cross", "label", "user", "day")
_EPOCH = dt.date(1970, 1, 1)


class PrepareError(ValueError):
    """Logs and config that cannot make a training window."""


@dataclass(frozen=True)
class Prepared:
    """A finished prepared folder: its manifest and where it lies."""

    folder: Path
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def encoders(self, config: ExperimentConfig) -> FeatureEncoders:
        return FeatureEncoders.load(self.folder / ENCODERS, config)


def day_index(day: dt.date) -> int:
    """Days since 1970-01-01, the integer form of `day` in cached arrays."""
    return (day - _EPOCH).days


def index_day(index: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(index))


def _file_stamps(files: list[Path]) -> list[list[Any]]:
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _partition_day(file: Path, root: Path, column: str) -> dt.date | None:
    """The day of a file in a `column=YYYY-MM-DD` folder, else None."""
    value = partition_values(file, root).get(column)
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def cache_key(
    config: ExperimentConfig,
    target: dt.date | None,
    files: list[Path],
    extend: FeatureEncoders | None = None,
) -> str:
    """Digest of everything a prepared folder depends on."""
    base = None
    if extend is not None:
        text = json.dumps(extend.to_json(), sort_keys=True)
        base = hashlib.sha256(text.encode()).hexdigest()[:16]
    payload = {
        "extends": base,
        "config": config.fingerprint(),
        "target": str(target) if target else None,
        "files": _file_stamps(files),
        "version": __version__,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _input_files(config: ExperimentConfig) -> list[Path]:
    data = config.data
    files = list_files(data.path, data.format)
    if data.test_path is not None:
        files += list_files(data.test_path, data.format)
    return files


def _window_files(config: ExperimentConfig, files: list[Path], window: DayWindow):
    """Only the files of the window's days, where folder names give the day."""
    data = config.data
    wanted = {*window.train_days, window.target_day}
    picked = []
    for file in files:
        day = _partition_day(file, data.path, data.date_column or "")
        if day is None or day in wanted:
            picked.append(file)
    return picked


def available_days(config: ExperimentConfig) -> list[dt.date]:
    """Days present in the logs: from partition folders, else by reading dates."""
    data = config.data
    if data.date_column is None:
        return []
    files = list_files(data.path, data.format)
    days = [_partition_day(f, data.path, data.date_column) for f in files]
    if all(d is not None for d in days):
        return sorted(set(days))
    roles = ColumnRoles(data.label, data.date_column, data.date_format, (), ())
    frame = read_logs(data, roles).frame
    return sorted(frame[data.date_column].unique().drop_nulls().to_list())


def prepare(
    config: ExperimentConfig,
    target: dt.date | None = None,
    *,
    allow_missing_days: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    extend: FeatureEncoders | None = None,
) -> Prepared:
    """Read the logs, select the window, fit encoders and cache the arrays.

    Args:
        config: the experiment config.
        target: the evaluation day; required where the data has a date column.
        allow_missing_days: train on a window with gaps instead of refusing it.
        force: rebuild even when a finished cache for these inputs exists.
        progress: called as `progress(step, done, total)` after each file of each
            pass, for a progress bar.
        extend: fitted encoders (of an earlier run) to extend with the window's
            new values instead of fitting afresh: every old id keeps its
            number, so a model trained with them can grow its tables.

    Returns:
        The prepared folder, reused where the inputs are unchanged.
    """
    data = config.data
    if data.date_column is not None and target is None:
        days = available_days(config)
        raise PrepareError(
            f"the logs are split by '{data.date_column}'; give a target date "
            f"(the evaluation day), e.g. {days[-1] if days else 'YYYY-MM-DD'}"
        )
    if data.date_column is None and target is not None:
        raise PrepareError(
            "a target date was given but the config has no data.date_column; "
            "remove the target date or set date_column"
        )
    files = _input_files(config)
    window = None
    if target is not None:
        window = select_window(
            available_days(config), target, data.window_days, allow_missing_days
        )
        files = _window_files(config, files, window)
    key = cache_key(config, target, files, extend)
    name = f"{data.path.stem or 'logs'}-{target or 'all'}-{key}"
    folder = Path(data.cache_dir) / name
    if (folder / MANIFEST).is_file() and not force:
        logger.info("reusing prepared data in %s (inputs unchanged)", folder)
        return Prepared(folder, json.loads((folder / MANIFEST).read_text()), True)
    return _build(config, window, files, folder, progress or _no_progress, extend)


SPLITS = ("train", "valid", "test")
_Item = TypeVar("_Item")
Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class _Source:
    """One input file and what its rows are for."""

    file: Path
    root: Path
    role: Literal["window", "train", "test"]  # window: split by day


def _sources(
    config: ExperimentConfig, window: DayWindow | None, files: list[Path]
) -> list[_Source]:
    data = config.data
    if window is not None:
        return [_Source(f, data.path, "window") for f in files]
    sources = [
        _Source(f, data.path, "train") for f in list_files(data.path, data.format)
    ]
    if data.test_path is not None:
        tests = list_files(data.test_path, data.format)
        sources += [_Source(f, data.test_path, "test") for f in tests]
    return sources


def _chunk_splits(
    config: ExperimentConfig,
    window: DayWindow | None,
    source: _Source,
    first_row: int,
    frame: pl.DataFrame,
) -> dict[str, pl.DataFrame]:
    """Rows of one piece by split.

    The holdout draw of a row depends only on the seed and the row's position
    among all rows read, so it does not change with how the files are split
    into pieces.
    """
    data = config.data
    if source.role == "window":
        day = pl.col(data.date_column)
        parts = {
            "train": frame.filter(day.is_in(list(window.train_days))),
            "test": frame.filter(day == window.target_day),
        }
    else:
        parts = {source.role: frame}
    if "train" in parts and data.holdout_fraction > 0:
        position = np.arange(first_row, first_row + frame.height, dtype=np.uint64)
        draw = _uniform(position, data.holdout_seed)
        held = pl.Series(draw < data.holdout_fraction)
        if source.role == "window":
            in_train = frame.select(day.is_in(list(window.train_days))).to_series()
            held = held.filter(in_train)
        train = parts["train"]
        parts["train"], parts["valid"] = train.filter(~held), train.filter(held)
    return {name: part for name, part in parts.items() if part.height}


def _uniform(position: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) draw per position, the same for a position and seed."""
    key = stable_hash(
        pl.Series(position.astype(np.int64) ^ np.int64(seed * 0x9E3779B1))
    )
    return (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _SplitWriter:
    """One split's `.npy` arrays, written chunk by chunk in row order.

    Each file gets its final header up front (the row count is known from the
    first pass), then every chunk's rows are appended. Plain writes rather than
    a memory map keep the written pages out of this process's resident memory.
    """

    def __init__(self, folder: Path, rows: int):
        self.folder, self.rows, self.offset = folder, rows, 0
        self.files: dict[str, BinaryIO] = {}
        self.clicks, self.days = 0, set()

    def _open(self, encoded: EncodedColumns) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        names = list(ARRAY_NAMES)
        if encoded.probability is not None:
            names.append("probability")
        for name in names:
            part = getattr(encoded, name)
            handle = (self.folder / f"{name}.npy").open("wb")
            header = {
                "descr": np.lib.format.dtype_to_descr(part.dtype),
                "fortran_order": False,
                "shape": (self.rows, *part.shape[1:]),
            }
            np.lib.format.write_array_header_2_0(handle, header)
            self.files[name] = handle

    def write(self, encoded: EncodedColumns) -> None:
        if not self.files:
            self._open(encoded)
        for name, handle in self.files.items():
            handle.write(np.ascontiguousarray(getattr(encoded, name)).data)
        self.offset += len(encoded)
        self.clicks += int(encoded.label.sum())
        self.days.update(int(d) for d in np.unique(encoded.day) if d >= 0)

    def abandon(self) -> None:
        """Close the files of a prepare that failed; they are deleted next."""
        for handle in self.files.values():
            handle.close()
        self.files = {}

    def close(self) -> dict[str, Any]:
        """Close the files; the split's summary for the manifest."""
        for handle in self.files.values():
            handle.close()
        self.files = {}
        if self.offset != self.rows:
            raise RuntimeError(
                f"{self.folder.name}: wrote {self.offset} rows, expected {self.rows}; "
                "did an input file change during prepare?"
            )
        return {
            "rows": self.rows,
            "clicks": self.clicks,
            "ctr": self.clicks / self.rows if self.rows else 0.0,
            "days": [str(index_day(d)) for d in sorted(self.days)],
        }


def _build(
    config: ExperimentConfig,
    window: DayWindow | None,
    files: list[Path],
    folder: Path,
    progress: Progress,
    extend: FeatureEncoders | None = None,
) -> Prepared:
    """Two passes over the pieces of the inputs, a few pieces in memory at once.

    The first reads and validates every piece (a Parquet file, or about 32 MiB
    of text), counts its training rows into the encoders and each split's rows.
    Validated text pieces are kept as temporary Arrow files, their text ids as
    the codes of one category set per table (`FeatureEncoders.categorize`),
    which read back in a fraction of the time a second parse would take;
    Parquet inputs are simply read again. The second pass encodes each piece
    into preallocated arrays. In both, threads read the next piece ahead and
    (second pass) encode in halves and write, so peak memory is about two
    pieces and two pieces' encoded rows, not the window.
    """
    started = time.perf_counter()
    if extend is not None:
        encoders = FeatureEncoders.from_json(extend.to_json(), config)
    else:
        encoders = FeatureEncoders(config)
    before = encoders.vocab_sizes() if extend is not None else None

    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "_pieces").mkdir(parents=True)
    writers: dict[str, _SplitWriter] = {}
    try:
        read = _first_pass(
            config, window, files, encoders, extend is not None, tmp, progress
        )
        encoders.settle()
        writers = {
            name: _SplitWriter(tmp / name, n) for name, n in read.rows.items() if n
        }
        _second_pass(config, window, read, encoders, writers, progress)
        (tmp / "_pieces").rmdir()
        summary = {name: writer.close() for name, writer in writers.items()}
        for name, split in summary.items():
            logger.info("%s: %d rows, CTR %.4f", name, split["rows"], split["ctr"])
        encoders.save(tmp / ENCODERS)
        manifest = {
            "likely_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": config.model_dump(mode="json"),
            "config_fingerprint": config.fingerprint(),
            "files": _file_stamps(files),
            "target_date": str(window.target_day) if window else None,
            "train_days": [str(d) for d in window.train_days] if window else [],
            "later_days": [str(d) for d in window.later_days] if window else [],
            "splits": summary,
            "vocab_sizes": encoders.vocab_sizes(),
            "extended_from_sizes": before,
            "cross_sizes": encoders.cross_sizes(),
            "rows_read": read.rows_read,
            "rows_dropped": sum(read.dropped.values()),
            "dropped": dict(read.dropped),
            "seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
        for writer in writers.values():
            writer.abandon()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    logger.info("prepared data written to %s", folder)
    return Prepared(folder, manifest)


@dataclass
class _FirstPass:
    """What the first pass learnt: rows per split, and where each piece lies."""

    rows: dict[str, int]
    pieces: list[tuple[_Source, Path | None, int]]  # source, spill, first row
    rows_read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def _first_pass(
    config: ExperimentConfig,
    window: DayWindow | None,
    files: list[Path],
    encoders: FeatureEncoders,
    vocabularies_only: bool,
    tmp: Path,
    progress: Progress,
) -> _FirstPass:
    """Read and validate every piece, count the training rows into `encoders`
    (not settled; only vocabularies when extending fitted ones), and spill
    text pieces, their text ids as codes, for the second pass. A thread
    parses the next piece while this one is counted and spilled."""
    data = config.data
    sources = _sources(config, window, files)
    read = _FirstPass(dict.fromkeys(SPLITS, 0), [])
    kept = 0  # rows read and kept so far: the position of the next piece's first
    roles = ColumnRoles.from_config(config)
    text = data.format != LogFormat.PARQUET
    # Text columns become codes of one category set per table: a fraction of
    # the cost to count, spill and encode. (Cast in the reading thread.)
    pieces = _read_pieces(sources, data, roles, encoders if text else None)
    for done, source, result in _ahead(pieces):  # parse while this one counts
        if result is None:  # every piece of the source was read
            progress("reading and fitting", done, len(sources))
            continue
        read.rows_read += result.rows_read
        read.dropped.update(result.dropped)
        frame = result.frame
        spill = None
        if text:
            spill = tmp / "_pieces" / f"{len(read.pieces)}.arrow"
            encoders.physical(frame).write_ipc(spill, compression="uncompressed")
        parts = _chunk_splits(config, window, source, kept, frame)
        for name, part in parts.items():
            read.rows[name] += part.height
            if name == "train":
                encoders.observe(part, vocabularies_only=vocabularies_only)
        read.pieces.append((source, spill, kept))
        kept += frame.height
        del result, frame, parts  # before the next piece is waited for
    logger.info(
        "read %d rows from %d file(s); dropped %d",
        read.rows_read,
        len(sources),
        sum(read.dropped.values()),
    )
    for reason, count in sorted(read.dropped.items()):
        logger.warning("dropped %d row(s): %s", count, reason)
    if read.rows["train"] == 0:
        raise PrepareError("the training split is empty after reading the logs")
    return read


def _second_pass(
    config: ExperimentConfig,
    window: DayWindow | None,
    read: _FirstPass,
    encoders: FeatureEncoders,
    writers: dict[str, _SplitWriter],
    progress: Progress,
) -> None:
    """Encode every piece again, in order, into the split writers.

    Each split of a piece is encoded in two halves on two threads (much of
    encoding is numpy, which releases the GIL, and polars alone left a core
    idle); meanwhile one thread reads the next piece and another writes the
    previous piece's arrays. At most one piece waits on either side.
    """
    roles = ColumnRoles.from_config(config)
    stream = _ahead(_reread_pieces(read.pieces, config.data, roles))
    with (
        ThreadPoolExecutor(1, thread_name_prefix="likely-write") as writes,
        ThreadPoolExecutor(2, thread_name_prefix="likely-encode") as encodes,
    ):
        pending: list[Future] = []
        for index, (source, first_row, frame, coded) in enumerate(stream):
            parts = _chunk_splits(config, window, source, first_row, frame)
            halves = []
            for name, part in parts.items():
                middle = part.height // 2
                for half in (part.slice(0, middle), part.slice(middle)):
                    if half.height:
                        job = encodes.submit(encoders.transform, half, coded=coded)
                        halves.append((name, job))
            encoded = [(name, job.result()) for name, job in halves]
            for write in pending:
                write.result()
            pending = [
                writes.submit(writers[name].write, arrays) for name, arrays in encoded
            ]
            del frame, parts, halves, encoded  # before the next piece is waited for
            progress("encoding", index + 1, len(read.pieces))
        for write in pending:
            write.result()


def _ahead(items: Iterator[_Item]) -> Iterator[_Item]:
    """`items`, each next one produced in a thread while the caller works on
    the one before: parsing and reading (polars, which releases the GIL)
    overlap counting and encoding. One item at most waits."""
    with ThreadPoolExecutor(1, thread_name_prefix="likely-read") as reads:
        ahead = reads.submit(next, items, None)
        while (item := ahead.result()) is not None:
            ahead = reads.submit(next, items, None)
            yield item
            del item  # the caller's is all there is while the next is awaited


def _read_pieces(
    sources: list[_Source],
    data: DataConfig,
    roles: ColumnRoles,
    categorize: FeatureEncoders | None,
) -> Iterator[tuple[int, _Source, ReadResult | None]]:
    """`(n, source, piece)` for each validated piece of the n-th source (from 1),
    then `(n, source, None)` once its pieces are all read. With `categorize`,
    each piece's text ids come as its Categoricals."""
    for done, source in enumerate(sources, start=1):
        for result in read_chunks(source.file, data, roles, root=source.root):
            if categorize is not None:
                result.frame = categorize.categorize(result.frame)
            yield done, source, result
        yield done, source, None


def _reread_pieces(
    pieces: list[tuple[_Source, Path | None, int]],
    data: DataConfig,
    roles: ColumnRoles,
) -> Iterator[tuple[_Source, int, pl.DataFrame, bool]]:
    """The first pass's pieces again, in order, and whether their text columns
    are codes (see `FeatureEncoders.categorize`): from their spill, which is
    then deleted, or from the Parquet file itself."""
    for source, spill, first_row in pieces:
        if spill is not None:
            frame = pl.read_ipc(spill)
            spill.unlink()
            yield source, first_row, frame, True
        else:
            frame = read_file(source.file, data, roles, root=source.root).frame
            yield source, first_row, frame, False


def _remove_abandoned(folder: Path) -> None:
    """Delete half-built copies of `folder` left by prepare runs that died."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_split(folder: Path, encoded: EncodedColumns) -> None:
    """Each array of a split as `<name>.npy`, ready for memory mapping."""
    writer = _SplitWriter(folder, len(encoded))
    writer.write(encoded)
    writer.close()


def bayes_auc(split: Path) -> float | None:
    """AUC of the true click probability on a prepared split, where the data
    carries one (synthetic logs): the best any model could reach. None when
    the probability is unknown or the split has one class."""
    from likely.train.metrics import roc_auc

    path = Path(split) / "probability.npy"
    if not path.is_file():
        return None
    labels = np.load(Path(split) / "label.npy", mmap_mode="r")
    try:
        return roc_auc(np.asarray(labels), np.load(path))
    except ValueError:
        return None


def load_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a prepared folder (no {MANIFEST}); run `likely prepare`"
        )
    return json.loads(path.read_text())
