"""Training speed: likely's DeepFM against DeepCTR-Torch 0.3.0 and the MLP bound.

One run measures, on the same generated Criteo-shaped data (13 dense fields,
26 sparse fields with Zipf-distributed ids, vocabulary sizes geometric from 10
up) and the same settings (DeepFM, embedding dim 16, MLP 400x3, batch 4096,
Adam 1e-3, one epoch, 2 threads):

- likely: `prepare()` (not timed) and `Trainer.fit()` with the trainer's
  defaults; `--variants` adds runs with other precisions or `torch.compile`.
- DeepCTR-Torch: `DeepFM.fit` on exactly the ids and dense values likely
  encoded, in its own virtual environment (created here on first use, with the
  same torch), run by `benchmarks/deepctr_worker.py`.
- The bound: the MLP alone (same shapes, batch and optimizer, random input;
  forward, backward and step) in fp32 and in bf16 autocast.

Each measurement runs in a fresh process, so its peak RSS is its own. Training
samples/s counts the steps of the epoch only: model building, evaluation and
checkpoint writing are left out on both sides. AUC is on the held-out rows.

Prints a table with the ratios and writes JSON
(default benchmarks/results/train_speed.json):

    python benchmarks/train_speed.py                     # 1M rows, both vocabs
    python benchmarks/train_speed.py --rows 200000 --vocab small --skip-deepctr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEEPCTR_VENV = HERE / ".venv-deepctr"
NUM_DENSE, NUM_SPARSE = 13, 26
EMBEDDING_DIM, HIDDEN_DIMS, BATCH_SIZE = 16, [400, 400, 400], 4096
LEARNING_RATE, THREADS = 1e-3, 2
# Largest field of each vocabulary; the 26 sizes grow geometrically from 10 to
# it, which makes about 325k ids in all for `small` and 9.9M for `large`.
VOCABS = {"small": 100_000, "large": 4_000_000}
ZIPF_EXPONENT = 1.2


def field_sizes(largest: int) -> list[int]:
    """The 26 vocabulary sizes, geometric from 10 up to `largest`."""
    ratio = (largest / 10) ** (1 / (NUM_SPARSE - 1))
    return [round(10 * ratio**k) for k in range(NUM_SPARSE)]


# ---------------------------------------------------------------------- data


def generate(folder: Path, rows: int, test_rows: int, vocab: str) -> None:
    """Train and test Parquet with labels drawn from a known logistic model.

    The click logit is a weight per id of every field, dot products of small
    latent vectors for the pairs of the first eight fields (second-order
    signal, which FM and the MLP can learn and a linear model cannot), and a
    weight per dense field; the bias puts the click rate near 25%.
    """
    import polars as pl

    if (folder / "test.parquet").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    sizes = field_sizes(VOCABS[vocab])
    total = rows + test_rows
    ids = np.empty((total, NUM_SPARSE), dtype=np.int64)
    logit = np.full(total, -1.6)
    latent = []
    for f, size in enumerate(sizes):
        ids[:, f] = (rng.zipf(ZIPF_EXPONENT, total) - 1) % size
        logit += rng.normal(0.0, 0.25, size).astype(np.float32)[ids[:, f]]
        latent.append(rng.normal(0.0, 0.35, (size, 4)).astype(np.float32))
    for i in range(8):
        for j in range(i + 1, 8):
            logit += np.einsum(
                "nk,nk->n", latent[i][ids[:, i]], latent[j][ids[:, j]]
            ).astype(np.float64)
    dense = rng.zipf(1.8, (total, NUM_DENSE)).astype(np.float64) - 1
    dense_weights = rng.normal(0.0, 0.15, NUM_DENSE)
    logit += np.log1p(dense) @ dense_weights - 0.15 * np.log1p(dense).sum(1).mean()
    dense[rng.random(dense.shape) < 0.2] = np.nan  # missing counts, as in Criteo
    label = (rng.random(total) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    columns: dict[str, object] = {"label": label}
    for d in range(NUM_DENSE):
        columns[f"I{d + 1}"] = pl.Series(dense[:, d]).fill_nan(None)
    for f in range(NUM_SPARSE):
        columns[f"C{f + 1}"] = ids[:, f]
    frame = pl.DataFrame(columns)
    frame.slice(rows, test_rows).write_parquet(folder / "test.partial")
    frame.slice(0, rows).write_parquet(folder / "train.parquet")
    # Written last, so a killed run never leaves a half-made pair to reuse.
    (folder / "test.partial").replace(folder / "test.parquet")


def experiment_config(
    folder: Path,
    vocab: str,
    side: Callable[[str, int], str] | None = None,
    **train: object,
):
    """likely's config for the generated data; `train` overrides train settings.

    `side(kind, index)`, where given, names each field's side ('user' or
    'item') for kind 'dense' or 'sparse' (the serving benchmark splits them).
    """
    from likely.config import parse_config

    def sided(kind: str, index: int, spec: dict) -> dict:
        return spec if side is None else {**spec, "side": side(kind, index)}

    features = [
        sided("dense", d, {"name": f"I{d + 1}", "kind": "dense", "transform": "log1p"})
        for d in range(NUM_DENSE)
    ]
    # Hash buckets make each table exactly its field's size, as DeepCTR's
    # `vocabulary_size` does, whatever subset of ids the rows happen to use.
    features += [
        sided(
            "sparse",
            f,
            {
                "name": f"C{f + 1}",
                "kind": "sparse",
                "vocabulary": {"hash_buckets": size},
            },
        )
        for f, size in enumerate(field_sizes(VOCABS[vocab]))
    ]
    return parse_config(
        {
            "data": {
                "path": str(folder / "train.parquet"),
                "test_path": str(folder / "test.parquet"),
                "format": "parquet",
                "label": "label",
                "cache_dir": str(folder / "cache"),
            },
            "features": features,
            "embedding_dim": EMBEDDING_DIM,
            "model": {"name": "deepfm", "hidden_dims": HIDDEN_DIMS},
            "train": {
                "batch_size": BATCH_SIZE,
                "epochs": 1,
                "learning_rate": LEARNING_RATE,
                "threads": THREADS,
                **train,
            },
        }
    )


# ---------------------------------------------------------------- children


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_likely(folder: Path, vocab: str, variant: str) -> dict:
    """Train likely once in this process; samples/s over the training steps."""
    import logging

    from likely.data.prepare import prepare
    from likely.train.trainer import Trainer

    logging.basicConfig(level=logging.WARNING)
    overrides: dict[str, object] = {}
    if variant != "default":
        precision, _, compiled = variant.partition("+")
        overrides = {"precision": precision, "compile": compiled == "compile"}
    config = experiment_config(folder, vocab, **overrides)
    prepared = prepare(config)
    run_dir = folder / f"run-{os.getpid()}"
    last_step = [0.0]

    def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
        last_step[0] = time.perf_counter()

    try:
        trainer = Trainer(config, prepared, run_dir, on_step=on_step)
        rows = len(trainer.train_split)
        started = time.perf_counter()
        result = trainer.fit()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = last_step[0] - started
    label = f"default, {trainer.precision}" if variant == "default" else variant
    return {
        "system": f"likely ({label})",
        "precision": trainer.precision,
        "compile": config.train.compile,
        "embedding_optimizer": config.train.embedding_optimizer,
        "rows": rows,
        "train_seconds": seconds,
        "samples_per_second": rows / seconds,
        "auc": result.metrics["test"]["auc"],
        "logloss": result.metrics["test"]["logloss"],
        "peak_rss_mb": peak_rss_mb(),
    }


def child_mlp(precision: str, steps: int) -> dict:
    """The bound: the DeepFM's MLP alone on random input, forward/backward/step."""
    import torch
    from torch import nn

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    width = NUM_SPARSE * EMBEDDING_DIM + NUM_DENSE
    layers: list[nn.Module] = []
    for hidden in HIDDEN_DIMS:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mlp = nn.Sequential(*layers, nn.Linear(width, 1))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.BCEWithLogitsLoss()
    inputs = torch.randn(BATCH_SIZE, NUM_SPARSE * EMBEDDING_DIM + NUM_DENSE)
    labels = (torch.rand(BATCH_SIZE) < 0.25).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            logits = mlp(inputs).squeeze(-1)  # (B,)
        loss_fn(logits.float(), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return {
        "system": f"MLP bound ({precision})",
        "precision": precision,
        "steps": steps,
        "samples_per_second": steps * BATCH_SIZE / seconds,
    }


# ------------------------------------------------------------------ parent


def run_child(command: list[str], what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_deepctr_venv(venv: Path) -> Path:
    """DeepCTR-Torch 0.3.0 in its own venv, with the torch this process has.

    `--no-deps` because deepctr-torch pins old releases of torch and
    TensorFlow-era helpers; it needs only scikit-learn, tqdm, pandas and
    requests beside torch.
    """
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import deepctr_torch, sklearn, tqdm, pandas, requests"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(
        f"creating {venv} with torch=={torch_version} and "
        "deepctr-torch==0.3.0 (once; a few minutes)",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, "--no-deps", "deepctr-torch==0.3.0"], check=True)
    subprocess.run([*pip, "scikit-learn", "tqdm", "pandas", "requests"], check=True)
    return python


