"""The online feature store: profiles, real-time behaviour and recorded events.

The service reads from it what a request needs (the user's profile, their
latest clicks, the candidates' item rows) and writes to it every impression it
served and every click it was told of. `likely.serve.export` later turns a day
of those events back into logs that `likely prepare` reads.

Two backends share one interface, chosen by URL in `open_store`:

- SQLite (`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or a
  bare path): one file, no server. WAL with `synchronous=FULL`, so a batch of
  events whose `append_events` returned survives the process being killed or
  the machine losing power.
- Redis (`redis://host:port/db`): keys under a prefix. Each batch is one
  MULTI/EXEC: no client sees half of it, and the AOF holds all of it or none.
  (Redis does not undo a command that fails inside EXEC; ours fail only if
  something else wrote a key under the prefix with another type.) A batch
  survives a crash only if the server runs with `appendonly yes` and
  `appendfsync always`, which the store checks when it opens (`durable`).

Ids arrive from JSON as int or str; the store keys them by text, so user 42
and user "42" are one user. Profiles come back with their typed values.

Example:
    >>> import tempfile, polars as pl
    >>> store = open_store(Path(tempfile.mkdtemp()) / "store.db")
    >>> users = pl.DataFrame({"user_id": [7], "region": ["north"],
    ...                       "recent_clicks": [[3, 5]]})
    >>> items = pl.DataFrame({"item_id": [3, 5, 9], "brand": [1, 1, 2]})
    >>> store.load_profiles(users, items, user_column="user_id",
    ...     item_column="item_id", behaviour_column="recent_clicks",
    ...     history_length=3, template=users.clear())
    >>> store.user("7")
    {'user_id': 7, 'region': 'north'}
    >>> store.append_events([Event("click", 7, 9, timestamp=1_800_000_000.0)])
    1
    >>> store.history(7)
    [3, 5, 9]
    >>> store.close()
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import sqlite3
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import redis

logger = logging.getLogger(__name__)

EventKind = Literal["impression", "click"]
EVENT_KINDS: tuple[str, ...] = ("impression", "click")
IdType = Literal["int", "str"]
DEFAULT_PREFIX = "likely:"
# Before any profiles are loaded the store knows no history length; this is the
# generator's, and configs/synthetic.yaml's max_length.
DEFAULT_HISTORY_LENGTH = 20
# Entries per Redis command or pipeline when loading profiles, and per LRANGE
# when reading a day's events: bounds memory, keeps round trips few.
CHUNK = 10_000
SCHEMA_VERSION = 1

# What `FeatureStore.events` returns, column by column.
EVENT_SCHEMA = pl.Schema(
    {
        "kind": pl.String,
        "user_id": pl.String,
        "item_id": pl.String,
        "timestamp": pl.Float64,
        "request_id": pl.String,
        "position": pl.Int64,
        "features": pl.String,
    }
)


@dataclass(frozen=True)
class Event:
    """One impression the service served, or one click it was told of.

    Attributes:
        kind: "impression" (the item was shown) or "click".
        user_id: the raw user id, int or str.
        item_id: the raw item id, int or str.
        timestamp: when it happened, unix seconds (UTC).
        request_id: the feed request that showed the item; a click that
            carries one labels only an impression of the same request.
        position: the item's slot in the feed, 0 first.
        features: for an impression, the raw values it was ranked with, by
            log column (user side, behaviour list, item side, context); the
            export builds the logged row from them.
    """

    kind: EventKind
    user_id: int | str
    item_id: int | str
    timestamp: float
    request_id: str | None = None
    position: int | None = None
    features: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreMeta:
    """What the latest `load_profiles` recorded about the logs.

    Attributes:
        user_column: the logs' column naming a user.
        item_column: the logs' column naming an item.
        behaviour_column: the users' list of recent clicked items, if any.
        history_length: the most items a user's history keeps.
        label_column: the logs' click label.
        date_column: the logs' day column (a Hive partition), if any.
        user_ids: how the logs type user ids, "int" or "str".
        item_ids: how the logs type item ids, "int" or "str".
        loaded_at: when the profiles were loaded, unix seconds.
        source: what the profiles were loaded from (free text, e.g. the
            recall run and when its window was read).
    """

    user_column: str
    item_column: str
    behaviour_column: str | None
    history_length: int
    label_column: str
    date_column: str | None
    user_ids: IdType
    item_ids: IdType
    loaded_at: float
    source: str = ""


@dataclass(frozen=True)
class _Record:
    """A validated event, keyed and encoded for storage."""

    day: str
    kind: str
    user_key: str
    item_key: str
    item: int | str  # typed as the logs type items, for the history
    timestamp: float
    request_id: str | None
    position: int | None
    features: str  # JSON object

    def row(self) -> tuple:
        return (
            self.kind,
            self.user_key,
            self.item_key,
            self.timestamp,
            self.request_id,
            self.position,
            self.features,
        )


class FeatureStore(ABC):
    """Profiles, real-time histories and events; see the module docstring.

    Every method is safe to call from many threads at once. A store is a
    context manager that closes itself.
    """

    #: Whether an acknowledged batch of events survives a crash.
    durable: bool

    # ------------------------------------------------------------ profiles

    def load_profiles(
        self,
        users: pl.DataFrame,
        items: pl.DataFrame,
        *,
        user_column: str,
        item_column: str,
        behaviour_column: str | None,
        history_length: int,
        template: pl.DataFrame,
        label_column: str = "label",
        date_column: str | None = None,
        replay_clicks_since: float | None = None,
        source: str = "",
    ) -> None:
        """Replace every profile with one per row of `users` and of `items`.

        A profile is its row's raw values (the behaviour column left out).
        Each loaded user's history becomes their behaviour list (its last
        `history_length` items, oldest first); users not in `users` keep the
        history they had. Events are never touched.

        Clicks already in the store are not applied again to the new lists,
        except those at or after `replay_clicks_since`, appended in the order
        they arrived: pass the end of the logs' window, so clicks the window
        has not seen stay in the histories. Clicks recorded while a Redis load
        runs may be missed; SQLite loads in one transaction.

        Args:
            users: one row per user, with `user_column`.
            items: one row per item, with `item_column`.
            user_column: the column naming a user.
            item_column: the column naming an item.
            behaviour_column: a list column of `users`, each user's recent
                clicked items oldest first; None to leave histories alone.
            history_length: the most items a history keeps (positive).
            template: no rows needed; the logs' raw columns and types, which
                the export writes.
            label_column: the logs' click label.
            date_column: the logs' day column, if they have one.
            replay_clicks_since: unix seconds; see above.
            source: what the profiles come from, kept in the meta.

        Raises:
            ValueError: a column is missing, the behaviour column is not a
                list, or `history_length` is not a positive integer.
        """
        started = time.perf_counter()
        if (
            isinstance(history_length, bool)
            or not isinstance(history_length, int)
            or history_length < 1
        ):
            raise ValueError(
                f"history_length must be a positive integer, got {history_length!r}"
            )
        _require_column(users, "users", user_column)
        _require_column(items, "items", item_column)
        drop = []
        if behaviour_column is not None:
            _require_column(users, "users", behaviour_column)
            dtype = users.schema[behaviour_column]
            if not isinstance(dtype, pl.List):
                raise ValueError(
                    f"behaviour column {behaviour_column!r} must be a list column, "
                    f"got {dtype}"
                )
            drop.append(behaviour_column)
        users = _with_ids(users, "users", user_column)
        items = _with_ids(items, "items", item_column)

        meta = StoreMeta(
            user_column=user_column,
            item_column=item_column,
            behaviour_column=behaviour_column,
            history_length=history_length,
            label_column=label_column,
            date_column=date_column,
            user_ids=_id_type(template, users, user_column),
            item_ids=_id_type(template, items, item_column),
            loaded_at=time.time(),
            source=source,
        )
        seeds: dict[str, list] | None = None
        if behaviour_column is not None:
            lists = users[behaviour_column].list.tail(history_length).to_list()
            keys = users[user_column].cast(pl.String).to_list()
            # polars hands back plain Python values already.
            seeds = {key: clicks or [] for key, clicks in zip(keys, lists, strict=True)}
        buffer = io.BytesIO()
        template.clear().write_parquet(buffer)
        self._write_profiles(
            _profile_rows(users, user_column, drop),
            _profile_rows(items, item_column, []),
            seeds,
            meta,
            buffer.getvalue(),
            replay_clicks_since,
        )
        logger.info(
            "loaded %d user and %d item profiles into the feature store in %.1fs",
            users.height,
            items.height,
            time.perf_counter() - started,
        )

    @abstractmethod
    def _write_profiles(
        self,
        users: list[tuple[str, str]],
        items: list[tuple[str, str]],
        seeds: dict[str, list] | None,
        meta: StoreMeta,
        template: bytes,
        replay_since: float | None,
    ) -> None:
        """Store (key, profile JSON) pairs, the seeded histories and the meta."""

    @abstractmethod
    def meta(self) -> StoreMeta | None:
        """What the latest load recorded, or None before any load."""

    @abstractmethod
    def template(self) -> pl.DataFrame | None:
        """The logs' columns and types (no rows), or None before any load."""

    def has_profiles(self) -> bool:
        """Whether profiles have been loaded (a load has completed)."""
        return self.meta() is not None

    def user(self, user_id: int | str) -> dict[str, Any] | None:
        """A user's profile, or None for a user not loaded."""
        return self.users([user_id])[0]

    def item(self, item_id: int | str) -> dict[str, Any] | None:
        """An item's profile, or None for an item not loaded."""
        return self.items([item_id])[0]

    def users(self, user_ids: Sequence[int | str]) -> list[dict[str, Any] | None]:
        """Profiles of many users in one round trip, aligned with the ids."""
        return self._profiles("users", [_key(i) for i in user_ids])

    def items(self, item_ids: Sequence[int | str]) -> list[dict[str, Any] | None]:
        """Profiles of many items in one round trip, aligned with the ids."""
        return self._profiles("items", [_key(i) for i in item_ids])

    @abstractmethod
    def _profiles(self, table: str, keys: list[str]) -> list[dict[str, Any] | None]:
        """Profiles of `table` ("users" or "items") by key, None where absent."""

    @abstractmethod
    def num_users(self) -> int:
        """Users with a profile."""

    @abstractmethod
    def num_items(self) -> int:
        """Items with a profile."""

    @abstractmethod
    def sample_users(self, n: int) -> list[int | str]:
        """Up to `n` user ids drawn at random from the profiles."""

    # ----------------------------------------------------------- behaviour

    def history(self, user_id: int | str, n: int | None = None) -> list:
        """The user's latest clicked items, oldest first.

        Args:
            user_id: the raw user id.
            n: the most items to return; at most the history length anyway.

        Returns:
            Item ids typed as the logs type them; empty for an unknown user.
        """
        meta = self.meta()
        limit = meta.history_length if meta else DEFAULT_HISTORY_LENGTH
        if n is not None:
            limit = min(limit, n)
        if limit <= 0:
            return []
        return self._history(_key(user_id))[-limit:]

    @abstractmethod
    def _history(self, user_key: str) -> list:
        """The stored history of a user, oldest first."""

    # -------------------------------------------------------------- events

    def append_events(self, events: Sequence[Event]) -> int:
        """Store a batch of events atomically and durably (see `durable`).

        The batch is acknowledged only once this returns. A click also appends
        its item to the user's history, trimmed to the history length, in the
        same transaction. Once profiles are loaded, ids are checked against
        the logs' types: an item id "12" is stored as 12 when the logs' item
        column is an integer.

        Args:
            events: the batch, in the order the events happened.

        Returns:
            The number of events stored.

        Raises:
            ValueError: an event has an unknown kind, a missing or mistyped
                id, a timestamp that is not a finite number, or features JSON
                cannot hold; the message names the field and the event's
                index. Nothing of the batch is stored then.
        """
        meta = self.meta()
        records = _records(events, meta)
        if records:
            length = meta.history_length if meta else DEFAULT_HISTORY_LENGTH
            self._append(records, length)
        return len(records)

    @abstractmethod
    def _append(self, records: list[_Record], history_length: int) -> None:
        """Store validated events and their clicks' history updates at once."""

    @abstractmethod
    def events(self, day: dt.date) -> pl.DataFrame:
        """Every event whose timestamp falls on `day` (UTC), in arrival order.

        Returns:
            Columns as `EVENT_SCHEMA`: kind, user_id and item_id (the ids as
            text, as keyed), timestamp (unix seconds), request_id, position,
            and features (a JSON object as text).
        """

    @abstractmethod
    def count_events(self) -> int:
        """Events stored, all days."""

    @abstractmethod
    def _clicks_since(self, since: float) -> list[tuple[str, str]]:
        """(user key, item key) of the clicks at or after `since`, in arrival
        order (on Redis: day by day, each day in arrival order)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the store is unusable afterwards."""

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(
    url: str | Path, *, prefix: str = DEFAULT_PREFIX, create: bool = True
) -> FeatureStore:
    """Open the feature store a URL names.

    Args:
        url: `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`
            (the SQLAlchemy convention: the path follows the third slash), a
            bare filesystem path (SQLite), or `redis://host:port/db`
            (`rediss://` for TLS).
        prefix: Redis only: the prefix of every key, so stores can share a
            database.
        create: SQLite only: create the file (and its folder) if missing;
            when False a missing file raises FileNotFoundError.

    Raises:
        ValueError: an unknown scheme, or a file that is not a feature store.
        FileNotFoundError: `create` is False and the SQLite file is missing.
        ConnectionError: the Redis server cannot be reached.
    """
    text = str(url)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return SQLiteStore(Path(text), create=create)
    if scheme == "sqlite":
        if not rest.startswith("/") or not rest[1:]:
            raise ValueError(
                f"feature store URL {text!r} has no path; use sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
        return SQLiteStore(Path(rest[1:]), create=create)
    if scheme in ("redis", "rediss"):
        return RedisStore(text, prefix=prefix)
    raise ValueError(
        f"unknown feature store URL {text!r}; use sqlite:///path/to/file.db, a bare "
        "file path, or redis://host:port/db"
    )


# ----------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """A value JSON can hold: numpy and polars scalars become Python ones, NaN
    and infinity None, dates ISO text; lists and dicts are converted inside."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray | pl.Series):
        value = value.to_list() if isinstance(value, pl.Series) else value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def _key(value: Any) -> str:
    """The text an id is keyed by: 42 and "42" are one id."""
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"an id must be an int or a str, got {value!r}")
    return str(value)


