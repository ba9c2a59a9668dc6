"""The feed service: feature store, recall, ranking, top k, and events back.

    POST /recommend     {user_id, k=600, candidates=1000, context} -> ranked items
    POST /events        impressions and clicks, acknowledged once durable
    GET  /health        models and store, for load balancers
    GET  /metrics       Prometheus: requests, latency per stage, model version
    POST /admin/reload  load a newer artifact, probe it, swap it in atomically

A request reads the user's profile and recent clicks from the store, recalls
candidates from the item index (the popularity list for a user without
history), scores them all in one batch with the ranking model and returns
the best k. Writes and admin calls need the bearer token the service was
started with.

The models live in one immutable `Models` object. A request takes the
reference once and uses it throughout, and a reload builds and probes a new
object before it replaces the reference: in-flight requests finish on the
old models, the next ones start on the new, and none fails in between.
"""

from __future__ import annotations

import functools
import gc
import hmac
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import polars as pl
import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as Path_
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from likely.config import ContextValue
from likely.recall.artifact import Recaller
from likely.recall.window import CLICKS, COUNT_COLUMNS, behaviour_column
from likely.serve.ranker import Ranker, model_version
from likely.serve.store import Event, FeatureStore
from likely.train.predict import load_run

logger = logging.getLogger(__name__)

# Ids are text or integers in the logs; JSON gives either.
Id = int | Annotated[str, StringConstraints(min_length=1, max_length=128)]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_k: int = 1000
    max_candidates: int = 5000
    max_events: int = 1000
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class ServiceSettings:
    """How the service was started.

    Attributes:
        run: the ranking run folder served.
        recall: the recall run folder (`likely recall train`) served.
        token: bearer token for `/events` and `/admin/*`.
        runs_dir: with it, a watcher reloads the newest ranking run found
            there every `watch_seconds`.
    """

    run: Path
    recall: Path
    token: str
    limits: Limits = field(default_factory=Limits)
    runs_dir: Path | None = None
    watch_seconds: float = 10.0
    compute_slots: int = field(default_factory=lambda: os.cpu_count() or 1)


# ---------------------------------------------------------------- the models


@dataclass(frozen=True)
class Models:
    """A ranking run and a recall run loaded together, never changed after."""

    ranker: Ranker
    recaller: Recaller
    item_rows: dict[str, int]  # raw item id as text -> row of the item table
    behaviour: str | None
    history_length: int

    @property
    def version(self) -> str:
        return self.ranker.version

    @property
    def item_column(self) -> str:
        return self.recaller.item_column


def load_models(run: Path, recall: Path) -> Models:
    """Load both runs and probe the ranking model before anything serves it.

    Raises:
        FileNotFoundError, ValueError: an incomplete or broken artifact; the
            message says which and why.
    """
    recaller = Recaller.load(Path(recall))
    ranker = Ranker(load_run(Path(run)), recaller.items, recaller.rows.template)
    ranker.warm(recaller.users)
    behaviour = behaviour_column(ranker.config)
    if behaviour is None:
        behaviour = recaller.behaviour
    lengths = [
        f.max_length or 1
        for f in ranker.config.sequence_features
        if f.source == behaviour
    ]
    probe_user = recaller.users.row(0, named=True) if recaller.users.height else {}
    ranker.check(probe_user)
    ids = recaller.items[recaller.item_column].cast(str).to_list()
    return Models(
        ranker=ranker,
        recaller=recaller,
        item_rows={item: row for row, item in enumerate(ids)},
        behaviour=behaviour,
        history_length=lengths[0] if lengths else 50,
    )


def profile_source(models: Models) -> str:
    """Names the window the recall run's rows come from: the run and when its
    artifact was built, so a rebuilt or another run reads as a new source."""
    built = (models.recaller.run_dir / "recall" / "recall.json").stat().st_mtime
    return f"{models.recaller.run_dir.resolve()} built {built:.0f}"


def load_profiles(store: FeatureStore, models: Models) -> None:
    """Fill the store's user and item profiles from the recall window's rows."""
    recaller = models.recaller
    store.load_profiles(
        recaller.users,
        recaller.items.drop(COUNT_COLUMNS),
        user_column=recaller.user_column,
        item_column=recaller.item_column,
        behaviour_column=models.behaviour,
        history_length=models.history_length,
        template=recaller.rows.template,
        label_column=models.ranker.config.data.label,
        date_column=models.ranker.config.data.date_column,
        source=profile_source(models),
    )


