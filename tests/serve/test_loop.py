"""The loop closes: serve, record events, export them as logs, train on them
incrementally, and the watching service swaps the new model in with no
failed request."""

from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from likely.config import load_config
from likely.data.encoders import FeatureEncoders
from likely.data.prepare import prepare
from likely.serve.app import (
    Service,
    ServiceSettings,
    create_app,
    load_models,
    load_profiles,
)
from likely.serve.export import label_day, write_day
from likely.serve.ranker import model_version
from likely.serve.store import open_store
from likely.train.trainer import Trainer

TOKEN = "loop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def event_time() -> float:
    """Now, or a little earlier if now is too close to midnight UTC for the
    clicks a second later to fall on the impressions' day."""
    now = time.time()
    seconds_into_day = now % 86400
    return now - 30 if seconds_into_day > 86400 - 10 else now


@pytest.mark.slow
def test_serve_export_train_reload(served_world, tmp_path):
    ranking, recall = served_world["ranking"], served_world["recall"]
    models = load_models(ranking, recall)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    load_profiles(store, models)
    runs = tmp_path / "runs"
    runs.mkdir()
    settings = ServiceSettings(
        run=ranking, recall=recall, token=TOKEN, runs_dir=runs, watch_seconds=0.2
    )
    service = Service(settings, store, models)
    rng = np.random.default_rng(0)
    stamp = event_time()
    day = dt.datetime.fromtimestamp(stamp, dt.UTC).date()
    with TestClient(create_app(service)) as client:
        # Serve feeds and send back what was shown and what was clicked.
        impressions = clicks = 0
        for user in models.recaller.users["user_id"].head(80).to_list():
            feed = client.post("/recommend", json={"user_id": user, "k": 20}).json()
            events = []
            for position, item in enumerate(feed["items"]):
                base = {
                    "user_id": user,
                    "item_id": item["item_id"],
                    "request_id": feed["request_id"],
                }
                events.append(
                    {
                        **base,
                        "type": "impression",
                        "context": {"position": position},
                        "timestamp": stamp,
                    }
                )
                if rng.random() < 0.3 * item["score"] / (1 + position / 5):
                    events.append({**base, "type": "click", "timestamp": stamp + 1})
            response = client.post("/events", json={"events": events}, headers=AUTH)
            assert response.status_code == 200, response.text
            impressions += len(feed["items"])
            clicks += sum(e["type"] == "click" for e in events)
        assert clicks > 5

        # Export the day in the logs' schema; every click labels its impression.
        labelled = label_day(store, day)
        path = write_day(labelled, tmp_path / "served-logs")
        assert path.parent.name == f"day={day}"
        exported = pl.read_parquet(path)
        assert exported.height == impressions
        assert int(exported["label"].sum()) == clicks
        template = models.recaller.rows.template
        assert exported.columns == [c for c in template.columns if c != "day"]
        assert exported["recent_clicks"].list.len().max() > 0

        # Train on it, continuing from the served run, while traffic flows.
        statuses, versions, stop = [], set(), threading.Event()

        def traffic():
            users = models.recaller.users["user_id"].to_list()
            while not stop.is_set():
                user = users[len(statuses) % len(users)]
                response = client.post("/recommend", json={"user_id": user, "k": 50})
                statuses.append(response.status_code)
                versions.add(response.json().get("model_version"))

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            config = load_config(ranking / "config.json")
            data = config.data.model_copy(
                update={"path": tmp_path / "served-logs", "window_days": 1}
            )
            config = config.model_copy(update={"data": data})
            extend = FeatureEncoders.load(ranking / "encoders.json", config)
            prepared = prepare(config, day + dt.timedelta(days=1), extend=extend)
            assert prepared.splits == ["train"]
            assert prepared.manifest["splits"]["train"]["rows"] == impressions
            Trainer(config, prepared, runs / "next", init_from=ranking).fit()
            wanted = model_version(runs / "next")
            deadline = time.monotonic() + 60
            while client.get("/health").json()["model_version"] != wanted:
                assert time.monotonic() < deadline, "the watcher did not reload"
                time.sleep(0.1)
            time.sleep(0.3)  # a few requests on the new model
        finally:
            stop.set()
            thread.join()
    store.close()
    assert statuses and set(statuses) == {200}
    assert {models.version, wanted} <= versions