def _require_column(frame: pl.DataFrame, what: str, column: str) -> None:
    if column not in frame.columns:
        raise ValueError(
            f"the {what} frame has no column {column!r}; it has {frame.columns}"
        )


def _with_ids(frame: pl.DataFrame, what: str, column: str) -> pl.DataFrame:
    """Rows with an id; rows without one are dropped and counted."""
    missing = frame[column].null_count()
    if missing:
        logger.warning("dropped %d %s row(s) without a %s", missing, what, column)
        frame = frame.filter(pl.col(column).is_not_null())
    return frame


def _id_type(template: pl.DataFrame, frame: pl.DataFrame, column: str) -> IdType:
    """How the logs type an id column: the template's type, else the frame's."""
    dtype = (template if column in template.columns else frame).schema[column]
    return "int" if dtype.is_integer() else "str"


def _profile_rows(
    frame: pl.DataFrame, column: str, drop: list[str]
) -> list[tuple[str, str]]:
    """(key, profile JSON) per row; polars writes the JSON (NaN as null)."""
    keys = frame[column].cast(pl.String).to_list()
    profiles = frame.drop(drop).write_ndjson().splitlines()
    return list(zip(keys, profiles, strict=True))


def _typed(key: str, id_type: IdType | None) -> int | str:
    """An id key back in the logs' type."""
    return int(key) if id_type == "int" else key


