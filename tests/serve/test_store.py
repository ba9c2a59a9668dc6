"""The feature store, the same tests on both backends (SQLite and Redis)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis

from likely.serve import store as store_module
from likely.serve.store import EVENT_SCHEMA, Event, SQLiteStore, open_store

DAY = dt.date(2026, 11, 9)
MIDNIGHT = dt.datetime(2026, 11, 9, tzinfo=dt.UTC).timestamp()
HISTORY_LENGTH = 3


def users_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [1, 2, 42, 7],
            "user_type": ["business", "consumer", None, "consumer"],
            "purchasing_power": pl.Series(
                [1.5, float("nan"), 2.25, 0.5], dtype=pl.Float32
            ),
            "recent_clicks": [[10, 11], [], None, [10, 11, 12, 13, 14]],
        }
    )


def items_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [10, 11, 12, 13, 14],
            "brand": [1, 2, 3, 4, 5],
            "price": [9.5, 1.0, 2.0, 3.0, 4.0],
            "tags": [["a"], [], ["b", "c"], None, ["d"]],
        }
    )


def load(store, users=None, **options) -> None:
    users = users_frame() if users is None else users
    items = items_frame()
    store.load_profiles(
        users,
        items,
        user_column="user_id",
        item_column="item_id",
        behaviour_column="recent_clicks",
        history_length=options.pop("history_length", HISTORY_LENGTH),
        template=pl.concat(
            [users.drop("recent_clicks").clear(), items.clear()], how="horizontal"
        ).with_columns(pl.lit(None, pl.Int8).alias("label")),
        **options,
    )


def click(user, item, seconds=0.0, **fields) -> Event:
    return Event("click", user, item, MIDNIGHT + seconds, **fields)


def shown(user, item, seconds=0.0, **fields) -> Event:
    return Event("impression", user, item, MIDNIGHT + seconds, **fields)


# ------------------------------------------------------------------ profiles


def test_profiles_round_trip_with_their_types(store):
    assert not store.has_profiles()
    assert store.user(1) is None
    load(store)
    assert store.has_profiles()
    assert store.user(1) == {
        "user_id": 1,
        "user_type": "business",
        "purchasing_power": 1.5,
    }
    # NaN and null both come back as None; the behaviour list is not a profile.
    assert store.user(2)["purchasing_power"] is None
    assert store.user(42)["user_type"] is None
    assert store.item(12) == {
        "item_id": 12,
        "brand": 3,
        "price": 2.0,
        "tags": ["b", "c"],
    }
    assert store.item(13)["tags"] is None
    assert (store.num_users(), store.num_items()) == (4, 5)
    meta = store.meta()
    assert (meta.user_column, meta.item_column, meta.history_length) == (
        "user_id",
        "item_id",
        HISTORY_LENGTH,
    )
    assert (meta.user_ids, meta.item_ids, meta.label_column) == ("int", "int", "label")
    template = store.template()
    assert template.height == 0
    assert template.schema["purchasing_power"] == pl.Float32
    assert template.schema["label"] == pl.Int8


def test_ids_are_one_whether_int_or_text(store):
    load(store)
    assert store.user(42) == store.user("42") == store.user(np.int64(42))
    assert store.user(42)["user_id"] == 42
    store.append_events([click("42", "12"), click(42, np.int64(13))])
    # Item ids are typed as the logs type them, whatever the event carried.
    assert store.history(42) == store.history("42") == [12, 13]


def test_batch_lookups_are_aligned_and_unknown_ids_are_none(store):
    load(store)
    found = store.items(list(range(1000)))
    assert len(found) == 1000
    assert [i for i, item in enumerate(found) if item is not None] == [
        10,
        11,
        12,
        13,
        14,
    ]
    assert found[11]["brand"] == 2
    assert store.users([7, "missing", 1]) == [store.user(7), None, store.user(1)]
    assert store.users([]) == []
    assert store.user("nobody") is None
    assert store.history("nobody") == []


def test_sample_users_are_loaded_ids(store):
    assert store.sample_users(3) == []
    load(store)
    sample = store.sample_users(3)
    assert len(sample) == len(set(sample)) == 3
    assert set(sample) <= {1, 2, 42, 7}
    assert sorted(store.sample_users(10)) == [1, 2, 7, 42]


def test_a_load_rejects_bad_columns(store):
    with pytest.raises(ValueError, match="'uid'"):
        store.load_profiles(
            users_frame(),
            items_frame(),
            user_column="uid",
            item_column="item_id",
            behaviour_column=None,
            history_length=3,
            template=pl.DataFrame(),
        )
    with pytest.raises(ValueError, match="'user_type' must be a list column"):
        store.load_profiles(
            users_frame(),
            items_frame(),
            user_column="user_id",
            item_column="item_id",
            behaviour_column="user_type",
            history_length=3,
            template=pl.DataFrame(),
        )
    with pytest.raises(ValueError, match="history_length must be a positive integer"):
        load(store, history_length=0)
    assert not store.has_profiles()


# ----------------------------------------------------------------- behaviour


def test_history_is_seeded_from_the_behaviour_list_oldest_first(store):
    load(store)
    assert store.history(1) == [10, 11]
    assert store.history(2) == []
    assert store.history(42) == []
    # Longer lists keep their latest items.
    assert store.history(7) == [12, 13, 14]
    assert store.history(7, n=2) == [13, 14]
    assert store.history(7, n=0) == []


def test_clicks_append_and_trim_impressions_do_not(store):
    load(store)
    store.append_events([shown(1, 12), shown(1, 13)])
    assert store.history(1) == [10, 11]
    assert store.append_events([click(1, 12, 5), click(1, 13, 6), shown(1, 14, 7)]) == 3
    assert store.history(1) == [11, 12, 13]
    store.append_events([click(1, 14, 8)])
    assert store.history(1) == [12, 13, 14]


def test_clicks_before_any_load_still_make_a_history(store):
    store.append_events([click("u", "a"), click("u", "b")])
    assert store.history("u") == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Event("view", 1, 10, MIDNIGHT), "event 2: kind must be one of"),
        (Event("click", None, 10, MIDNIGHT), "event 2: user_id is missing"),
        (Event("click", 1, "", MIDNIGHT), "event 2: item_id is missing"),
        (Event("click", 1, "x12", MIDNIGHT), "event 2: item_id 'x12' is not an int"),
        (Event("click", 1, 10, float("nan")), "event 2: timestamp must be a finite"),
        (Event("click", 1, 10, "today"), "event 2: timestamp must be a finite"),
        (Event("click", 1, 10, MIDNIGHT, position=-1), "event 2: position"),
        (Event("click", 1, 10, MIDNIGHT, request_id=5), "event 2: request_id"),
        (
            Event("impression", 1, 10, MIDNIGHT, features={"x": object()}),
            "event 2: features",
        ),
    ],
)
def test_a_bad_event_rejects_its_whole_batch(store, bad, message):
    load(store)
    store.append_events([shown(2, 10)])
    with pytest.raises(ValueError, match=message):
        store.append_events([click(1, 12), shown(2, 11), bad, click(1, 13)])
    assert store.count_events() == 1
    assert store.history(1) == [10, 11]
    assert store.events(DAY).height == 1


def test_sqlite_rolls_back_a_batch_that_fails_while_written(tmp_path, monkeypatch):
    # The events are inserted before the history update fails, and must go.
    with open_store(tmp_path / "store.db") as store:
        load(store)
        monkeypatch.setattr(
            store_module, "_UPSERT_HISTORY", "INSERT INTO nowhere VALUES (?, ?)"
        )
        with pytest.raises(sqlite3.OperationalError, match="nowhere"):
            store.append_events([shown(1, 12), click(1, 12)])
        assert store.count_events() == 0
        assert store.history(1) == [10, 11]
        monkeypatch.undo()
        assert store.append_events([click(1, 12)]) == 1


# -------------------------------------------------------------------- events


def test_events_of_a_day_in_utc_and_arrival_order(store):
    features = {"hour": 23, "price": 9.5, "recent_clicks": [10, 11], "none": None}
    store.append_events(
        [
            shown(
                1, 10, 86_400 - 0.001, request_id="r2", position=3, features=features
            ),
            shown(1, 11, -0.001),  # the day before
            click(1, 10, 0.0),
            shown(2, 12, 86_400.0),  # the day after
        ]
    )
    store.append_events([click("1", "10", 86_399.9, request_id="r2")])
    events = store.events(DAY)
    assert events.schema == EVENT_SCHEMA
    assert events.select("kind", "user_id", "item_id").rows() == [
        ("impression", "1", "10"),
        ("click", "1", "10"),
        ("click", "1", "10"),
    ]
    first = events.row(0, named=True)
    assert first["timestamp"] == pytest.approx(MIDNIGHT + 86_400 - 0.001)
    assert (first["request_id"], first["position"]) == ("r2", 3)
    assert json.loads(first["features"]) == features
    assert events["features"][1] == "{}"
    assert store.events(DAY - dt.timedelta(days=1)).height == 1
    assert store.events(DAY + dt.timedelta(days=1)).height == 1
    assert store.events(dt.date(2020, 1, 1)).schema == EVENT_SCHEMA
    assert store.count_events() == 5


def test_numpy_values_in_features_are_stored_as_plain_json(store):
    features = {
        "hour": np.int8(4),
        "price": np.float32(2.5),
        "lost": float("nan"),
        "clicks": np.array([1, 2]),
        "day": dt.date(2026, 11, 9),
    }
    store.append_events([shown(1, 10, features=features)])
    assert json.loads(store.events(DAY)["features"][0]) == {
        "hour": 4,
        "price": 2.5,
        "lost": None,
        "clicks": [1, 2],
        "day": "2026-11-09",
    }


def test_concurrent_batches_are_all_stored(store):
    load(store)
    threads, batches = 8, 25

    def work(user: int) -> None:
        for batch in range(batches):
            item = 10 + batch % 5
            store.append_events(
                [
                    shown(user, item, batch),
                    click(user, item, batch + 0.5),
                    shown(1, 10, batch),
                ]
            )
            assert store.user(1)["user_id"] == 1
            assert store.history(user)[-1] == item

    users = range(1000, 1000 + threads)
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(work, user) for user in users]:
            done.result()  # raises what the thread raised
    assert store.count_events() == threads * batches * 3
    assert store.events(DAY).height == threads * batches * 3
    for user in users:
        # The user's last three clicks, in order: batches 22, 23 and 24.
        assert store.history(user) == [12, 13, 14]


# -------------------------------------------------------------------- reload


def test_a_reload_replaces_profiles_and_seeds_but_keeps_events(store):
    load(store)
    store.append_events([click(1, 12, 10), click(7, 10, 20), click(2, 14, 30)])
    newer = pl.DataFrame(
        {
            "user_id": [1, 99],
            "user_type": ["consumer", "business"],
            "purchasing_power": pl.Series([3.0, 1.0], dtype=pl.Float32),
            "recent_clicks": [[13], [11, 12]],
        }
    )
    load(store, users=newer, replay_clicks_since=MIDNIGHT + 15)
    assert store.user(1)["user_type"] == "consumer"
    assert store.user(99) is not None
    assert store.user(7) is None
    assert store.num_users() == 2
    # The newer window's list; the click at +10 came before `since`.
    assert store.history(1) == [13]
    assert store.history(99) == [11, 12]
    # Users absent from the newer window keep what they had.
    assert store.history(7) == [13, 14, 10]
    assert store.count_events() == 3


def test_a_reload_replays_clicks_the_window_has_not_seen(store):
    load(store)
    store.append_events([click(1, 12, 10), click(1, 13, 20), click(2, 14, 30)])
    load(store, replay_clicks_since=MIDNIGHT + 15)
    assert store.history(1) == [10, 11, 13]
    assert store.history(2) == [14]
    load(store)
    assert store.history(1) == [10, 11]
    assert store.history(2) == []


# ---------------------------------------------------------------- durability


def test_everything_survives_reopening(store, open_test_store):
    load(store)
    store.append_events([shown(1, 12, features={"hour": 3}), click(1, 12, 1)])
    store.close()
    reopened = open_test_store()
    assert reopened.user(1)["user_type"] == "business"
    assert reopened.history(1) == [10, 11, 12]
    assert reopened.count_events() == 2
    assert json.loads(reopened.events(DAY)["features"][0]) == {"hour": 3}


def test_sqlite_is_durable_and_in_wal_mode(tmp_path):
    with open_store(tmp_path / "deep" / "store.db") as store:
        assert store.durable
        mode = store._read("PRAGMA journal_mode")[0][0]
        synchronous = store._read("PRAGMA synchronous")[0][0]
    assert (mode, synchronous) == ("wal", 2)  # 2 is FULL


KILLED_WRITER = """
import datetime as dt, os, signal, sys
from likely.serve.store import Event, open_store
store = open_store(sys.argv[1])
start = dt.datetime(2026, 11, 9, tzinfo=dt.UTC).timestamp()
for batch in range(20):
    store.append_events([Event("click", "u", batch, start + batch)] * 5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sqlite_acknowledged_batches_survive_a_killed_process(tmp_path):
    path = tmp_path / "store.db"
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)])
    assert result.returncode == -9
    with open_store(path) as store:
        assert store.count_events() == 100
        assert store.history("u") == [b for b in range(16, 20) for _ in range(5)]


