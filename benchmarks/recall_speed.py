"""Recall speed: FAISS index build time and one-user query latency.

For each catalogue size, seeded random unit vectors of the recall model's
width (64) stand in for item vectors; each index kind is built from them and
then asked for 1,000 neighbours of one user vector at a time, `--queries`
times, after a few warm-up queries; builds and queries run on one thread by
default. Random vectors are the hard case for the approximate kinds (no
clusters to exploit), so their recall@1000 against the exact answer is a
lower bound; with `--run` it is also measured on a trained run's vectors.

HNSW and IVF builds grow faster than linearly; by default they run up to
100k items (`--approximate-max` raises that).

With `--run`, a trained recall run is also timed end to end: raw user row to
encoded features, user tower, index search, item ids (`Recaller.recall`).

Prints a table and writes JSON (default benchmarks/results/recall_speed.json).

    python benchmarks/recall_speed.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from likely.config import ExactIndexConfig, HNSWIndexConfig, IVFIndexConfig
from likely.recall.index import ItemIndex

# Run as a script or loaded by path: the sibling modules are beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name

NEIGHBOURS = 1000
WARM_UP = 5


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 262_144):  # bounded temporary float64 memory
        part = rng.standard_normal((min(262_144, rows - start), dim))
        out[start : start + len(part)] = part / np.linalg.norm(
            part, axis=1, keepdims=True
        )
    return out


def latencies(search, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of `search(one query)` for each query after a warm-up."""
    for query in queries[:WARM_UP]:
        search(query[None])
    times = []
    for query in queries[WARM_UP:]:
        started = time.perf_counter()
        search(query[None])
        times.append((time.perf_counter() - started) * 1000)
    return np.asarray(times)


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth (Q, K)` that `found (Q, K)` holds."""
    shares = [len(set(a) & set(b)) / b.size for a, b in zip(found, truth, strict=True)]
    return round(float(np.mean(shares)), 4)


def bench_index(kind, items, queries, exact_top) -> dict:
    started = time.perf_counter()
    index = ItemIndex.build(items, np.arange(len(items)), kind)
    build = time.perf_counter() - started
    times = latencies(lambda q: index.search(q, NEIGHBOURS), queries)
    found = index.search(queries[:20], NEIGHBOURS)[1]
    return {
        "kind": kind.kind,
        "config": kind.model_dump(mode="json"),
        "items": len(items),
        "build_seconds": round(build, 3),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "recall_at_1000_vs_exact": overlap(found, exact_top),
    }


def bench_run(run: Path, queries: int) -> dict:
    """End-to-end latency of a trained recall run, over the window's users
    that have a history."""
    import polars as pl

    from likely.recall.artifact import Recaller

    recaller = Recaller.load(run)
    users = recaller.users
    if recaller.behaviour is not None:
        users = users.filter(pl.col(recaller.behaviour).list.len() > 0)
    rows = users.head(queries + WARM_UP).to_dicts()
    history = recaller.behaviour
    for row in rows[:WARM_UP]:
        recaller.recall(row, row.get(history) if history else None)
    times = []
    for row in rows[WARM_UP:]:
        started = time.perf_counter()
        found = recaller.recall(row, row.get(history) if history else None)
        times.append((time.perf_counter() - started) * 1000)
        assert found.source == "two_tower"
    # The approximate kinds on the run's own vectors, against the exact answer.
    items = np.load(run / "recall" / "item_vectors.npy")
    vectors = recaller.user_vectors(users.head(100))
    exact = ItemIndex.build(items, np.arange(len(items)), ExactIndexConfig())
    truth = exact.search(vectors, NEIGHBOURS)[1]
    approximate = {}
    for kind in (HNSWIndexConfig(), IVFIndexConfig()):
        index = ItemIndex.build(items, np.arange(len(items)), kind)
        approximate[kind.kind] = overlap(index.search(vectors, NEIGHBOURS)[1], truth)
    return {
        "run": str(run),
        "items": len(recaller.index),
        "index": recaller.index.config.kind,
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "recall_at_1000_vs_exact": approximate,
    }


def machine() -> dict:
    name = cpu_name()
    return {
        "cpu": name,
        "cores": len(os.sched_getaffinity(0)),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--approximate-max", type=int, default=100_000)
    parser.add_argument("--run", type=Path, help="a recall run to time end to end")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="FAISS and torch threads; one query per thread is how a service "
        "serves, and on a shared machine more threads wait on each other",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/recall_speed.json")
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    rows = []
    queries = unit_vectors(args.queries + WARM_UP, args.dim, seed=1)
    for size in [int(s) for s in args.sizes.split(",")]:
        items = unit_vectors(size, args.dim, seed=0)
        exact_top = np.argsort(-(queries[:20] @ items.T), axis=1)[:, :NEIGHBOURS]
        kinds = [ExactIndexConfig()]
        if size <= args.approximate_max:
            kinds += [HNSWIndexConfig(), IVFIndexConfig()]
        for kind in kinds:
            row = bench_index(kind, items, queries, exact_top)
            rows.append(row)
            print(
                f"{row['items']:>9,} {row['kind']:<6} "
                f"build {row['build_seconds']:8.2f}s"
                f"  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
                f"  recall@1000 vs exact {row['recall_at_1000_vs_exact']:.3f}",
                flush=True,
            )
    end_to_end = bench_run(args.run, args.queries) if args.run else None
    if end_to_end:
        print(
            f"end to end ({end_to_end['items']:,} items, {end_to_end['index']}): "
            f"p50 {end_to_end['p50_ms']:.2f} ms, p99 {end_to_end['p99_ms']:.2f} ms; "
            f"recall@1000 vs exact on its vectors: "
            f"{end_to_end['recall_at_1000_vs_exact']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "dim": args.dim,
        "neighbours": NEIGHBOURS,
        "queries": args.queries,
        "indexes": rows,
        "end_to_end": end_to_end,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
