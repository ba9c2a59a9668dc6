"""Serving load: the real `likely serve` on loopback under a fixed request rate.

It builds what it serves in a work folder (default .likely/bench/serve, reused
when present): synthetic logs (8 days of 100k impressions, 20k users, 20k
items, so recall always has its 1,000 candidates), a ranking run of
configs/synthetic.yaml (its Wide-ResNet, one epoch) on the week before
2026-11-08 and a two-tower recall run (two epochs) on the same window.

Then, for each store backend (SQLite in a fresh file; Redis in a fresh
`redis-server --appendonly yes --appendfsync always` on a free port), it
starts `likely serve` as a subprocess on 127.0.0.1, warms it with a few
requests, and sends an open-loop load: `--requests` requests issued on a
fixed schedule at `--rate` per second whatever the answers do, from a pool
of threads that each keep one HTTP/1.1 connection. Most are POST /recommend
(k=600, candidates=1000) for a user of the window with clicks in their
history (the two-tower path; about half the window's users have none and
would get the popularity list) or, for `--unknown-share` of them, a user it
has never seen (the popularity list); `--events-share` are POST /events (ten
impressions and a click) with the write token. The load stops by itself.

Latency is measured by the client from each request's scheduled send time to
the end of reading its answer, so time queued behind a slow request counts.
The server's own `timings_ms` give the stages (store, recall, rank; `total`
is their sum and leaves out request parsing and the response's building and
serialisation, which the end-to-end figure holds). The CPU time the service,
the client and Redis used over the load, per request, says what each costs.
`--torch-threads` sets the service's torch threads (default torch's own, one
a core).

Prints a table and writes JSON (default benchmarks/results/serve_load.json):

    python benchmarks/serve_load.py                      # 1,500 at 50/s each
    python benchmarks/serve_load.py --requests 300 --rate 20 --backends sqlite
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Run as a script or loaded by path: the sibling modules are beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BACKENDS = ("sqlite", "redis")
TARGET_DATE = "2026-11-08"
WORLD = {
    "days": 8,
    "rows_per_day": 100_000,
    "num_users": 20_000,
    "num_items": 20_000,
    "seed": 11,
}
RANKING_EPOCHS, RECALL_EPOCHS = 1, 2
TRAIN_THREADS = 2
K, CANDIDATES = 600, 1000
WARM_UP = 20
CLIENT_THREADS = 32
UNKNOWN_BASE = 10_000_000  # user ids from here up are unknown to the window
READY = "world.json"


# ------------------------------------------------------------------- world


def build_world(folder: Path) -> dict:
    """Logs, a ranking run and a recall run in `folder`; reused if complete.

    Returns:
        The world's description: `ranking` and `recall` run folders, the
        model, and build seconds.
    """
    ready = folder / READY
    if ready.is_file():
        world = json.loads(ready.read_text())
        if world["settings"] == WORLD and _loads(world):
            return world
    import logging

    import yaml

    from likely.config import load_config
    from likely.data.prepare import prepare
    from likely.data.synthetic import generate
    from likely.data.windows import parse_date
    from likely.recall.artifact import build_artifact
    from likely.recall.two_tower import RetrievalObjective
    from likely.train.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    seconds = {}
    started = time.perf_counter()
    logs = folder / "logs"
    generate(logs, **WORLD)
    seconds["generate"] = time.perf_counter() - started
    print(f"logs written in {seconds['generate']:.0f}s", flush=True)

    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(logs)
    raw["data"]["cache_dir"] = str(folder / "cache")
    raw["train"] = {"epochs": RANKING_EPOCHS, "threads": TRAIN_THREADS}
    raw["recall"] = {
        "train": {
            "batch_size": 1024,
            "epochs": RECALL_EPOCHS,
            "learning_rate": 2e-3,
            "threads": TRAIN_THREADS,
        }
    }
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    started = time.perf_counter()
    prepared = prepare(config, parse_date(TARGET_DATE))
    seconds["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    ranking = folder / "ranking"
    result = Trainer(config, prepared, ranking).fit()
    seconds["ranking"] = time.perf_counter() - started
    print(
        f"ranking run trained in {seconds['ranking']:.0f}s, "
        f"test AUC {result.metrics['test']['auc']:.4f}",
        flush=True,
    )

    started = time.perf_counter()
    recall = folder / "recall"
    recall_config = config.model_copy(update={"train": config.recall.train})
    objective = RetrievalObjective(recall_config, prepared)
    Trainer(recall_config, prepared, recall, objective=objective).fit()
    summary = build_artifact(recall, recall_config, prepared)
    seconds["recall"] = time.perf_counter() - started
    print(
        f"recall run trained in {seconds['recall']:.0f}s: {summary['items']:,} "
        f"items, {summary['users']:,} users",
        flush=True,
    )

    world = {
        "settings": WORLD,
        "target_date": TARGET_DATE,
        "ranking": str(ranking),
        "recall": str(recall),
        "model": raw["model"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    ready.write_text(json.dumps(world))  # last: a killed build is rebuilt
    return world


def _loads(world: dict) -> bool:
    """Whether this code still loads the world's runs (models change)."""
    from likely.recall.artifact import Recaller
    from likely.train.predict import load_run

    try:
        load_run(Path(world["ranking"]))
        Recaller.load(Path(world["recall"]), with_index=False)
    except Exception as error:  # whatever it is, building afresh answers it
        print(f"rebuilding {READY}'s runs, which no longer load: {error}")
        return False
    return True


