"""The service under faults, as deployed: `likely serve` in a subprocess over
real HTTP. Killed mid-stream (SIGKILL) it loses no acknowledged event, on
SQLite or Redis; its Redis killed and restarted from the AOF, the same; a
reload under load fails no request; a broken artifact is refused while the
old model serves on; and without the token nothing changes."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import pytest
from safetensors.torch import load_file, save_file

from likely.serve.ranker import model_version
from likely.serve.store import FeatureStore, open_store

TOKEN = "fault-token"
# Events per batch: three impressions and a click, one request id for all.
BATCH = 4


class EventStream(threading.Thread):
    """Posts batches of events to a `LiveService`'s /events until halted, and
    notes the answer to each: batch `i` is acknowledged when it got a 200.

    All events of batch `i` carry the request id `<tag>-<i>`, so the store
    shows which batches it holds, and whether whole.
    """

    def __init__(self, service, users: list, items: list, tag: str):
        super().__init__(daemon=True)
        self.service, self.users, self.items, self.tag = service, users, items, tag
        self.acknowledged: list[int] = []
        self.answers: Counter = Counter()  # status code, or "no answer"
        self.halt = threading.Event()
        self.started_at = time.time()

    def batch(self, i: int) -> list[dict]:
        base = {
            "user_id": self.users[i % len(self.users)],
            "request_id": f"{self.tag}-{i}",
            "timestamp": time.time(),
        }
        shown = [self.items[(i + p) % len(self.items)] for p in range(BATCH - 1)]
        return [
            *(
                {
                    **base,
                    "type": "impression",
                    "item_id": item,
                    "context": {"position": p},
                }
                for p, item in enumerate(shown)
            ),
            {**base, "type": "click", "item_id": shown[0]},
        ]

    def run(self) -> None:
        i = 0
        with httpx2.Client(timeout=10.0) as client:
            while not self.halt.is_set():
                try:
                    response = client.post(
                        f"{self.service.url}/events",
                        json={"events": self.batch(i)},
                        headers=self.service.auth,
                    )
                    answer = response.status_code
                except httpx2.TransportError:
                    answer = "no answer"
                self.answers[answer] += 1
                if answer == 200:
                    self.acknowledged.append(i)
                else:
                    time.sleep(0.01)  # the server or its store is down: no spinning
                i += 1

    def wait_until(self, what: str, done, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not self.is_alive() or time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout:.0f}s; answers so far "
                    f"{dict(self.answers)}\n{self.service.log_tail()}"
                )
            time.sleep(0.01)

    def acknowledge(self, more: int) -> None:
        """Wait for `more` batches to be acknowledged from now."""
        wanted = len(self.acknowledged) + more
        self.wait_until(
            f"{more} more acknowledged batches",
            lambda: len(self.acknowledged) >= wanted,
        )

    def refuse(self) -> None:
        """Wait for a batch that was not acknowledged (the fault was seen)."""
        refused = self._refused()
        self.wait_until("a refused batch", lambda: self._refused() > refused)

    def _refused(self) -> int:
        return sum(n for answer, n in self.answers.items() if answer != 200)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)

    def check_stored(self, store: FeatureStore) -> None:
        """Every acknowledged batch is in the store whole; no batch in part."""
        first, last = self.started_at - 1, time.time() + 1
        days = {dt.datetime.fromtimestamp(t, dt.UTC).date() for t in (first, last)}
        stored: Counter = Counter()
        for day in sorted(days):
            for request_id in store.events(day)["request_id"].drop_nulls():
                tag, _, i = request_id.rpartition("-")
                if tag == self.tag:
                    stored[int(i)] += 1
        lost = [i for i in self.acknowledged if stored[i] != BATCH]
        assert not lost, (
            f"{len(lost)} of {len(self.acknowledged)} acknowledged batches lost or "
            f"stored in part: {[(i, stored[i]) for i in lost[:10]]}"
        )
        partial = {i: n for i, n in stored.items() if n != BATCH}
        assert not partial, f"batches stored in part or twice: {partial}"


def served_ids(service) -> tuple[list, list]:
    """Some users and items the service knows, asked over HTTP."""
    with httpx2.Client(base_url=service.url, timeout=10.0) as client:
        users = [u["user_id"] for u in client.get("/users?limit=8").json()["users"]]
        feed = client.post("/recommend", json={"user_id": users[0], "k": 20}).json()
    return users, [item["item_id"] for item in feed["items"]]


def store_url(backend: str, request, tmp_path: Path) -> str:
    """A store of the test's own: the CLI writes Redis keys under the default
    prefix, so a server shared with other tests would mix their keys."""
    if backend == "redis":
        return request.getfixturevalue("fresh_redis_server").url
    return f"sqlite:///{tmp_path / 'store.db'}"


# ---------------------------------------------------------------- SIGKILL


def test_a_killed_service_loses_no_acknowledged_event(
    backend, served_world, live_service, request, tmp_path
):
    url = store_url(backend, request, tmp_path)
    runs = served_world["ranking"], served_world["recall"]
    service = live_service(*runs, url, TOKEN)
    users, items = served_ids(service)
    stream = EventStream(service, users, items, tag="kill")
    stream.start()
    try:
        stream.acknowledge(20)
        service.kill()  # a batch is in flight: the stream never waits
        stream.refuse()
        restarted = live_service(*runs, url, TOKEN, port=service.port)
        stream.acknowledge(10)
    finally:
        stream.stop()

    with open_store(url) as store:
        stream.check_stored(store)
        stored = store.count_events()
    with httpx2.Client(base_url=restarted.url, timeout=10.0) as client:
        assert client.get("/health").json()["events"] == stored
        feed = client.post("/recommend", json={"user_id": users[0], "k": 5})
        assert feed.status_code == 200, feed.text
        assert len(feed.json()["items"]) == 5


def test_a_killed_redis_loses_no_acknowledged_event(
    fresh_redis_server, served_world, live_service
):
    runs = served_world["ranking"], served_world["recall"]
    service = live_service(*runs, fresh_redis_server.url, TOKEN)
    users, items = served_ids(service)
    stream = EventStream(service, users, items, tag="redis")
    stream.start()
    try:
        stream.acknowledge(20)
        fresh_redis_server.kill()
        stream.refuse()
        # A load balancer asking now is told to send traffic elsewhere.
        health = httpx2.get(f"{service.url}/health", timeout=10.0)
        assert health.status_code == 503, health.text
        assert "feature store is unavailable" in health.json()["detail"]
        assert health.headers["retry-after"] == "1"
        fresh_redis_server.start()  # replays its AOF
        stream.acknowledge(10)  # the service reconnects by itself
    finally:
        stream.stop()

    with open_store(fresh_redis_server.url) as store:
        stream.check_stored(store)
    # While Redis was down the service said so, and stayed up.
    assert stream.answers[503] > 0, dict(stream.answers)
    assert set(stream.answers) <= {200, 503}, dict(stream.answers)


# ---------------------------------------------------------------- reloads


def perturbed_copy(run: Path, to: Path) -> Path:
    """A copy of a run with different weights: a newer model to reload."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints"))
    weights = to / "model" / "model.safetensors"
    tensors = load_file(weights)
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, weights)
    return to


