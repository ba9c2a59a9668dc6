"""The feed service over HTTP: feeds, events, auth, limits, metrics, reload."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from likely.serve.app import (
    Service,
    ServiceSettings,
    create_app,
    load_models,
    load_profiles,
    newest_run,
)
from likely.serve.ranker import model_version
from likely.serve.store import open_store

TOKEN = "secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models(served_world):
    return load_models(served_world["ranking"], served_world["recall"])


@pytest.fixture
def service(served_world, models, tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    load_profiles(store, models)
    settings = ServiceSettings(
        run=served_world["ranking"], recall=served_world["recall"], token=TOKEN
    )
    yield Service(settings, store, models)
    store.close()


@pytest.fixture
def client(service):
    with TestClient(create_app(service)) as client:
        yield client


def a_user(models, row=0):
    return models.recaller.users.row(row, named=True)["user_id"]


def test_feed_of_a_known_user(client, models, service):
    user = a_user(models)
    response = client.post("/recommend", json={"user_id": user, "k": 30})
    assert response.status_code == 200, response.text
    feed = response.json()
    assert feed["known_user"] is True
    assert feed["model_version"] == models.version
    assert feed["history"] == service.store.history(user)
    scores = [item["score"] for item in feed["items"]]
    assert len(scores) == 30 and scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)
    assert len({item["item_id"] for item in feed["items"]}) == 30
    assert {"store", "recall", "rank", "total"} <= set(feed["timings_ms"])
    # The tiny catalogue has 400 items: all are candidates, ranked by the model.
    stages = {item["stage"] for item in feed["items"]}
    assert stages <= {"two_tower", "popularity"}


def test_scores_are_the_rankers(client, models, service):
    user = a_user(models, 4)
    feed = client.post(
        "/recommend", json={"user_id": user, "k": 10, "candidates": 50}
    ).json()
    rows = [models.item_rows[str(item["item_id"])] for item in feed["items"]]
    profile = {**service.store.user(user), "recent_clicks": feed["history"]}
    expected = models.ranker.logits(profile, {}, np.array(rows))
    got = np.array([item["score"] for item in feed["items"]])
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-expected)), rtol=1e-5)


def test_unknown_user_gets_a_cold_start_feed(client):
    feed = client.post("/recommend", json={"user_id": 987654321, "k": 20}).json()
    assert feed["known_user"] is False and feed["history"] == []
    assert len(feed["items"]) == 20
    assert {item["stage"] for item in feed["items"]} == {"popularity"}


def test_features_on_request(client, models):
    feed = client.post(
        "/recommend",
        json={"user_id": a_user(models), "k": 3, "include_features": True},
    ).json()
    features = feed["items"][0]["features"]
    assert features["item_id"] == feed["items"][0]["item_id"]
    assert {"category", "brand", "price"} <= set(features)


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"user_id": 1, "k": 0}, ["body", "k"], "greater than or equal to 1"),
        ({"user_id": 1, "k": 5000}, ["body", "k"], "above 1000"),
        ({"user_id": 1, "k": 600, "candidates": 100}, ["body", "k"], "above candid"),
        ({"user_id": 1, "candidates": 10**6}, ["body", "candidates"], "above 5000"),
        ({"k": 3}, ["body", "user_id"], "required"),
        ({"user_id": [1]}, ["body", "user_id"], ""),
        ({"user_id": 1, "colour": "red"}, ["body", "colour"], "not permitted"),
        ({"user_id": 1, "context": {"weather": 1}}, ["body", "context", "weather"], ""),
        ({"user_id": 1, "context": {"hour": "noon"}}, ["body", "context", "hour"], ""),
        ({"user_id": 1, "context": {"hour": 9999}}, ["body", "context", "hour"], ""),
        ({"user_id": 1, "context": {"hour": 3.5}}, ["body", "context", "hour"], ""),
        ({"user_id": 1, "context": {"hour": True}}, ["body", "context", "hour"], ""),
        ({"user_id": 1, "context": {"platform": 7}}, ["body", "context"], "String"),
        ({"user_id": "not-a-number"}, ["body", "user_id"], "not an id"),
        ({"user_id": 10**30}, ["body", "user_id"], "not an id"),
    ],
)
def test_bad_requests_name_the_field(client, body, where, says):
    response = client.post("/recommend", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"][: len(where)] == where and says in d["msg"] for d in details)


def test_malformed_and_oversized_bodies(client):
    response = client.post(
        "/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    huge = {"user_id": 1, "context": {"platform": "x" * (2 << 20)}}
    assert client.post("/recommend", json=huge).status_code == 413
    assert client.get("/recommend").status_code == 405


def test_events_need_the_token_and_change_nothing_without(client, service, models):
    user = a_user(models)
    item = models.recaller.items["item_id"][0]
    body = {"events": [{"type": "click", "user_id": user, "item_id": item}]}
    history = service.store.history(user)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.post("/events", json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/admin/reload", json={}).status_code == 401
    assert service.store.count_events() == 0
    assert service.store.history(user) == history


def test_a_click_is_in_the_next_feed(client, service, models):
    user = a_user(models, 7)
    before = client.post("/recommend", json={"user_id": user, "k": 50}).json()
    clicked = before["items"][-1]["item_id"]
    events = [
        {
            "type": "impression",
            "user_id": user,
            "item_id": clicked,
            "request_id": before["request_id"],
            "context": {"position": 49},
        },
        {
            "type": "click",
            "user_id": str(user),
            "item_id": str(clicked),
            "request_id": before["request_id"],
        },
    ]
    response = client.post("/events", json={"events": events}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2}
    after = client.post("/recommend", json={"user_id": user, "k": 50}).json()
    assert after["history"][-1] == clicked
    assert after["history"][:-1] == before["history"][-len(after["history"]) + 1 :]
    assert [i["score"] for i in after["items"]] != [i["score"] for i in before["items"]]
    impression = service.store.events(
        __import__("datetime").datetime.now(__import__("datetime").UTC).date()
    ).row(0, named=True)
    assert impression["kind"] == "impression"


def test_bad_events_are_refused_whole(client, service, models):
    user = a_user(models)
    good = {"type": "click", "user_id": user, "item_id": 1}
    for bad, where in [
        ({**good, "type": "purchase"}, ["body", "events", 1, "type"]),
        ({**good, "timestamp": 1.0}, ["body", "events", 1, "timestamp"]),
        ({**good, "item_id": "x"}, ["body", "events", 1, "item_id"]),
        ({**good, "context": {"hour": "x"}}, ["body", "events", 1, "context", "hour"]),
    ]:
        response = client.post("/events", json={"events": [good, bad]}, headers=AUTH)
        assert response.status_code == 422, response.text
        assert any(d["loc"][: len(where)] == where for d in response.json()["detail"])
    assert client.post("/events", json={"events": []}, headers=AUTH).status_code == 422
    too_many = {"events": [good] * 1001}
    assert client.post("/events", json=too_many, headers=AUTH).status_code == 422
    assert service.store.count_events() == 0


def test_health_and_metrics(client, models):
    client.post("/recommend", json={"user_id": a_user(models), "k": 5})
    client.post("/recommend", json={"user_id": 1, "k": 0})
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_version"] == models.version
    text = client.get("/metrics").text
    assert 'likely_stage_seconds_count{stage="rank"} 1.0' in text
    assert 'likely_requests_total{endpoint="/recommend",status="200"} 1.0' in text
    assert 'likely_requests_total{endpoint="/recommend",status="422"} 1.0' in text
    assert f'likely_model_info{{version="{models.version}"}} 1.0' in text


def perturbed_copy(run, to):
    """A copy of a run with different weights: a newer model to reload."""
    shutil.copytree(run, to)
    weights = to / "model" / "model.safetensors"
    tensors = load_file(weights)
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, weights)
    return to


def test_reload_swaps_and_refuses_a_broken_artifact(client, served_world, tmp_path):
    old = client.get("/health").json()["model_version"]
    broken = perturbed_copy(served_world["ranking"], tmp_path / "broken")
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    response = client.post("/admin/reload", json={"run": str(broken)}, headers=AUTH)
    assert response.status_code == 422
    assert f"still serving {old}" in response.json()["detail"]
    assert client.get("/health").json()["model_version"] == old
    newer = perturbed_copy(served_world["ranking"], tmp_path / "newer")
    response = client.post("/admin/reload", json={"run": str(newer)}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version": model_version(newer), "previous": old}
    feed = client.post("/recommend", json={"user_id": 1, "k": 3}).json()
    assert feed["model_version"] == model_version(newer)


def test_reload_under_load_drops_nothing(client, served_world, models, tmp_path):
    newer = perturbed_copy(served_world["ranking"], tmp_path / "newer")
    statuses, versions, stop = [], set(), threading.Event()

    def load():
        while not stop.is_set():
            response = client.post("/recommend", json={"user_id": a_user(models)})
            statuses.append(response.status_code)
            versions.add(response.json().get("model_version"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    response = client.post("/admin/reload", json={"run": str(newer)}, headers=AUTH)
    for _ in range(3):
        client.post("/recommend", json={"user_id": 1})
    stop.set()
    for thread in threads:
        thread.join()
    assert response.status_code == 200
    assert statuses and set(statuses) == {200}
    assert model_version(newer) in versions


def test_newest_run_skips_recall_runs(served_world, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    assert newest_run(runs) is None
    shutil.copytree(served_world["recall"], runs / "recall")
    first = perturbed_copy(served_world["ranking"], runs / "first")
    assert newest_run(runs) == first


def test_a_store_locked_by_another_process_answers_503(client, service, models):
    # Another writer holds the database past the busy timeout: the event is
    # refused with 503 and Retry-After, not a 500, and nothing is stored.
    import sqlite3

    user = a_user(models)
    item = models.recaller.items["item_id"][0]
    body = {"events": [{"type": "click", "user_id": user, "item_id": item}]}
    other = sqlite3.connect(service.store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    service.store._db.execute("PRAGMA busy_timeout=50")
    try:
        response = client.post("/events", json=body, headers=AUTH)
    finally:
        other.execute("ROLLBACK")
        other.close()
        service.store._db.execute("PRAGMA busy_timeout=30000")
    assert response.status_code == 503, response.text
    assert "locked" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"
    assert service.store.count_events() == 0
    again = client.post("/events", json=body, headers=AUTH)
    assert again.status_code == 200 and service.store.count_events() == 1