def who_and_what(world: dict) -> tuple[list, list]:
    """The window's users with clicks in their history, and the catalogue."""
    from likely.recall.artifact import Recaller

    recaller = Recaller.load(Path(world["recall"]), with_index=False)
    users = recaller.users
    if recaller.behaviour is not None:
        users = users.filter(users[recaller.behaviour].list.len() > 0)
    items = recaller.items[recaller.item_column].to_list()
    if len(items) <= CANDIDATES:
        raise RuntimeError(
            f"the window has {len(items)} items; recall needs more than "
            f"{CANDIDATES} to return a full candidate list"
        )
    return users[recaller.user_column].to_list(), items


# ----------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A fresh redis-server with the durability the store asks for."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    command = [
        server,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
        *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def redis_version() -> str | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    done = subprocess.run([server, "--version"], capture_output=True, text=True)
    return done.stdout.strip()


def start_service(
    world: dict, store: str, token: str, log: Path, threads: int | None = None
) -> tuple[subprocess.Popen, int]:
    """`likely serve` on a free loopback port, once /health answers; with
    `threads`, its torch uses that many threads (OMP_NUM_THREADS)."""
    port = free_port()
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    likely = Path(sys.executable).with_name("likely")
    command = [
        str(likely) if likely.is_file() else "likely",
        "serve",
        *("--run", world["ranking"], "--recall", world["recall"]),
        *("--store", store, "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LIKELY_TOKEN": token, **env},
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                connection.close()
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"likely serve did not start; its output:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------- load


@dataclass(frozen=True)
class Call:
    """One request of the plan, due `at` seconds after the load starts."""

    at: float
    path: str
    body: bytes


@dataclass
class Answer:
    """What came back for one `Call`."""

    path: str
    status: int  # 0: no answer (an exception)
    latency_ms: float  # from the scheduled send time to the last byte read
    lag_ms: float = 0.0  # how late the client began sending it (its own delay)
    timings_ms: dict | None = None
    items: int = 0
    source: str | None = None  # the recall step of the feed's first item
    error: str | None = None


def plan(
    requests: int,
    rate: float,
    users: list,
    items: list,
    *,
    unknown_share: float = 0.05,
    events_share: float = 0.05,
    seed: int = 0,
) -> list[Call]:
    """`requests` calls evenly spaced at `rate` per second: recommendations
    for users drawn from `users` (an `unknown_share` of them new ids) and an
    `events_share` of event batches (ten impressions of `items`, one click)."""
    rng = np.random.default_rng(seed)
    calls = []
    for i in range(requests):
        at = i / rate
        if rng.random() < unknown_share:
            user = UNKNOWN_BASE + int(rng.integers(1_000_000))
        else:
            user = users[int(rng.integers(len(users)))]
        if rng.random() < events_share:
            shown = [items[int(j)] for j in rng.integers(len(items), size=10)]
            events = [
                {
                    "type": "impression",
                    "user_id": user,
                    "item_id": item,
                    "context": {"position": position},
                }
                for position, item in enumerate(shown)
            ]
            events.append({"type": "click", "user_id": user, "item_id": shown[0]})
            body = {"events": events}
            calls.append(Call(at, "/events", json.dumps(body).encode()))
        else:
            body = {"user_id": user, "k": K, "candidates": CANDIDATES}
            calls.append(Call(at, "/recommend", json.dumps(body).encode()))
    return calls


class Client:
    """Threads that each keep one HTTP/1.1 connection to the service."""

    def __init__(self, port: int, token: str, threads: int = CLIENT_THREADS):
        self.port = port
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        }
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="load")

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.local.connection = connection
        return connection

    def send(self, call: Call, due: float) -> Answer:
        """POST `call` now; latency counts from `due` (perf_counter)."""
        lag = (time.perf_counter() - due) * 1000
        try:
            connection = self._connection()
            connection.request("POST", call.path, call.body, self.headers)
            response = connection.getresponse()
            payload = response.read()
            latency = (time.perf_counter() - due) * 1000
        except (OSError, http.client.HTTPException) as error:
            self.local.connection = None
            latency = (time.perf_counter() - due) * 1000
            return Answer(call.path, 0, latency, lag, error=repr(error))
        answer = Answer(call.path, response.status, latency, lag)
        if response.status != 200:
            answer.error = payload[:300].decode(errors="replace")
        elif call.path == "/recommend":
            # Parsed after the clock stopped: the client's JSON work is not
            # the service's latency.
            body = json.loads(payload)
            answer.timings_ms = body["timings_ms"]
            answer.items = len(body["items"])
            answer.source = body["items"][0]["stage"] if body["items"] else None
        return answer

    def run(self, calls: list[Call]) -> tuple[list[Answer], float]:
        """Issue `calls` on their schedule; the answers and the seconds taken
        from the first scheduled send to the last answer."""
        futures = []
        start = time.perf_counter() + 0.05
        for call in calls:
            due = start + call.at
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            futures.append(self.pool.submit(self.send, call, due))
        answers = [future.result() for future in futures]
        return answers, time.perf_counter() - start

    def close(self) -> None:
        self.pool.shutdown()