@pytest.fixture(scope="module")
def served(served_world, module_live_service, tmp_path_factory):
    """One service for the reload and auth tests, on a SQLite store."""
    store = f"sqlite:///{tmp_path_factory.mktemp('faults') / 'store.db'}"
    return module_live_service(
        served_world["ranking"], served_world["recall"], store, TOKEN
    )


@pytest.fixture(scope="module")
def newer_run(served_world, tmp_path_factory):
    return perturbed_copy(
        served_world["ranking"], tmp_path_factory.mktemp("newer") / "run"
    )


class Traffic:
    """Client threads that ask a `LiveService` for feeds without pause, each on
    a connection of its own, noting every status code and model version."""

    def __init__(self, service, users: list, threads: int = 3):
        self.service, self.users = service, users
        self.statuses: Counter = Counter()
        self.versions: set[str] = set()
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._load, args=(n,)) for n in range(threads)
        ]

    def _load(self, n: int) -> None:
        with httpx2.Client(base_url=self.service.url, timeout=30.0) as client:
            i = n
            while not self.halt.is_set():
                user = self.users[i % len(self.users)]
                try:
                    response = client.post(
                        "/recommend", json={"user_id": user, "k": 20}
                    )
                except httpx2.TransportError as error:
                    self.statuses[type(error).__name__] += 1
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.versions.add(response.json()["model_version"])
                i += 1

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def served(self, version: str, timeout: float = 30.0) -> None:
        """Wait until some feed came from `version`."""
        deadline = time.monotonic() + timeout
        while version not in self.versions:
            if time.monotonic() > deadline:
                raise AssertionError(f"no feed from {version}: {self.versions}")
            time.sleep(0.01)


