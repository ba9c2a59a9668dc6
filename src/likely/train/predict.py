"""Score logs with a trained run, applying exactly its preprocessing.

A run folder holds the experiment config, the fitted encoders and the model's
weights, so scoring needs nothing else: the same readers validate the file, the
same encoders turn it into ids (unknown values get the out-of-vocabulary id),
and the model's logits become probabilities here, not inside the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from likely.config import ExperimentConfig, load_config
from likely.data.batches import BatchIterator, SplitArrays, gather
from likely.data.encoders import EncodedColumns, FeatureEncoders
from likely.data.prepare import ARRAY_NAMES, ENCODERS
from likely.data.readers import ColumnRoles, read_logs
from likely.models.inputs import FeatureLayout
from likely.models.registry import CTRModel, build_model
from likely.train.checkpoint import load_weights

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A trained model with the config and encoders it was trained with."""

    run_dir: Path
    config: ExperimentConfig
    encoders: FeatureEncoders
    layout: FeatureLayout
    model: CTRModel

    @torch.no_grad()
    def logits(self, encoded: EncodedColumns, batch_size: int = 65536) -> np.ndarray:
        """Logits `(N,)` of encoded rows, scored in batches."""
        self.model.eval()
        arrays = {name: getattr(encoded, name) for name in ARRAY_NAMES}
        parts = []
        for start in range(0, len(encoded), batch_size):
            rows = slice(start, start + batch_size)
            batch = gather(arrays, rows)
            parts.append(self.model.score(batch).float().numpy())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def score_split(model: torch.nn.Module, folder: Path, batch_size: int) -> np.ndarray:
    """Logits `(N,)` of a model on a prepared split, in row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    iterator = BatchIterator(SplitArrays(folder), batch_size, shuffle=False)
    parts = [model.score(batch.to(device)).float().cpu().numpy() for batch in iterator]
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def load_run(run_dir: Path) -> LoadedRun:
    """Rebuild a run's model from its folder: config, encoders, weights."""
    run_dir = Path(run_dir)
    model_json = run_dir / "model" / "model.json"
    if not model_json.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no trained model ({model_json} is missing); "
            "did its training finish?"
        )
    config = load_config(run_dir / "config.json")
    info = json.loads(model_json.read_text())
    encoders = FeatureEncoders.load(run_dir / ENCODERS, config)
    layout = FeatureLayout.from_config(config, info["vocab_sizes"], info["cross_sizes"])
    model = build_model(config, layout)
    load_weights(run_dir / "model" / "model.safetensors", model)
    model.eval()
    return LoadedRun(run_dir, config, encoders, layout, model)


def predict_file(run: LoadedRun, logs: Path, out: Path) -> pl.DataFrame:
    """Score every row of a log file; write its label, user and probability.

    The file is read with the run's data settings (format, columns, error
    policy); its label column must be present, as in training logs.
    """
    # Any file of the logs can be scored, a single day's included, so the day
    # is not required (nor read) here.
    data = run.config.data.model_copy(
        update={
            "path": Path(logs),
            "test_path": None,
            "date_column": None,
            "date_format": None,
        }
    )
    config = run.config.model_copy(update={"data": data})
    frame = read_logs(data, ColumnRoles.from_config(config)).frame
    encoded = FeatureEncoders.from_json(run.encoders.to_json(), config).transform(frame)
    logits = run.logits(encoded)
    probability = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    keep = [c for c in (data.user_column, data.label) if c]
    scored = frame.select(keep).with_columns(
        pl.Series("logit", logits), pl.Series("probability", probability)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    scored.write_parquet(tmp)
    tmp.replace(out)
    logger.info("scored %d rows of %s into %s", scored.height, logs, out)
    return scored