# ----------------------------------------------------------------- figures


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p90": round(float(np.percentile(array, 90)), 2),
        "p99": round(float(np.percentile(array, 99)), 2),
        "max": round(float(array.max()), 2),
    }


def summarise(answers: list[Answer], seconds: float, rate: float) -> dict:
    """Rates, errors, end-to-end and per-stage latency of one load."""
    recommend = [a for a in answers if a.path == "/recommend" and a.status == 200]
    events = [a for a in answers if a.path == "/events" and a.status == 200]
    errors = [a for a in answers if a.status != 200]
    stages: dict[str, dict] = {}
    for stage in ("store", "recall", "rank", "total"):
        values = [a.timings_ms[stage] for a in recommend if stage in a.timings_ms]
        stages[stage] = percentiles(values)
    outside = [a.latency_ms - a.timings_ms["total"] for a in recommend if a.timings_ms]
    return {
        "requests": len(answers),
        "target_rate": rate,
        "achieved_rate": round(len(answers) / seconds, 2),
        "seconds": round(seconds, 2),
        "errors": len(errors),
        "error_examples": sorted({f"{a.status} {a.error}" for a in errors})[:5],
        "short_feeds": sum(a.items != K for a in recommend),
        "two_tower_feeds": sum(a.source == "two_tower" for a in recommend),
        "popularity_feeds": sum(a.source == "popularity" for a in recommend),
        "recommend_ms": percentiles([a.latency_ms for a in recommend]),
        "events_ms": percentiles([a.latency_ms for a in events]),
        "server_stages_ms": stages,
        "outside_stages_ms": percentiles(outside),
        # Time the load generator itself was late; a large figure means the
        # client, not the service, delayed requests.
        "client_lag_ms": percentiles([a.lag_ms for a in answers]),
    }


