"""Prepare: logs -> day window -> fitted encoders -> cached arrays on disk.

A prepared folder holds, per split (`train`, `valid`, `test`), the arrays of
`EncodedColumns` as `.npy` files that training opens with memory mapping, plus
`encoders.json` and `manifest.json`. Its name is a digest of the config, the
target date and every input file's path, size and modification time, so a
changed config or file never reuses a stale cache. It is built under a
temporary name and renamed when complete: an interrupted prepare leaves nothing
that a later run could mistake for a finished one.

Known shortcoming: the window's raw columns are held in memory while encoders
are fitted (the encoded arrays are what training memory-maps). A window larger
than RAM needs the logs pre-aggregated or split into smaller windows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from likely import __version__
from likely.config import ExperimentConfig
from likely.data.encoders import EncodedColumns, FeatureEncoders
from likely.data.readers import ColumnRoles, list_files, read_logs
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
    try:
        parts = file.relative_to(root).parts[:-1]
    except ValueError:
        return None
    for part in parts:
        key, sep, value = part.partition("=")
        if sep and key == column:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                return None
    return None


def cache_key(
    config: ExperimentConfig, target: dt.date | None, files: list[Path]
) -> str:
    """Digest of everything a prepared folder depends on."""
    payload = {
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
) -> Prepared:
    """Read the logs, select the window, fit encoders and cache the arrays.

    Args:
        config: the experiment config.
        target: the evaluation day; required where the data has a date column.
        allow_missing_days: train on a window with gaps instead of refusing it.
        force: rebuild even when a finished cache for these inputs exists.

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
    key = cache_key(config, target, files)
    name = f"{data.path.stem or 'logs'}-{target or 'all'}-{key}"
    folder = Path(data.cache_dir) / name
    if (folder / MANIFEST).is_file() and not force:
        logger.info("reusing prepared data in %s (inputs unchanged)", folder)
        return Prepared(folder, json.loads((folder / MANIFEST).read_text()), True)
    return _build(config, window, files, folder)


def _split_frames(
    config: ExperimentConfig, window: DayWindow | None, files: list[Path]
) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    data = config.data
    roles = ColumnRoles.from_config(config)
    stats: dict[str, Any] = {"rows_read": 0, "rows_dropped": 0, "dropped": {}}

    def read(path: Path, files: list[Path] | None = None) -> pl.DataFrame:
        result = read_logs(data, roles, path, files)
        stats["rows_read"] += result.rows_read
        stats["rows_dropped"] += result.rows_dropped
        for reason, count in result.dropped.items():
            stats["dropped"][reason] = stats["dropped"].get(reason, 0) + count
        return result.frame

    if window is not None:
        frame = read(data.path, files)
        day = pl.col(data.date_column)
        splits = {
            "train": frame.filter(day.is_in(list(window.train_days))),
            "test": frame.filter(day == window.target_day),
        }
    else:
        splits = {"train": read(data.path)}
        if data.test_path is not None:
            splits["test"] = read(data.test_path)
    if data.holdout_fraction > 0:
        train = splits["train"]
        rng = np.random.default_rng(data.holdout_seed)
        held = rng.random(train.height) < data.holdout_fraction
        mask = pl.Series(held)
        splits["train"], splits["valid"] = train.filter(~mask), train.filter(mask)
    order = ("train", "valid", "test")
    return {name: splits[name] for name in order if name in splits}, stats


def _build(
    config: ExperimentConfig, window: DayWindow | None, files: list[Path], folder: Path
) -> Prepared:
    started = time.perf_counter()
    splits, stats = _split_frames(config, window, files)
    if splits["train"].height == 0:
        raise PrepareError("the training split is empty after reading the logs")
    encoders = FeatureEncoders(config).fit(splits["train"])

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    summary = {}
    for name, frame in splits.items():
        encoded = encoders.transform(frame)
        write_split(tmp / name, encoded)
        summary[name] = split_summary(encoded)
        logger.info(
            "%s: %d rows, CTR %.4f", name, summary[name]["rows"], summary[name]["ctr"]
        )
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
        "cross_sizes": encoders.cross_sizes(),
        "rows_read": stats["rows_read"],
        "rows_dropped": stats["rows_dropped"],
        "dropped": stats["dropped"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    logger.info("prepared data written to %s", folder)
    return Prepared(folder, manifest)


def write_split(folder: Path, encoded: EncodedColumns) -> None:
    """Each array of a split as `<name>.npy`, ready for memory mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_NAMES:
        np.save(folder / f"{name}.npy", getattr(encoded, name))
    if encoded.probability is not None:
        np.save(folder / "probability.npy", encoded.probability)


def split_summary(encoded: EncodedColumns) -> dict[str, Any]:
    """Rows, CTR and days of a split, for the manifest and `likely info`."""
    rows = len(encoded)
    days = sorted({int(d) for d in np.unique(encoded.day) if d >= 0})
    summary: dict[str, Any] = {
        "rows": rows,
        "clicks": int(encoded.label.sum()),
        "ctr": float(encoded.label.mean()) if rows else 0.0,
        "days": [str(index_day(d)) for d in days],
    }
    return summary


def load_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a prepared folder (no {MANIFEST}); run `likely prepare`"
        )
    return json.loads(path.read_text())