def test_reload_under_load_fails_no_request_and_refuses_broken_runs(
    served, served_world, newer_run, tmp_path
):
    ranking = served_world["ranking"]
    truncated = perturbed_copy(ranking, tmp_path / "truncated")
    weights = truncated / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbage = perturbed_copy(ranking, tmp_path / "garbage")
    (garbage / "config.json").write_text("{this is not json")
    broken = [
        (truncated, "cannot read"),
        (garbage, "config.json is not valid"),
        (tmp_path / "missing", "has no trained model"),
    ]
    users, _ = served_ids(served)

    with httpx2.Client(base_url=served.url, timeout=60.0) as client:
        old = client.get("/health").json()["model_version"]
        with Traffic(served, users) as traffic:
            traffic.served(old)
            response = client.post(
                "/admin/reload", json={"run": str(newer_run)}, headers=served.auth
            )
            assert response.status_code == 200, response.text
            new = response.json()["model_version"]
            assert new == model_version(newer_run) != old
            traffic.served(new)

            for run, says in broken:
                response = client.post(
                    "/admin/reload", json={"run": str(run)}, headers=served.auth
                )
                assert response.status_code == 422, response.text
                detail = response.json()["detail"]
                assert str(run) in detail and says in detail, detail
                assert f"still serving {new}" in detail
                assert client.get("/health").json()["model_version"] == new
            requests_after = traffic.statuses.total()
            deadline = time.monotonic() + 30
            while traffic.statuses.total() < requests_after + 10:
                assert time.monotonic() < deadline, "traffic stalled after the reloads"
                time.sleep(0.01)
        feed = client.post("/recommend", json={"user_id": users[0], "k": 5})
        assert feed.json()["model_version"] == new

    assert set(traffic.statuses) == {200}, dict(traffic.statuses)
    assert traffic.versions == {old, new}
    metrics = httpx2.get(f"{served.url}/metrics").text
    assert 'likely_reloads_total{outcome="refused"} 3.0' in metrics
    assert 'likely_reloads_total{outcome="ok"} 1.0' in metrics


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["none", "wrong", "no-scheme", "basic", "longer"],
)
def test_without_the_token_nothing_changes(served, served_world, newer_run, headers):
    users, items = served_ids(served)
    click = {"type": "click", "user_id": users[0], "item_id": items[0]}
    with httpx2.Client(base_url=served.url, timeout=30.0) as client:
        before = client.get("/health").json()
        history = client.get(f"/users/{users[0]}").json()["history"]
        # A run other than the one served, so that a reload would show.
        other = newer_run
        if before["model_version"] == model_version(newer_run):
            other = served_world["ranking"]
        for path, body in [
            ("/events", {"events": [click]}),
            ("/admin/reload", {"run": str(other)}),
            ("/admin/reload", None),
        ]:
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        after = client.get("/health").json()
        assert client.get(f"/users/{users[0]}").json()["history"] == history
    assert after["events"] == before["events"]
    assert after["model_version"] == before["model_version"]
    with open_store(served.store, create=False) as store:
        assert store.count_events() == before["events"]