def _event_id(index: int, name: str, value: Any, id_type: IdType | None) -> Any:
    value = _plain(value)
    if value is None or value == "":
        raise ValueError(f"event {index}: {name} is missing")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"event {index}: {name} must be an int or a str, got {value!r}"
        )
    if id_type == "int" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(
                f"event {index}: {name} {value!r} is not an integer, as the logs' "
                "ids are"
            ) from None
    if id_type == "str":
        return str(value)
    return value


def _records(events: Sequence[Event], meta: StoreMeta | None) -> list[_Record]:
    """Validate a batch; the first bad event raises, naming field and index."""
    records = []
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValueError(
                f"event {index}: expected an Event, got {type(event).__name__}"
            )
        if event.kind not in EVENT_KINDS:
            raise ValueError(
                f"event {index}: kind must be one of {', '.join(EVENT_KINDS)}, "
                f"got {event.kind!r}"
            )
        user = _event_id(index, "user_id", event.user_id, meta and meta.user_ids)
        item = _event_id(index, "item_id", event.item_id, meta and meta.item_ids)
        timestamp = _plain(event.timestamp)
        if (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int | float)
            or not math.isfinite(timestamp)
        ):
            raise ValueError(
                f"event {index}: timestamp must be a finite number of unix seconds, "
                f"got {event.timestamp!r}"
            )
        try:
            day = dt.datetime.fromtimestamp(timestamp, dt.UTC).date()
        except (OverflowError, OSError, ValueError):
            raise ValueError(
                f"event {index}: timestamp {timestamp!r} is out of range"
            ) from None
        if event.request_id is not None and not isinstance(event.request_id, str):
            raise ValueError(
                f"event {index}: request_id must be a str or None, "
                f"got {event.request_id!r}"
            )
        position = _plain(event.position)
        if position is not None and (
            isinstance(position, bool) or not isinstance(position, int) or position < 0
        ):
            raise ValueError(
                f"event {index}: position must be a non-negative integer or None, "
                f"got {event.position!r}"
            )
        if not isinstance(event.features, Mapping):
            raise ValueError(
                f"event {index}: features must be a dict, got "
                f"{type(event.features).__name__}"
            )
        try:
            features = json.dumps(_plain(event.features), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"event {index}: features cannot be stored as JSON: {error}"
            ) from None
        records.append(
            _Record(
                day=day.isoformat(),
                kind=event.kind,
                user_key=str(user),
                item_key=str(item),
                item=item,
                timestamp=float(timestamp),
                request_id=event.request_id,
                position=position,
                features=features,
            )
        )
    return records