def machine() -> dict:
    import torch

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "bf16_instructions": "avx512_bf16" in flags or "amx_bf16" in flags,
        "memory_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def bench_vocab(args: argparse.Namespace, vocab: str, deepctr: Path | None) -> dict:
    folder = args.workdir / f"{vocab}-{args.rows}-{args.test_rows}"
    started = time.perf_counter()
    generate(folder, args.rows, args.test_rows, vocab)
    from likely.data.prepare import prepare

    prepared = prepare(experiment_config(folder, vocab))
    ids = sum(prepared.manifest["vocab_sizes"].values())
    print(
        f"[{vocab}] data ready in {time.perf_counter() - started:.0f}s: "
        f"{args.rows:,} train rows, {ids:,} ids",
        flush=True,
    )
    me = [sys.executable, __file__, "--child"]
    bounds = {
        p: run_child([*me, "mlp", p, str(args.bound_steps)], f"MLP bound {p}")
        for p in ("fp32", "bf16")
    }
    runs = []
    for variant in args.variants.split(","):
        runs.append(run_child([*me, "likely", str(folder), vocab, variant], variant))
        print(f"[{vocab}] {_describe(runs[-1])}", flush=True)
    if deepctr is not None:
        worker = [str(deepctr), str(HERE / "deepctr_worker.py"), str(prepared.folder)]
        settings = json.dumps(
            {
                "embedding_dim": EMBEDDING_DIM,
                "hidden_dims": HIDDEN_DIMS,
                "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE,
                "threads": THREADS,
            }
        )
        runs.append(run_child([*worker, settings], "DeepCTR-Torch"))
        print(f"[{vocab}] {_describe(runs[-1])}", flush=True)
    return {
        "vocab": vocab,
        "total_ids": ids,
        "largest_field": max(prepared.manifest["vocab_sizes"].values()),
        "bound": bounds,
        "runs": _with_ratios(runs, bounds),
    }