def settle_memory() -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    The loaded models, catalogue and caches are a few hundred thousand
    Python objects that live as long as the service; a full collection
    walks them all while holding the interpreter lock, 130-160 ms measured,
    which showed as the service's tail latency. Frozen, they are skipped.
    """
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------- requests


class Strict(BaseModel):
    # Strict: the body must have the types the schema states; lax parsing
    # would take 0 for `include_features` or "5" for `k`, which clients
    # reading the schema cannot predict.
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(Strict):
    user_id: Id
    k: int = Field(default=600, ge=1)
    candidates: int = Field(default=1000, ge=1)
    context: dict[str, ContextValue] = {}
    include_features: bool = False


class FeedItem(BaseModel):
    item_id: Any
    score: float = Field(description="the ranking model's click probability")
    recall_score: float
    stage: Literal["two_tower", "popularity"] = Field(
        description="the recall step that proposed the item"
    )
    features: dict[str, Any] | None = None


class RecommendResponse(BaseModel):
    request_id: str
    user_id: Any
    known_user: bool
    model_version: str
    history: list[Any] = Field(description="the recent clicks the feed was built on")
    items: list[FeedItem]
    timings_ms: dict[str, float]


class EventIn(Strict):
    type: Literal["impression", "click"]
    user_id: Id
    item_id: Id
    request_id: str | None = Field(default=None, max_length=64)
    context: dict[str, ContextValue] = {}
    timestamp: float | None = Field(
        default=None, description="unix seconds; default the time of arrival"
    )


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1)


class ReloadRequest(Strict):
    run: str | None = Field(default=None, max_length=4096)
    recall: str | None = Field(default=None, max_length=4096)


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str | list[ErrorDetail] = Field(
        description="what was wrong: a sentence, or one entry per bad field"
    )


# Error answers FastAPI does not document by itself, stated in the schema so
# that clients (and schema-driven tests) expect them. A refused reload is a
# 422 whose detail is a sentence, not FastAPI's list of bad fields.
def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "a body that cannot be read as text (not UTF-8)",
        401: "no bearer token, or not the service's",
        404: "no such user in the store",
        413: "the body is larger than the service accepts",
        422: "an invalid body, or a run that did not load; the old one serves on",
        503: "the feature store cannot be reached; try again after Retry-After",
    }
    return {
        code: {"model": ErrorResponse, "description": described[code]} for code in codes
    }


# ---------------------------------------------------------------- metrics


@dataclass
class Metrics:
    """The service's Prometheus series, in a registry of its own (so that two
    services in one process, as in tests, do not share counts)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "likely_requests",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "likely_stage_seconds",
            "Latency of each stage of /recommend, and of the whole request",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.events = Counter(
            "likely_events", "Events stored by type", ["type"], registry=r
        )
        self.reloads = Counter(
            "likely_reloads", "Model reloads by outcome", ["outcome"], registry=r
        )
        self.model = Gauge(
            "likely_model_info",
            "The model version served (1)",
            ["version"],
            registry=r,
        )


# ---------------------------------------------------------------- the service


