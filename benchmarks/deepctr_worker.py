"""DeepCTR-Torch's DeepFM on a likely-prepared folder; run by train_speed.py.

Runs inside the DeepCTR-Torch virtual environment (it imports nothing from
likely): reads the ids and dense values likely encoded, so both systems see
exactly the same inputs, trains one epoch with DeepCTR's own `fit`, and prints
one JSON line: training samples/s, test AUC and peak RSS.

    python deepctr_worker.py PREPARED_FOLDER '{"embedding_dim": 16, ...}'
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from deepctr_torch.inputs import DenseFeat, SparseFeat
from deepctr_torch.models import DeepFM
from sklearn.metrics import log_loss, roc_auc_score


def inputs(folder: Path, names: list[str], dense_names: list[str]) -> dict:
    sparse = np.load(folder / "sparse.npy")
    dense = np.load(folder / "dense.npy")
    columns = {name: sparse[:, i] for i, name in enumerate(names)}
    columns.update({name: dense[:, i] for i, name in enumerate(dense_names)})
    return columns


def main() -> None:
    folder = Path(sys.argv[1])
    settings = json.loads(sys.argv[2])
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    manifest = json.loads((folder / "manifest.json").read_text())
    sizes = manifest["vocab_sizes"]  # table name -> rows, in field order
    names = list(sizes)
    dense_count = np.load(folder / "train" / "dense.npy", mmap_mode="r").shape[1]
    dense_names = [f"I{i + 1}" for i in range(dense_count)]
    columns = [
        SparseFeat(
            name, vocabulary_size=sizes[name], embedding_dim=settings["embedding_dim"]
        )
        for name in names
    ] + [DenseFeat(name, 1) for name in dense_names]
    model = DeepFM(
        columns,
        columns,
        dnn_hidden_units=tuple(settings["hidden_dims"]),
        task="binary",
        device="cpu",
        seed=0,
    )
    model.compile(
        torch.optim.Adam(model.parameters(), lr=settings["learning_rate"]),
        "binary_crossentropy",
    )
    train = inputs(folder / "train", names, dense_names)
    label = np.load(folder / "train" / "label.npy").astype(np.float32)
    started = time.perf_counter()
    model.fit(train, label, batch_size=settings["batch_size"], epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    test = inputs(folder / "test", names, dense_names)
    test_label = np.load(folder / "test" / "label.npy")
    probs = model.predict(test, batch_size=65536)[:, 0]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "system": "DeepCTR-Torch",
                "precision": "fp32",
                "rows": len(label),
                "train_seconds": seconds,
                "samples_per_second": len(label) / seconds,
                "auc": float(roc_auc_score(test_label, probs)),
                "logloss": float(log_loss(test_label, probs.astype(np.float64))),
                "peak_rss_mb": peak_rss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