def test_redis_acknowledged_batches_survive_a_killed_server(fresh_redis_server):
    store = open_store(fresh_redis_server.url)
    assert store.durable
    load(store)
    for batch in range(10):
        store.append_events([shown(1, 12, batch), click(1, 12, batch + 0.5)])
    store.close()
    fresh_redis_server.kill()
    fresh_redis_server.start()
    with open_store(fresh_redis_server.url) as store:
        assert store.count_events() == 20
        assert store.events(DAY).height == 20
        assert store.history(1) == [12, 12, 12]
        assert store.user(1)["user_id"] == 1


def test_redis_warns_when_acknowledged_events_can_be_lost(redis_server, caplog):
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("appendfsync", "everysec")
    try:
        with caplog.at_level(logging.WARNING, logger="likely.serve.store"):
            store = open_store(redis_server.url)
        store.close()
    finally:
        client.config_set("appendfsync", "always")
        client.close()
    assert not store.durable
    assert "appendfsync everysec" in caplog.text
    assert "can be lost" in caplog.text


# ---------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "unknown feature store URL 'mysql://db/x'; use sqlite:///"),
        ("sqlite://", "has no path"),
        ("sqlite:///", "has no path"),
    ],
)
def test_bad_urls_are_named(url, message):
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_sqlite_urls_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///relative/a.db") as store:
        assert store.path == Path("relative", "a.db")
    assert (tmp_path / "relative" / "a.db").is_file()
    with open_store(f"sqlite:///{tmp_path}/b.db") as store:
        assert store.path == tmp_path / "b.db"
    with open_store("c.db") as store:
        assert isinstance(store, SQLiteStore)
    with pytest.raises(FileNotFoundError, match="no feature store at missing.db"):
        open_store("missing.db", create=False)
    (tmp_path / "text.db").write_text("not a database, " * 100)
    with pytest.raises(ValueError, match="text.db is not a feature store"):
        open_store("text.db")


def test_an_unreachable_redis_is_a_connection_error():
    # A port bound but not listening refuses connections at once.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(ConnectionError, match=f"cannot reach Redis at .*:{port}"):
            open_store(f"redis://127.0.0.1:{port}/0")