class Service:
    """The state behind the routes: the store, the models, and their swap."""

    def __init__(self, settings: ServiceSettings, store: FeatureStore, models: Models):
        self.settings, self.store = settings, store
        self.models = models
        self.metrics = Metrics()
        self.metrics.model.labels(models.version).set(1)
        self.paths = (Path(settings.run), Path(settings.recall))
        self.started = time.time()
        self._reload_lock = threading.Lock()
        # As many requests compute (recall and ranking) at once as there are
        # cores, each on one torch thread (`likely serve` sets that): one
        # batch of 1,000 rows gains little from a second thread, and dozens
        # of pool threads computing at once only thrash the caches. Waiting
        # here is the "queue" stage.
        self._compute = threading.Semaphore(settings.compute_slots)

    def reload(self, run: Path | None = None, recall: Path | None = None) -> Models:
        """Load, probe and swap in new models; the old keep serving on failure.

        Raises:
            ValueError: the new artifact did not load or failed its probe.
        """
        with self._reload_lock:
            run = Path(run) if run else self.paths[0]
            recall = Path(recall) if recall else self.paths[1]
            try:
                models = load_models(run, recall)
            except Exception as error:
                self.metrics.reloads.labels("refused").inc()
                logger.error("reload of %s refused: %s", run, error)
                raise ValueError(f"refused {run}: {error}") from error
            previous = self.models
            self.models = models
            self.paths = (run, recall)
            self.metrics.model.labels(previous.version).set(0)
            self.metrics.model.labels(models.version).set(1)
            self.metrics.reloads.labels("ok").inc()
            # The old models are freed by reference counting; the new ones
            # join the frozen set.
            settle_memory()
            logger.info("now serving %s (was %s)", models.version, previous.version)
            return models

    def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        """The feed of one request, as the JSON of `RecommendResponse`."""
        limits = self.settings.limits
        if request.k > limits.max_k:
            raise _field_error(["body", "k"], f"k {request.k} is above {limits.max_k}")
        if request.candidates > limits.max_candidates:
            raise _field_error(
                ["body", "candidates"],
                f"candidates {request.candidates} is above {limits.max_candidates}",
            )
        if request.k > request.candidates:
            raise _field_error(
                ["body", "k"],
                f"k {request.k} is above candidates {request.candidates}",
            )
        models = self.models  # one reference for the whole request
        _check_context(models, request.context)
        user_id = _typed_id(models, models.recaller.user_column, request.user_id)
        timings: dict[str, float] = {}
        clock = functools.partial(_timed, timings, self.metrics)
        with clock("store"):
            profile = self.store.user(user_id)
            history = self.store.history(user_id)
        user = dict(profile or {})
        with clock("queue"):
            self._compute.acquire()
        try:
            with clock("recall"):
                rows, recall_scores, source = models.recaller.recall_rows(
                    user, history, request.candidates
                )
                stages = np.full(len(rows), source == "two_tower")
                rows, recall_scores, stages = _fill_with_popular(
                    models, rows, recall_scores, stages, request.candidates
                )
            if models.behaviour is not None:
                user[models.behaviour] = history
            with clock("rank"):
                ranked = models.ranker.rank(user, request.context, rows, request.k)
        finally:
            self._compute.release()
        order = ranked.order
        items_table = models.recaller.items
        ids = items_table[models.item_column].gather(ranked.rows).to_list()
        features = (
            items_table[ranked.rows].drop(COUNT_COLUMNS).to_dicts()
            if request.include_features
            else [None] * len(ids)
        )
        # Plain dicts in the shape of `FeedItem`: 600 pydantic objects cost
        # about 3 ms a request, and every field here is built typed already.
        probs = ranked.probs.tolist()
        recall_list = recall_scores[order].astype(np.float64).tolist()
        from_index = stages[order].tolist()
        items = [
            {
                "item_id": ids[i],
                "score": probs[i],
                "recall_score": recall_list[i],
                "stage": "two_tower" if from_index[i] else "popularity",
                "features": features[i],
            }
            for i in range(len(ids))
        ]
        timings["total"] = sum(timings.values())
        self.metrics.stage_seconds.labels("total").observe(timings["total"] / 1000)
        return {
            "request_id": uuid.uuid4().hex,
            "user_id": user_id,
            "known_user": profile is not None,
            "model_version": models.version,
            "history": list(history),
            "items": items,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        }

    def events(self, request: EventsRequest) -> int:
        limits = self.settings.limits
        if len(request.events) > limits.max_events:
            raise _field_error(
                ["body", "events"],
                f"{len(request.events)} events; at most {limits.max_events} a request",
            )
        models = self.models
        now = time.time()
        events = []
        # Each user's profile and history, read once a batch: the batch's own
        # clicks reach the history only when it is stored, so every
        # impression in it sees the same state.
        users: dict[Any, tuple[dict[str, Any], list]] = {}
        for i, event in enumerate(request.events):
            loc = ["body", "events", i]
            _check_context(models, event.context, [*loc, "context"])
            user_id = _typed_id(models, models.recaller.user_column, event.user_id, loc)
            item_id = _typed_id(models, models.item_column, event.item_id, loc)
            timestamp = now if event.timestamp is None else event.timestamp
            if not now - 7 * 86400 <= timestamp <= now + 300:
                raise _field_error(
                    [*loc, "timestamp"],
                    f"timestamp {timestamp} is not within the last 7 days",
                )
            features = {}
            if event.type == "impression":
                if user_id not in users:
                    users[user_id] = (
                        self.store.user(user_id) or {},
                        self.store.history(user_id),
                    )
                features = _impression_features(
                    models, event, user_id, item_id, *users[user_id]
                )
            position = event.context.get("position")
            events.append(
                Event(
                    kind=event.type,
                    user_id=user_id,
                    item_id=item_id,
                    timestamp=timestamp,
                    request_id=event.request_id,
                    position=position if isinstance(position, int) else None,
                    features=features,
                )
            )
        stored = self.store.append_events(events)
        for event in events:
            self.metrics.events.labels(event.kind).inc()
        return stored

    def health(self) -> dict[str, Any]:
        models = self.models
        return {
            "status": "ok",
            "model_version": models.version,
            "recall_run": str(models.recaller.run_dir),
            "items": models.ranker.num_items,
            "store": type(self.store).__name__,
            "events": self.store.count_events(),
            "uptime_seconds": round(time.time() - self.started, 1),
        }


