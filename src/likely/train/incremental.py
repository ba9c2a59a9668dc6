"""The mission's incremental experiment: update day by day, or retrain each day?

A base model trains on the window before the start day. Then, for each of the
following days, two models are evaluated on that day:

- incremental: the previous model continued on the one day it has not seen
  (encoders extended, tables grown, trained rows kept);
- scratch: a new model trained on the full window before that day.

Both see the same evaluation day, so the difference of their AUCs is the
effect of updating instead of retraining, on this data.

Each run keeps its test metrics and test logits beside its folder's model, so
an experiment that was stopped continues where it was: finished runs are
kept, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from likely.config import ExperimentConfig
from likely.data.encoders import FeatureEncoders
from likely.data.prepare import ENCODERS, Prepared, bayes_auc, prepare
from likely.train.checkpoint import atomic_write_json, latest_checkpoint
from likely.train.predict import score_split
from likely.train.trainer import Trainer

logger = logging.getLogger(__name__)

RESULT = "result.json"
TEST_LOGITS = "test_logits.npy"


@dataclass(frozen=True)
class DayResult:
    """Test metrics of both models on one evaluation day."""

    day: str
    incremental: dict[str, float]
    scratch: dict[str, float]
    # Run folders by side ("incremental", "scratch"), each with its test
    # logits, and the prepared test split they were scored on.
    runs: dict[str, str] = field(default_factory=dict)
    test_folder: str = ""

    @property
    def auc_gain(self) -> float:
        return self.incremental["auc"] - self.scratch["auc"]


def run_incremental(
    config: ExperimentConfig,
    start: dt.date,
    batches: int,
    out_dir: Path,
    *,
    on_stage: Callable[[str], None] | None = None,
) -> list[DayResult]:
    """Train the base model, then `batches` incremental updates and retrains.

    Args:
        config: the experiment config; `data.window_days` is the scratch window.
        start: the base model's evaluation day; updates begin the day after.
        batches: how many later days to update on.
        out_dir: folder for every run of the experiment and its summary.
        on_stage: told what is being trained, for the command line.

    Returns:
        One result per updated day, in order.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    say = on_stage or (lambda stage: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    daily = config.model_copy(
        update={"data": config.data.model_copy(update={"window_days": 1})}
    )

    say(f"base model on the {config.data.window_days} days before {start}")
    previous = out_dir / f"base-{start}"
    _train(config, prepare(config, start), previous)
    results = []
    for k in range(1, batches + 1):
        day = start + dt.timedelta(days=k)
        say(f"incremental update on {day - dt.timedelta(days=1)}, evaluated on {day}")
        extend = FeatureEncoders.load(previous / ENCODERS, config)
        update_run = out_dir / f"incremental-{day}"
        incremental = _train(
            daily, prepare(daily, day, extend=extend), update_run, init_from=previous
        )
        say(f"from scratch on the {config.data.window_days} days before {day}")
        scratch_run = out_dir / f"scratch-{day}"
        window = prepare(config, day)
        scratch = _train(config, window, scratch_run)
        runs = {"incremental": str(update_run), "scratch": str(scratch_run)}
        results.append(
            DayResult(str(day), incremental, scratch, runs, str(window.folder / "test"))
        )
        logger.info(
            "%s: incremental AUC %.4f, scratch AUC %.4f",
            day,
            incremental["auc"],
            scratch["auc"],
        )
        previous = update_run
    atomic_write_json(
        out_dir / "incremental.json",
        {"start": str(start), "batches": batches, "days": [asdict(r) for r in results]},
    )
    return results


def _train(
    config: ExperimentConfig,
    prepared: Prepared,
    run_dir: Path,
    init_from: Path | None = None,
) -> dict[str, float]:
    """Test metrics of a run; trained unless it finished earlier."""
    result_path = run_dir / RESULT
    if result_path.is_file():
        logger.info("%s finished earlier; kept", run_dir)
        return json.loads(result_path.read_text())
    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # stopped before its first checkpoint
    trainer = Trainer(
        config,
        prepared,
        run_dir,
        resume=resume,
        init_from=None if resume else init_from,
    )
    result = trainer.fit()
    metrics = dict(result.metrics["test"])
    best = bayes_auc(prepared.folder / "test")
    if best is not None:
        metrics["bayes_auc"] = best
    logits = score_split(
        trainer.model, prepared.folder / "test", config.train.eval_batch_size
    )
    np.save(run_dir / TEST_LOGITS, logits)
    atomic_write_json(result_path, metrics)
    return metrics