def _replayed(
    seeds: dict[str, list],
    clicks: list[tuple[str, str]],
    meta: StoreMeta,
) -> dict[str, list]:
    """Seeds with the clicks the window has not seen appended, trimmed."""
    if not clicks:
        return seeds
    grown = {key: list(items) for key, items in seeds.items()}
    for user_key, item_key in clicks:
        if user_key in grown:
            grown[user_key].append(_typed(item_key, meta.item_ids))
    length = meta.history_length
    logger.info("replayed %d recorded click(s) onto the loaded histories", len(clicks))
    return {key: items[-length:] for key, items in grown.items()}


def _meta_from_json(text: str | bytes | None) -> StoreMeta | None:
    return None if text is None else StoreMeta(**json.loads(text))


def _template_from_bytes(data: bytes | None) -> pl.DataFrame | None:
    return None if data is None else pl.read_parquet(io.BytesIO(data))


def _chunks(rows: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# ------------------------------------------------------------------- SQLite


_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (key TEXT PRIMARY KEY, profile TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, profile TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS histories (
    user_key TEXT PRIMARY KEY, items TEXT NOT NULL
) WITHOUT ROWID;
-- seq is the rowid: events are never deleted, so it grows in arrival order.
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_key TEXT NOT NULL,
    item_key TEXT NOT NULL,
    timestamp REAL NOT NULL,
    request_id TEXT,
    position INTEGER,
    features TEXT NOT NULL
);
-- A day's events in arrival order come straight off this index (it ends in seq).
CREATE INDEX IF NOT EXISTS events_by_day ON events (day);
"""
_UPSERT_HISTORY = (
    "INSERT INTO histories (user_key, items) VALUES (?, ?) "
    "ON CONFLICT (user_key) DO UPDATE SET items = excluded.items"
)
# Many keys as one JSON parameter: one statement however many ids, with no
# limit on bound variables.
_IN_KEYS = "IN (SELECT value FROM json_each(?))"


class SQLiteStore(FeatureStore):
    """The feature store in one SQLite file (WAL, `synchronous=FULL`).

    Args:
        path: the database file.
        create: create the file and its folder if missing.
    """

    durable = True

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no feature store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two connections shared by all threads, each behind a lock, not one
        # per thread: the service's thread pool retires idle threads, and
        # their connections would pile up unclosed. Writes go through one;
        # reads through the other, so a lookup never waits for a commit's
        # fsync (WAL lets a reader see the last commit while a writer works).
        # Other processes coordinate through WAL and the busy timeout.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        try:
            self._set_up()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ValueError(f"{self.path} is not a feature store: {error}") from None
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )

    def _set_up(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"schema version {version}, this code reads {SCHEMA_VERSION}"
            )
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            logger.warning("%s: SQLite refused WAL mode (%s)", self.path, mode)
        # FULL syncs the WAL at every commit: a returned commit survives a
        # power cut, not only a killed process.
        db.execute("PRAGMA synchronous=FULL")
        with self._transaction() as cursor:
            for statement in _TABLES.split(";"):
                if statement.strip():
                    cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at the start, so two writers never
        # both read and then fail to upgrade.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, parameters).fetchall()

    def _write_profiles(self, users, items, seeds, meta, template, replay_since):
        with self._transaction() as db:
            for table, rows in (("users", users), ("items", items)):
                db.execute(f"DELETE FROM {table}")
                db.executemany(
                    f"INSERT OR REPLACE INTO {table} (key, profile) VALUES (?, ?)", rows
                )
            if seeds is not None:
                if replay_since is not None:
                    seeds = _replayed(seeds, self._clicks_since(replay_since), meta)
                db.executemany(
                    _UPSERT_HISTORY,
                    [(key, json.dumps(items)) for key, items in seeds.items()],
                )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("meta", json.dumps(asdict(meta))), ("template", template)],
            )

    def meta(self) -> StoreMeta | None:
        rows = self._read("SELECT value FROM meta WHERE key = 'meta'")
        return _meta_from_json(rows[0][0] if rows else None)

    def template(self) -> pl.DataFrame | None:
        rows = self._read("SELECT value FROM meta WHERE key = 'template'")
        return _template_from_bytes(rows[0][0] if rows else None)

    def _profiles(self, table, keys):
        if table not in ("users", "items"):
            raise ValueError(f"unknown profile table {table!r}")
        found = dict(
            self._read(
                f"SELECT key, profile FROM {table} WHERE key {_IN_KEYS}",
                (json.dumps(keys),),
            )
        )
        return [json.loads(found[k]) if k in found else None for k in keys]

    def num_users(self) -> int:
        return self._read("SELECT COUNT(*) FROM users")[0][0]

    def num_items(self) -> int:
        return self._read("SELECT COUNT(*) FROM items")[0][0]

    def sample_users(self, n: int) -> list[int | str]:
        meta = self.meta()
        if meta is None or n <= 0:
            return []
        rows = self._read(
            "SELECT profile FROM users ORDER BY random() LIMIT ?", (int(n),)
        )
        return [json.loads(profile)[meta.user_column] for (profile,) in rows]

    def _history(self, user_key):
        rows = self._read("SELECT items FROM histories WHERE user_key = ?", (user_key,))
        return json.loads(rows[0][0]) if rows else []

    def _append(self, records, history_length):
        clicks = [(r.user_key, r.item) for r in records if r.kind == "click"]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO events (day, kind, user_key, item_key, timestamp, "
                "request_id, position, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.day, *r.row()) for r in records],
            )
            if not clicks:
                return
            keys = list(dict.fromkeys(user for user, _ in clicks))
            stored = dict(
                db.execute(
                    f"SELECT user_key, items FROM histories WHERE user_key {_IN_KEYS}",
                    (json.dumps(keys),),
                ).fetchall()
            )
            histories = {k: json.loads(stored[k]) if k in stored else [] for k in keys}
            for user, item in clicks:
                histories[user].append(item)
            db.executemany(
                _UPSERT_HISTORY,
                [(k, json.dumps(v[-history_length:])) for k, v in histories.items()],
            )

    def events(self, day: dt.date) -> pl.DataFrame:
        rows = self._read(
            "SELECT kind, user_key, item_key, timestamp, request_id, position, "
            "features FROM events WHERE day = ? ORDER BY seq",
            (day.isoformat(),),
        )
        return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")

    def count_events(self) -> int:
        return self._read("SELECT COUNT(*) FROM events")[0][0]

    def _clicks_since(self, since):
        # Runs inside the load's transaction (the lock is re-entrant).
        first_day = dt.datetime.fromtimestamp(since, dt.UTC).date().isoformat()
        return self._read(
            "SELECT user_key, item_key FROM events WHERE day >= ? AND kind = 'click' "
            "AND timestamp >= ? ORDER BY seq",
            (first_day, float(since)),
        )

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


# -------------------------------------------------------------------- Redis


class RedisStore(FeatureStore):
    """The feature store in Redis, every key under `prefix`.

    Keys: `users` and `items` (hashes of key -> profile JSON), `meta` (hash),
    `history:<user>` (a list of item JSON, oldest first), `events:<day>` (a
    list of event JSON in arrival order), `event_days` (set), `event_count`.

    Args:
        url: `redis://host:port/db`.
        prefix: the prefix of every key.

    Raises:
        ConnectionError: the server cannot be reached.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX):
        self.url, self.prefix = _redacted(url), prefix
        try:
            # A connect timeout, so a host that drops packets fails the open
            # rather than hanging it; commands themselves may take long.
            self.client = redis.Redis.from_url(
                url, socket_connect_timeout=5.0, health_check_interval=30
            )
            self.client.ping()
        except (redis.exceptions.RedisError, ValueError) as error:
            raise ConnectionError(
                f"cannot reach Redis at {self.url}: {error}"
            ) from None
        self.durable = self._check_durability()

    def _check_durability(self) -> bool:
        lost = (
            "acknowledged events can be lost on a crash unless the server runs with "
            "appendonly yes and appendfsync always"
        )
        try:
            settings = {
                **self.client.config_get("appendonly"),
                **self.client.config_get("appendfsync"),
            }
        except redis.exceptions.ResponseError as error:
            logger.warning(
                "cannot read the persistence settings of Redis at %s (%s); %s",
                self.url,
                error,
                lost,
            )
            return False
        settings = {_text(k): _text(v) for k, v in settings.items()}
        appendonly = settings.get("appendonly")
        appendfsync = settings.get("appendfsync")
        durable = appendonly == "yes" and appendfsync == "always"
        if not durable:
            logger.warning(
                "Redis at %s has appendonly %s, appendfsync %s: %s",
                self.url,
                appendonly,
                appendfsync,
                lost,
            )
        return durable

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _write_profiles(self, users, items, seeds, meta, template, replay_since):
        # Profiles go to side keys and are renamed over the live ones at the
        # end, so readers see the old profiles or the new, never a mixture.
        loading = {table: self._k(table, "loading") for table in ("users", "items")}
        self.client.delete(*loading.values())
        for table, rows in (("users", users), ("items", items)):
            for chunk in _chunks(rows):
                self.client.hset(loading[table], mapping=dict(chunk))
        if seeds is not None:
            if replay_since is not None:
                seeds = _replayed(seeds, self._clicks_since(replay_since), meta)
            # Histories are replaced user by user, not at once: a request
            # during a load may see a new history beside an old profile.
            for chunk in _chunks(list(seeds.items())):
                pipe = self.client.pipeline(transaction=False)
                for key, clicks in chunk:
                    pipe.delete(self._k("history", key))
                    if clicks:
                        pipe.rpush(self._k("history", key), *map(_item_json, clicks))
                pipe.execute()
        pipe = self.client.pipeline(transaction=True)
        for table, rows in (("users", users), ("items", items)):
            if rows:
                pipe.rename(loading[table], self._k(table))
            else:
                pipe.delete(self._k(table))
        pipe.hset(
            self._k("meta"),
            mapping={"meta": json.dumps(asdict(meta)), "template": template},
        )
        pipe.execute()

    def meta(self) -> StoreMeta | None:
        return _meta_from_json(self.client.hget(self._k("meta"), "meta"))

    def template(self) -> pl.DataFrame | None:
        return _template_from_bytes(self.client.hget(self._k("meta"), "template"))

    def _profiles(self, table, keys):
        if not keys:
            return []
        found = self.client.hmget(self._k(table), keys)
        return [None if value is None else json.loads(value) for value in found]

    def num_users(self) -> int:
        return int(self.client.hlen(self._k("users")))

    def num_items(self) -> int:
        return int(self.client.hlen(self._k("items")))

    def sample_users(self, n: int) -> list[int | str]:
        meta = self.meta()
        if meta is None or n <= 0:
            return []
        keys = self.client.hrandfield(self._k("users"), int(n)) or []
        return [
            profile[meta.user_column]
            for profile in self._profiles("users", [_text(k) for k in keys])
            if profile is not None
        ]

    def _history(self, user_key):
        return [
            json.loads(v)
            for v in self.client.lrange(self._k("history", user_key), 0, -1)
        ]

    def _append(self, records, history_length):
        by_day: dict[str, list[str]] = {}
        for record in records:
            by_day.setdefault(record.day, []).append(json.dumps(record.row()))
        pipe = self.client.pipeline(transaction=True)
        for day, values in by_day.items():
            pipe.rpush(self._k("events", day), *values)
        pipe.sadd(self._k("event_days"), *by_day)
        pipe.incrby(self._k("event_count"), len(records))
        clicked = []
        for record in records:
            if record.kind == "click":
                key = self._k("history", record.user_key)
                pipe.rpush(key, _item_json(record.item))
                clicked.append(key)
        for key in dict.fromkeys(clicked):
            pipe.ltrim(key, -history_length, -1)
        # With appendfsync always, EXEC is answered only after the AOF holds
        # the whole transaction on disk.
        pipe.execute()

    def _day_rows(self, day: str) -> Iterator[list]:
        key, start = self._k("events", day), 0
        while values := self.client.lrange(key, start, start + CHUNK - 1):
            yield from (json.loads(value) for value in values)
            start += len(values)

    def events(self, day: dt.date) -> pl.DataFrame:
        rows = list(self._day_rows(day.isoformat()))
        return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")

    def count_events(self) -> int:
        return int(self.client.get(self._k("event_count")) or 0)

    def _clicks_since(self, since):
        first_day = dt.datetime.fromtimestamp(since, dt.UTC).date().isoformat()
        days = sorted(_text(d) for d in self.client.smembers(self._k("event_days")))
        return [
            (row[1], row[2])
            for day in days
            if day >= first_day
            for row in self._day_rows(day)
            if row[0] == "click" and row[3] >= since
        ]

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"


def _item_json(item: int | str) -> str:
    # An int's JSON is its decimal text; this skips json.dumps for the common
    # case, which a load calls once per history item.
    return str(item) if type(item) is int else json.dumps(item)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