def _impression_features(
    models: Models,
    event: EventIn,
    user_id: Any,
    item_id: Any,
    profile: dict[str, Any],
    history: list,
) -> dict[str, Any]:
    """The raw feature row the model saw for an impression: user profile,
    recent clicks, the item's columns, and the context; what the exported
    logs will train on."""
    features: dict[str, Any] = dict(profile)
    if models.behaviour is not None:
        features[models.behaviour] = list(history)
    row = models.item_rows.get(str(item_id))
    if row is not None:
        item = models.recaller.items.row(row, named=True)
        features.update({k: v for k, v in item.items() if k not in COUNT_COLUMNS})
    else:
        features[models.item_column] = item_id
    features.update(models.ranker.config.serve.context_defaults)
    features.update(event.context)
    features[models.recaller.user_column] = user_id
    return features


def _fill_with_popular(models: Models, rows, scores, stages, wanted: int):
    """Top up a short candidate list (a small index) with popular items."""
    if len(rows) >= wanted:
        return rows, scores, stages
    popular = models.recaller.popular(wanted + len(rows))
    extra = popular[~np.isin(popular, rows)][: wanted - len(rows)]
    clicks = models.recaller.items[CLICKS].to_numpy()[extra]
    return (
        np.concatenate([rows, extra]),
        np.concatenate([scores, clicks.astype(np.float32)]),
        np.concatenate([stages, np.zeros(len(extra), dtype=bool)]),
    )


def _field_error(loc: list[Any], message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": tuple(loc), "msg": message, "input": None}]
    )


def _typed_id(models: Models, column: str, value: Any, loc: list[Any] | None = None):
    """An id from JSON in the type of its column in the logs (so "42" and 42
    are one user where ids are integers).

    Raises:
        RequestValidationError: the id does not fit the column's type.
    """
    name = "user_id" if column == models.recaller.user_column else "item_id"
    try:
        return models.ranker.typed_row({column: value})[column].item()
    except (ValueError, pl.exceptions.PolarsError):
        raise _field_error(
            [*(loc or ["body"]), name],
            f"{value!r} is not an id of column '{column}' "
            f"({models.ranker.rows.template.schema.get(column)})",
        ) from None


def _check_context(
    models: Models, context: dict[str, Any], loc: list[Any] | None = None
) -> None:
    loc = loc or ["body", "context"]
    allowed = models.ranker.context_columns
    for name, value in context.items():
        if name not in allowed:
            raise _field_error(
                [*loc, name],
                f"'{name}' is not a context column; choose from: {allowed}",
            )
        try:
            models.ranker.typed_row({name: value}, exact=True)
        except ValueError as error:
            raise _field_error([*loc, name], str(error)) from None