def bench_backend(
    backend: str,
    world: dict,
    calls: list[Call],
    warm: list[Call],
    rate: float,
    workdir: Path,
    threads: int | None = None,
) -> dict:
    """Start the store and the service, warm up, run the load, stop them."""
    token = "bench-token"
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"{backend}-") as tmp:
        tmp = Path(tmp)
        redis_process = None
        if backend == "redis":
            redis_process, store = start_redis(tmp)
        else:
            store = f"sqlite:///{tmp / 'store.db'}"
        started = time.perf_counter()
        service, port = None, None
        try:
            service, port = start_service(
                world, store, token, tmp / "serve.log", threads
            )
            startup = time.perf_counter() - started
            client = Client(port, token)
            for call in warm:
                client.send(call, time.perf_counter())
            load_before = os.getloadavg()
            processes = {"service": service.pid, "client": os.getpid()}
            if redis_process is not None:
                processes["redis"] = redis_process.pid
            cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
            # The client's own objects (the world's tables, the plan, an
            # earlier backend's answers) leave the garbage collector's view:
            # a full collection in this process paused its sends by 100 ms
            # and more, and the late requests then queued in the service.
            gc.collect()
            gc.freeze()
            answers, seconds = client.run(calls)
            cpu = {
                name: cpu_seconds(pid) - cpu_before[name]
                for name, pid in processes.items()
            }
            load_after = os.getloadavg()
            client.close()
        finally:
            if service is not None:
                stop(service)
            if redis_process is not None:
                redis_process.kill()
                redis_process.wait()
    result = summarise(answers, seconds, rate)
    return {
        "backend": backend,
        "startup_seconds": round(startup, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        **result,
        # CPU time over the load, per request sent: what each part costs.
        "cpu_ms_per_request": {
            name: round(seconds * 1000 / len(calls), 2) for name, seconds in cpu.items()
        },
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    import fastapi
    import polars
    import torch
    import uvicorn

    name = cpu_name()
    return {
        "cpu": name,
        "cores": len(os.sched_getaffinity(0)),
        # The service's torch: it sets no thread count of its own, so it
        # uses this default or --torch-threads.
        "torch_threads_default": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "polars": polars.__version__,
        "redis_server": redis_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(results: list[dict]) -> str:
    header = (
        f"{'backend':<7} {'rate/s':>6} {'errors':>6} {'p50':>7} {'p90':>7} "
        f"{'p99':>7} {'max':>7}  {'store':>11} {'recall':>11} {'rank':>11} "
        f"{'server':>11} {'events p99':>10} {'CPU/req':>7} {'lag p99':>7}"
    )
    lines = [
        "end to end ms (client, from the scheduled send); server stages p50/p99 "
        "ms; the service's CPU ms per request; how late the client sent (p99)",
        header,
        "-" * len(header),
    ]
    for r in results:
        e2e, stages = r["recommend_ms"], r["server_stages_ms"]
        pair = {
            stage: f"{s['p50']:.1f}/{s['p99']:.1f}" if s else "-"
            for stage, s in stages.items()
        }
        events = r["events_ms"].get("p99")
        lines.append(
            f"{r['backend']:<7} {r['achieved_rate']:>6.1f} {r['errors']:>6} "
            f"{e2e['p50']:>7.1f} {e2e['p90']:>7.1f} {e2e['p99']:>7.1f} "
            f"{e2e['max']:>7.1f}  {pair['store']:>11} {pair['recall']:>11} "
            f"{pair['rank']:>11} {pair['total']:>11} "
            f"{f'{events:.1f}' if events is not None else '-':>10} "
            f"{r['cpu_ms_per_request']['service']:>7.1f} "
            f"{r['client_lag_ms']['p99']:>7.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="the service's torch threads (OMP_NUM_THREADS); default torch's own",
    )
    parser.add_argument("--unknown-share", type=float, default=0.05)
    parser.add_argument("--events-share", type=float, default=0.05)
    parser.add_argument("--workdir", type=Path, default=Path(".likely/bench/serve"))
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "serve_load.json"
    )
    args = parser.parse_args()
    backends = args.backends.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend {unknown}; choose from: {', '.join(BACKENDS)}")
    if args.requests < 1 or args.rate <= 0:
        parser.error(
            f"--requests {args.requests} and --rate {args.rate} must be positive"
        )
    args.workdir = args.workdir.resolve()
    started = time.perf_counter()
    world = build_world(args.workdir)
    print(f"world ready in {time.perf_counter() - started:.0f}s", flush=True)
    users, items = who_and_what(world)
    calls = plan(
        args.requests,
        args.rate,
        users,
        items,
        unknown_share=args.unknown_share,
        events_share=args.events_share,
    )
    warm = plan(WARM_UP, 1000, users, items, seed=99)
    results = []
    for backend in backends:
        results.append(
            bench_backend(
                backend,
                world,
                calls,
                warm,
                args.rate,
                args.workdir,
                args.torch_threads,
            )
        )
        r = results[-1]
        print(
            f"[{backend}] {r['requests']:,} requests at {r['achieved_rate']:.1f}/s, "
            f"{r['errors']} errors, p99 {r['recommend_ms']['p99']:.1f} ms "
            f"(load average before {r['load_average_before'][0]})",
            flush=True,
        )
    report = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "settings": {
            "world": WORLD,
            "model": world["model"],
            "target_date": TARGET_DATE,
            "ranking_epochs": RANKING_EPOCHS,
            "recall_epochs": RECALL_EPOCHS,
            "requests": args.requests,
            "rate": args.rate,
            "k": K,
            "candidates": CANDIDATES,
            "unknown_share": args.unknown_share,
            "events_share": args.events_share,
            "warm_up_requests": WARM_UP,
            "client_threads": CLIENT_THREADS,
            "service_torch_threads": args.torch_threads,
        },
        "build_seconds": world["seconds"],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