def _with_ratios(runs: list[dict], bounds: dict[str, dict]) -> list[dict]:
    reference = next((r for r in runs if r["system"] == "DeepCTR-Torch"), None)
    for run in runs:
        bound = bounds.get(run.get("precision", "fp32"))
        if bound is not None:
            run["fraction_of_bound"] = (
                run["samples_per_second"] / bound["samples_per_second"]
            )
        if reference is not None:
            run["speedup_vs_deepctr"] = (
                run["samples_per_second"] / reference["samples_per_second"]
            )
            run["auc_minus_deepctr"] = run["auc"] - reference["auc"]
    return runs


def _describe(run: dict) -> str:
    return (
        f"{run['system']}: {run['samples_per_second']:,.0f} samples/s, "
        f"AUC {run['auc']:.4f}, peak RSS {run['peak_rss_mb']:,.0f} MB"
    )


def table(results: list[dict]) -> str:
    header = (
        f"{'vocab':<6} {'system':<26} {'samples/s':>10} {'x DeepCTR':>9} "
        f"{'of bound':>9} {'test AUC':>8} {'dAUC':>7} {'peak RSS MB':>11}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        for precision, bound in result["bound"].items():
            lines.append(
                f"{result['vocab']:<6} {'MLP alone (' + precision + ')':<26} "
                f"{bound['samples_per_second']:>10,.0f}"
            )
        for run in result["runs"]:
            speedup = run.get("speedup_vs_deepctr")
            fraction = run.get("fraction_of_bound")
            delta = run.get("auc_minus_deepctr")
            lines.append(
                f"{result['vocab']:<6} {run['system']:<26} "
                f"{run['samples_per_second']:>10,.0f} "
                f"{f'{speedup:.1f}x' if speedup else '-':>9} "
                f"{f'{fraction:.0%}' if fraction else '-':>9} "
                f"{run['auc']:>8.4f} "
                f"{f'{delta:+.4f}' if delta is not None else '-':>7} "
                f"{run['peak_rss_mb']:>11,.0f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=200_000)
    parser.add_argument("--vocab", default="small,large", help="small, large or both")
    parser.add_argument("--skip-deepctr", action="store_true")
    parser.add_argument(
        "--variants",
        default="default",
        help="likely runs: 'default' (the trainer's defaults) and/or "
        "precision[+compile], e.g. default,fp32,bf16+compile",
    )
    parser.add_argument("--bound-steps", type=int, default=40)
    parser.add_argument(
        "--deepctr-venv",
        type=Path,
        default=DEEPCTR_VENV,
        help="where DeepCTR-Torch's virtual environment is, or is created",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(".likely/bench/train_speed")
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "train_speed.json"
    )
    args = parser.parse_args()
    vocabs = args.vocab.split(",")
    unknown = [v for v in vocabs if v not in VOCABS]
    if unknown:
        parser.error(f"unknown vocab {unknown}; choose from: {', '.join(VOCABS)}")
    args.workdir = args.workdir.resolve()
    deepctr = None if args.skip_deepctr else ensure_deepctr_venv(args.deepctr_venv)
    results = [bench_vocab(args, vocab, deepctr) for vocab in vocabs]
    report = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "settings": {
            "rows": args.rows,
            "test_rows": args.test_rows,
            "model": "deepfm",
            "embedding_dim": EMBEDDING_DIM,
            "hidden_dims": HIDDEN_DIMS,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "threads": THREADS,
            "epochs": 1,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"wrote {args.out}")


def child(argv: list[str]) -> None:
    if argv[0] == "mlp":
        result = child_mlp(argv[1], int(argv[2]))
    else:
        result = child_likely(Path(argv[1]), argv[2], argv[3])
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
