"""Ranking latency in process: one user's 1,000 candidates through the `Ranker`.

The model is the training benchmark's DeepFM (benchmarks/train_speed.py: 13
dense and 26 sparse Criteo-shaped fields, vocabularies geometric from 10 to
100k, embedding dim 16, MLP 400x3), trained one epoch on 100k generated rows
with `Trainer` so that the run folder is the project's own. The fields are
split in halves by side: I1-I7 and C1-C13 describe the user, I8-I13 and
C14-C26 (the larger vocabularies) the item. The catalogue is the item-side
columns of 20k generated rows, encoded once when the `Ranker` is built.

A request is one user row (its user-side columns) and 1,000 candidate rows
drawn from the catalogue, scored by `Ranker.logits`: the user's row encoded,
the `(K, F)` batch assembled (user fields broadcast, item fields gathered),
`model.score` under inference mode. After a warm-up it times, on
`--threads` torch threads (default 2), in fp32 and in bf16 autocast (what
`serve.precision: auto` picks where the CPU has bf16 instructions):

- end to end, `--requests` users never seen before, then the same users again
  (the ranker keeps encoded user rows between requests; the service warms
  every user of its window at start);
- the same path split in its steps, on other new users: the query row's
  encoding (`Ranker.query_row`), the batch's assembly (`Ranker.batch`) and the
  model's forward pass (`model.score`) in each precision, with how far bf16's
  logits and its top 60% of candidates stray from fp32's.

The target (p99 at most 10 ms; DeepCTR-Torch's `predict` took 14-28 ms on the
same 1,000 rows, already encoded) is judged like for like: on users whose row
is encoded (the service encodes every user of its window at start), in the
precision the service picks here. Users seen the first time are reported
beside it, with the cost of encoding their row.

Prints a table and writes JSON (default benchmarks/results/rank_latency.json):

    python benchmarks/rank_latency.py
    python benchmarks/rank_latency.py --requests 200 --candidates 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the training benchmark's data and settings
    sys.path.insert(0, str(HERE))

from machine import cpu_name  # noqa: E402
from train_speed import (  # noqa: E402
    EMBEDDING_DIM,
    HIDDEN_DIMS,
    NUM_DENSE,
    NUM_SPARSE,
    experiment_config,
    generate,
)

VOCAB = "small"
TRAIN_ROWS, TEST_ROWS = 100_000, 20_000
CATALOGUE = 20_000
USER_DENSE, USER_SPARSE = 7, 13  # the first fields of each kind; the rest: item
WARM_UP = 20


def side(kind: str, index: int) -> str:
    """The side of field `index` (0-based) of `kind`, 'dense' or 'sparse'."""
    user_fields = USER_DENSE if kind == "dense" else USER_SPARSE
    return "user" if index < user_fields else "item"


def build_ranker(folder: Path, train_rows: int, catalogue: int, users: int):
    """A trained run in `folder/run` (reused when it loads) and its `Ranker`.

    Returns:
        The ranker and `users` rows to query with (raw user-side columns).
    """
    import logging

    import polars as pl

    from likely.data.prepare import prepare
    from likely.serve.ranker import Ranker
    from likely.train.predict import load_run
    from likely.train.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    data = folder / f"{VOCAB}-{train_rows}"
    generate(data, train_rows, TEST_ROWS, VOCAB)
    config = experiment_config(data, VOCAB, side=side)
    run = data / "run"
    try:
        load_run(run)
    except Exception as error:  # none yet, or one this code no longer loads
        if run.exists():
            print(f"retraining {run}, which does not load: {error}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
        Trainer(config, prepare(config), run).fit()
    item_columns = [f.source for f in config.features if f.side == "item"]
    user_columns = [f.source for f in config.features if f.side == "user"]
    # Items from the held-out rows, users from the training rows.
    test = pl.read_parquet(data / "test.parquet")
    items = test.select(item_columns).head(catalogue)
    users = pl.read_parquet(data / "train.parquet", n_rows=users)
    ranker = Ranker.load(run, items, test.clear())
    return ranker, users.select(user_columns).to_dicts()


def stats(times: list[float]) -> dict[str, float]:
    array = np.asarray(times)
    return {
        "p50_ms": round(float(np.percentile(array, 50)), 3),
        "p90_ms": round(float(np.percentile(array, 90)), 3),
        "p99_ms": round(float(np.percentile(array, 99)), 3),
        "mean_ms": round(float(array.mean()), 3),
    }


def measure(ranker, users: list[dict], requests: int, candidates: int) -> dict:
    """Milliseconds per request, end to end and step by step; see the module
    docstring for the passes."""
    import torch

    needed = WARM_UP + 3 * requests
    if len(users) < needed:
        raise ValueError(
            f"{len(users)} user rows; {needed} are needed for {requests} requests"
        )
    rng = np.random.default_rng(0)
    draws = [rng.choice(ranker.num_items, candidates, replace=False) for _ in users]
    passes = {
        "warm": slice(0, WARM_UP),
        "fp32": slice(WARM_UP, WARM_UP + requests),
        "bf16": slice(WARM_UP + requests, WARM_UP + 2 * requests),
        "split": slice(WARM_UP + 2 * requests, needed),
    }

    def end_to_end(chosen: slice) -> list[float]:
        times = []
        for user, rows in zip(users[chosen], draws[chosen], strict=True):
            started = time.perf_counter()
            ranker.logits(user, {}, rows)
            times.append((time.perf_counter() - started) * 1000)
        return times

    results: dict[str, dict] = {}
    serving = ranker.bf16
    try:
        for precision in ("fp32", "bf16"):
            ranker.bf16 = precision == "bf16"
            end_to_end(passes["warm"])
            results[f"end_to_end_new_users_{precision}"] = stats(
                end_to_end(passes[precision])
            )
            results[f"end_to_end_same_users_again_{precision}"] = stats(
                end_to_end(passes[precision])
            )
    finally:
        ranker.bf16 = serving
    steps: dict[str, list[float]] = {k: [] for k in ("query", "batch", "fp32", "bf16")}
    model = ranker.run.model
    differences, overlaps = [], []
    chosen = passes["split"]
    for user, rows in zip(users[chosen], draws[chosen], strict=True):
        with torch.inference_mode():
            t0 = time.perf_counter()
            query = ranker.query_row(user, {})
            t1 = time.perf_counter()
            batch = ranker.batch(query, rows).to(ranker.device)
            t2 = time.perf_counter()
            logits = model.score(batch).float().cpu().numpy()
            t3 = time.perf_counter()
            with torch.autocast(ranker.device.type, torch.bfloat16):
                low = model.score(batch).float().cpu().numpy()
            t4 = time.perf_counter()
        steps["query"].append((t1 - t0) * 1000)
        steps["batch"].append((t2 - t1) * 1000)
        steps["fp32"].append((t3 - t2) * 1000)
        steps["bf16"].append((t4 - t3) * 1000)
        differences.append(float(np.abs(low - logits).max()))
        overlaps.append(top_overlap(logits, low, int(0.6 * candidates)))
    return {
        **results,
        "query_row": stats(steps["query"]),
        "batch_assembly": stats(steps["batch"]),
        "model_forward_fp32": stats(steps["fp32"]),
        "model_forward_bf16": {
            **stats(steps["bf16"]),
            "max_abs_logit_difference": round(max(differences), 4),
            "mean_top_overlap": round(float(np.mean(overlaps)), 4),
        },
    }


def top_overlap(logits: np.ndarray, other: np.ndarray, k: int) -> float:
    """Share of the top `k` by `logits` that are also the top `k` by `other`
    (what a feed of k items would keep)."""
    best = np.argpartition(-logits, k - 1)[:k]
    also = np.argpartition(-other, k - 1)[:k]
    return len(np.intersect1d(best, also)) / k


def machine(threads: int) -> dict:
    import polars
    import torch

    name = cpu_name()
    return {
        "cpu": name,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "polars": polars.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


TARGET_P99_MS = 10.0


def table(results: dict) -> str:
    names = {
        "end_to_end_new_users_fp32": "Ranker.logits, new users, fp32",
        "end_to_end_same_users_again_fp32": "  same users again, fp32",
        "end_to_end_new_users_bf16": "Ranker.logits, new users, bf16",
        "end_to_end_same_users_again_bf16": "  same users again, bf16",
        "query_row": "query row encoding (new users)",
        "batch_assembly": "batch assembly",
        "model_forward_fp32": "model forward, fp32",
        "model_forward_bf16": "model forward, bf16 autocast",
    }
    header = f"{'step':<34} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    lines = [header, "-" * len(header)]
    for key, name in names.items():
        s = results[key]
        lines.append(
            f"{name:<34} {s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['mean_ms']:>8.2f}"
        )
    bf16 = results["model_forward_bf16"]
    lines.append(
        f"bf16 against fp32: logits differ by at most "
        f"{bf16['max_abs_logit_difference']:.3f}; the top 60% agree on "
        f"{bf16['mean_top_overlap']:.1%} of items"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument(
        "--workdir", type=Path, default=Path(".likely/bench/rank_latency")
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "rank_latency.json"
    )
    args = parser.parse_args()
    if not 1 <= args.candidates <= CATALOGUE:
        parser.error(f"--candidates {args.candidates} is not in 1..{CATALOGUE}")
    if not 1 <= 3 * args.requests + WARM_UP <= args.train_rows:
        parser.error(f"--requests {args.requests} needs more than --train-rows")
    import torch

    from likely.train.trainer import pick_precision

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ranker, users = build_ranker(
        args.workdir.resolve(),
        args.train_rows,
        CATALOGUE,
        users=WARM_UP + 3 * args.requests,
    )
    print(f"ranker ready in {time.perf_counter() - started:.0f}s", flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = measure(ranker, users, args.requests, args.candidates)
    # The precision `serve.precision: auto` picks on this machine.
    serving = pick_precision("auto", ranker.device)
    p99 = results[f"end_to_end_same_users_again_{serving}"]["p99_ms"]
    report = {
        "machine": machine(args.threads),
        "command": " ".join(sys.argv),
        "load_average_before": load_before,
        "settings": {
            "model": "deepfm",
            "embedding_dim": EMBEDDING_DIM,
            "hidden_dims": HIDDEN_DIMS,
            "dense_fields": {"user": USER_DENSE, "item": NUM_DENSE - USER_DENSE},
            "sparse_fields": {"user": USER_SPARSE, "item": NUM_SPARSE - USER_SPARSE},
            "vocab": VOCAB,
            "train_rows": args.train_rows,
            "catalogue": CATALOGUE,
            "candidates": args.candidates,
            "requests": args.requests,
            "warm_up": WARM_UP,
        },
        "serving_precision": serving,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 <= TARGET_P99_MS,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    verdict = "met" if p99 <= TARGET_P99_MS else "missed"
    print(
        f"target p99 <= {TARGET_P99_MS:.0f} ms (encoded users, {serving}): "
        f"{verdict}; new users p99 "
        f"{results[f'end_to_end_new_users_{serving}']['p99_ms']:.1f} ms"
    )
    print(f"load average before: {load_before}; wrote {args.out}")


if __name__ == "__main__":
    main()