@contextmanager
def _timed(timings: dict[str, float], metrics: Metrics, stage: str) -> Iterator[None]:
    """Record a stage's milliseconds in `timings` and its latency histogram."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        timings[stage] = seconds * 1000
        metrics.stage_seconds.labels(stage).observe(seconds)


# ---------------------------------------------------------------- the app


class Guard:
    """Pure ASGI middleware: refuse bodies over `max_bytes` with 413 (counted
    as they arrive: a client can lie in Content-Length or send chunks), and
    count responses by endpoint and status for `/metrics`."""

    def __init__(self, app: Callable, max_bytes: int, metrics: Metrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # A fixed set of label values: fuzzed paths must not grow the series.
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        if path.startswith("/users/"):
            endpoint = "/users/{user_id}"
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _too_large(counted_send, self.max_bytes)
                self.metrics.requests.labels(endpoint, "413").inc()
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, counted_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()


ENDPOINTS = (
    "/",
    "/recommend",
    "/events",
    "/users",
    "/health",
    "/metrics",
    "/admin/reload",
)
STATIC = Path(__file__).parent / "static"


async def _too_large(send, max_bytes: int) -> None:
    body = f'{{"detail":"request body is larger than {max_bytes} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Module level: the routes' annotations are resolved in this module's names.
BEARER = HTTPBearer(auto_error=False)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app of a service (the store and models already loaded)."""
    settings = service.settings

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise HTTPException(
                status_code=401,
                detail="a valid bearer token is required for this endpoint",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        watcher = None
        if settings.runs_dir is not None:
            watcher = threading.Thread(
                target=_watch, args=(service, settings, stop), daemon=True
            )
            watcher.start()
        yield
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)

    app = FastAPI(
        title="likely feed service",
        version="1",
        description="Recall, ranking and events for a 'you may like' feed.",
        lifespan=lifespan,
    )
    app.state.service = service

    app.add_middleware(
        Guard, max_bytes=settings.limits.max_body_bytes, metrics=service.metrics
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        details = [
            {
                "loc": list(e.get("loc", ())),
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in error.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": details})

    # Redis down, or loading its AOF after a restart: the request may succeed
    # a moment later, so say so (503) rather than fail as a bug would (500),
    # and /health tells a load balancer to send traffic elsewhere meanwhile.
    # SQLite's operational errors (a lock held past the busy timeout by
    # another process, a full or failing disk) are the same kind of failure.
    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(sqlite3.OperationalError)
    async def store_unavailable(request: Request, error: Exception):
        logger.error("feature store unavailable: %s", error)
        return JSONResponse(
            status_code=503,
            content={"detail": f"the feature store is unavailable: {error}"},
            headers={"Retry-After": "1"},
        )

    @app.post(
        "/recommend", response_model=RecommendResponse, responses=_errors(400, 413, 503)
    )
    def recommend(request: RecommendRequest) -> Response:
        # Returned as a response, not validated again: `Service.recommend`
        # builds exactly `RecommendResponse`'s fields (the tests and the
        # schema fuzz check it). orjson writes the 600 items in 0.06 ms, the
        # standard library in 1 ms.
        feed = orjson.dumps(service.recommend(request))
        return Response(feed, media_type="application/json")

    @app.post(
        "/events",
        dependencies=[Depends(authorised)],
        responses=_errors(400, 401, 413, 503),
    )
    def events(request: EventsRequest) -> dict[str, int]:
        return {"accepted": service.events(request)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/users")
    def users(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        """Some users of the window with their profiles, for the demo page."""
        table = service.models.recaller.users.head(limit)
        behaviour = service.models.behaviour
        if behaviour in table.columns:
            table = table.drop(behaviour)
        return {"users": table.to_dicts()}

    @app.get("/users/{user_id}", responses=_errors(404, 503))
    def user(user_id: Annotated[str, Path_(max_length=128)]) -> dict[str, Any]:
        """A user's profile and recent clicks as the store holds them now."""
        models = service.models
        typed = _typed_id(models, models.recaller.user_column, user_id, ["path"])
        profile = service.store.user(typed)
        if profile is None:
            raise HTTPException(
                status_code=404, detail=f"no profile for user {typed!r}"
            )
        return {
            "user_id": typed,
            "profile": profile,
            "history": service.store.history(typed),
        }

    @app.get("/health", responses=_errors(503))
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(
            generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.post(
        "/admin/reload",
        dependencies=[Depends(authorised)],
        responses=_errors(400, 401, 413, 422),
    )
    def reload(request: ReloadRequest | None = None) -> dict[str, str]:
        request = request or ReloadRequest()
        previous = service.models.version
        try:
            models = service.reload(
                Path(request.run) if request.run else None,
                Path(request.recall) if request.recall else None,
            )
        except ValueError as error:
            raise HTTPException(
                status_code=422,
                detail=f"{error}; still serving {previous}",
            ) from None
        return {"model_version": models.version, "previous": previous}

    return app


def newest_run(runs_dir: Path) -> Path | None:
    """The ranking run under `runs_dir` whose model was written last."""
    best, best_time = None, -1.0
    for model_json in Path(runs_dir).glob("*/model/model.json"):
        if '"two_tower"' in model_json.read_text():
            continue
        stamp = model_json.stat().st_mtime
        if stamp > best_time:
            best, best_time = model_json.parent.parent, stamp
    return best


def _watch(service: Service, settings: ServiceSettings, stop: threading.Event) -> None:
    """Reload whenever a newer ranking run appears under `runs_dir`."""
    while not stop.wait(settings.watch_seconds):
        try:
            run = newest_run(settings.runs_dir)
            if run is None or model_version(run) == service.models.version:
                continue
            service.reload(run, None)
        except Exception as error:  # a half-written run: try again next time
            logger.warning("watch: %s", error)
