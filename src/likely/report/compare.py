"""`likely compare`: the mission's models on one window, several seeds each.

Every variant trains on the same prepared window with the same seeds, through
the one trainer; each run keeps its step losses (for the loss curves), its
test metrics and its test logits (for the bootstrap over users). The report
folder then holds:

    report/
      plan.json                  the config and the variants compared
      runs/<variant>/seed-<k>/   one run folder per model and seed
      runs/<variant>/seed-<k>/result.json, test_logits.npy
      incremental/               the incremental-against-scratch runs
      results.json  claims.json  table.md  index.html  *.png

A comparison that is stopped keeps every run that finished; run the same
command again and it trains only what is missing (an interrupted run resumes
from its last checkpoint).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from likely.config import ExperimentConfig, ModelConfig, WideResNetConfig
from likely.data.prepare import Prepared, available_days, bayes_auc, prepare
from likely.report.claims import (
    ClaimResult,
    Interval,
    bootstrap_auc_difference,
    loss_trend_spread,
    paired_interval,
    verdict,
    wider,
)
from likely.train.checkpoint import atomic_write_json, latest_checkpoint
from likely.train.incremental import TEST_LOGITS, run_incremental
from likely.train.predict import score_split
from likely.train.trainer import METRICS_FILE, Trainer

logger = logging.getLogger(__name__)

PLAN = "plan.json"
RESULT = "result.json"
# Told what the comparison is doing, for the command line.
Say = Callable[[str], None]
# The mission's reported gain of Wide-ResNet (with BN) over Wide&Deep.
REPORTED_AUC_GAIN = 0.01


class CompareError(ValueError):
    """The comparison cannot run as asked (a clash with an earlier report)."""


@dataclass(frozen=True)
class Variant:
    """A named model config to compare."""

    name: str
    model: ModelConfig


def resolve_variant(config: ExperimentConfig, name: str) -> Variant:
    """The model config a variant name stands for; see `CompareConfig`."""
    from likely.config import BUILTIN_VARIANTS, parse_config

    compare = config.compare
    if name in compare.variants:
        return Variant(name, compare.variants[name])
    if name not in BUILTIN_VARIANTS:
        raise CompareError(
            f"unknown model variant '{name}'; define it in compare.variants or "
            f"choose one of: {', '.join(BUILTIN_VARIANTS)}"
        )
    if name == "wide_resnet_nobn":
        base = config.model if config.model.name == "wide_resnet" else None
        base = base or WideResNetConfig()
        return Variant(name, base.model_copy(update={"batch_norm": False}))
    if config.model.name == name:
        return Variant(name, config.model)
    raw = config.model_dump(mode="json")
    raw["model"] = {"name": name}
    return Variant(name, parse_config(raw, origin=f"variant {name}").model)


@dataclass
class RunResult:
    """One finished run of one variant and seed."""

    variant: str
    seed: int
    run_dir: str
    test: dict[str, float]
    valid: dict[str, float]
    seconds: float
    samples_per_second: float
    parameters: int
    best_epoch: int
    steps: list[int] = field(repr=False)
    losses: list[float] = field(repr=False)


@dataclass
class IncrementalDay:
    """Incremental update against training from scratch, on one later day."""

    day: str
    incremental: dict[str, float]
    scratch: dict[str, float]
    difference: dict[str, Any]  # the AUC difference's interval


@dataclass
class Comparison:
    """Everything measured, ready for tables, charts and verdicts."""

    out_dir: Path
    config: ExperimentConfig
    variants: list[Variant]
    seeds: list[int]
    manifest: dict[str, Any]
    bayes_auc: float | None
    runs: list[RunResult]
    incremental: list[IncrementalDay]
    claims: list[ClaimResult]

    def runs_of(self, variant: str) -> list[RunResult]:
        return [r for r in self.runs if r.variant == variant]

    def summary(self) -> list[dict[str, Any]]:
        """Per variant: mean and std over seeds of each reported figure."""
        rows = []
        for variant in self.variants:
            runs = self.runs_of(variant.name)
            row: dict[str, Any] = {"model": variant.name, "seeds": len(runs)}
            for key in ("auc", "logloss", "gauc"):
                values = np.array([r.test.get(key, np.nan) for r in runs])
                row[key] = float(np.mean(values))
                row[f"{key}_std"] = (
                    float(np.std(values, ddof=1)) if len(runs) > 1 else 0
                )
            row["seconds"] = float(np.mean([r.seconds for r in runs]))
            row["samples_per_second"] = float(
                np.mean([r.samples_per_second for r in runs])
            )
            row["parameters"] = runs[0].parameters
            row["best_epoch"] = [r.best_epoch for r in runs]
            rows.append(row)
        return rows


def run_comparison(
    config: ExperimentConfig,
    out_dir: Path,
    target: dt.date | None,
    *,
    say: Say | None = None,
) -> Comparison:
    """Train every variant of `config.compare` with every seed; test the claims.

    Args:
        config: the experiment config; its `compare` section says what to run.
        out_dir: the report folder; an earlier comparison there with the same
            config is continued, one with another config is an error.
        target: the evaluation day (None for logs without days).
        say: told what is being done, for the command line.

    Returns:
        The comparison, with every run's figures and the claims' verdicts.
    """
    say = say or (lambda message: None)
    if config.compare.incremental_days and (
        config.data.date_column is None or target is None
    ):
        raise CompareError(
            "compare.incremental_days needs logs with days (data.date_column) "
            "and a target date"
        )
    variants = [resolve_variant(config, name) for name in config.compare.models]
    seeds = [config.seed + k for k in range(config.compare.seeds)]
    out_dir = Path(out_dir)

    say("preparing the window")
    prepared = prepare(config, target)
    _check_plan(out_dir, config, target, prepared.manifest["files"])
    best = bayes_auc(prepared.folder / "test")
    total = len(variants) * len(seeds)
    runs = []
    for i, (variant, seed) in enumerate(
        ((v, s) for v in variants for s in seeds), start=1
    ):
        runs.append(
            _run_once(config, prepared, variant, seed, out_dir, f"[{i}/{total}]", say)
        )
    incremental = []
    if config.compare.incremental_days:
        incremental = _incremental(config, target, out_dir, say)
    comparison = Comparison(
        out_dir, config, variants, seeds, prepared.manifest, best, runs, incremental, []
    )
    comparison.claims = test_claims(comparison, prepared)
    return comparison


# ---------------------------------------------------------------------- runs


def _check_plan(out_dir: Path, config: ExperimentConfig, target, files: list) -> None:
    """Write the plan, or check that an earlier one in `out_dir` matches: the
    same config (the compare section aside), day and log files (path, size,
    modification time), so that kept runs are comparable with new ones."""
    plan = {
        "config": config.model_dump(mode="json", exclude={"compare"}),
        "target_date": str(target) if target else None,
        "files": files,
    }
    path = out_dir / PLAN
    if path.is_file():
        earlier = json.loads(path.read_text())
        started = (out_dir / "runs").exists() or (out_dir / "incremental").exists()
        if earlier != plan and started:
            raise CompareError(
                f"{out_dir} holds a comparison of another config, day or logs; "
                "pick another --out, or delete that folder to start again"
            )
        if earlier == plan:
            return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)


def _run_once(
    config: ExperimentConfig,
    prepared: Prepared,
    variant: Variant,
    seed: int,
    out_dir: Path,
    counter: str,
    say: Say,
) -> RunResult:
    run_dir = out_dir / "runs" / variant.name / f"seed-{seed}"
    result_path = run_dir / RESULT
    if result_path.is_file():
        say(f"{counter} {variant.name} seed {seed}: done earlier, kept")
        return RunResult(**json.loads(result_path.read_text()))

    # Every step's loss is logged: the loss curves and the steadiness claim
    # need them, and one JSON line per step costs nothing next to the step.
    run_config = config.model_copy(
        update={
            "model": variant.model,
            "seed": seed,
            "train": config.train.model_copy(update={"log_every": 1}),
        }
    )
    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # stopped before its first checkpoint
    if resume:
        say(f"{counter} {variant.name} seed {seed}: resuming")
    else:
        say(f"{counter} {variant.name} seed {seed}: training")
    trainer = Trainer(run_config, prepared, run_dir, resume=resume)
    trained = trainer.fit()
    logits = score_split(
        trainer.model, prepared.folder / "test", config.train.eval_batch_size
    )
    np.save(run_dir / TEST_LOGITS, logits)
    steps, losses = read_losses(run_dir)
    result = RunResult(
        variant=variant.name,
        seed=seed,
        run_dir=str(run_dir),
        test=trained.metrics.get("test", {}),
        valid=trained.metrics.get("valid", {}),
        seconds=trained.seconds,
        samples_per_second=trained.samples_per_second,
        parameters=trained.parameters,
        best_epoch=trained.best_epoch,
        steps=steps,
        losses=losses,
    )
    atomic_write_json(result_path, asdict(result))
    auc = result.test.get("auc", float("nan"))
    say(
        f"{counter} {variant.name} seed {seed}: test AUC {auc:.4f} "
        f"in {trained.seconds:.1f} s"
    )
    return result


def read_losses(run_dir: Path) -> tuple[list[int], list[float]]:
    """The step losses a run logged, in step order (a resumed run's repeats
    of the same step keep the last)."""
    by_step: dict[int, float] = {}
    with (Path(run_dir) / METRICS_FILE).open() as handle:
        for line in handle:
            record = json.loads(line)
            if "loss" in record and "step" in record:
                by_step[int(record["step"])] = float(record["loss"])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


# ---------------------------------------------------------------- incremental


def _incremental(
    config: ExperimentConfig, target: dt.date | None, out_dir: Path, say: Say
) -> list[IncrementalDay]:
    """Incremental updates against retraining on each of the last days.

    The last `incremental_days` days up to the target are the evaluation
    days. The base model trains on the days before the first of them; when
    the logs do not reach `window_days` back, the window shrinks to what is
    there (said in the log), and the scratch models use the same length.
    """
    days_after = config.compare.incremental_days
    start = target - dt.timedelta(days=days_after)
    before = [d for d in available_days(config) if d < start]
    window = min(config.data.window_days, len(before))
    if window < 1:
        raise CompareError(
            f"no days before {start} to train the incremental base model on; "
            f"lower compare.incremental_days ({days_after}) or add earlier logs"
        )
    if window < config.data.window_days:
        logger.info(
            "incremental: only %d days before %s; windows of %d days",
            window,
            start,
            window,
        )
    variant = resolve_variant(config, "wide_resnet")
    experiment = config.model_copy(
        update={
            "model": variant.model,
            "data": config.data.model_copy(update={"window_days": window}),
        }
    )
    results = run_incremental(
        experiment, start, days_after, out_dir / "incremental", on_stage=say
    )
    days = []
    for result in results:
        logits = {
            side: np.load(Path(result.runs[side]) / TEST_LOGITS)
            for side in ("incremental", "scratch")
        }
        test = Path(result.test_folder)
        labels = np.load(test / "label.npy")
        users = np.load(test / "user.npy") if config.data.user_column else None
        interval = bootstrap_auc_difference(
            labels, logits["incremental"], logits["scratch"], users, seed=config.seed
        )
        days.append(
            IncrementalDay(
                result.day, result.incremental, result.scratch, asdict(interval)
            )
        )
    return days


# --------------------------------------------------------------------- claims


def _test_logits(runs: list[RunResult]) -> np.ndarray:
    """Mean over seeds of a variant's test logits `(N,)`."""
    return np.mean([np.load(Path(r.run_dir) / TEST_LOGITS) for r in runs], axis=0)


def _auc_claim(
    comparison: Comparison,
    prepared: Prepared,
    better: str,
    worse: str,
    claim: str,
) -> ClaimResult:
    margin = comparison.config.compare.auc_margin
    runs_better, runs_worse = comparison.runs_of(better), comparison.runs_of(worse)
    if not runs_better or not runs_worse:
        missing = better if not runs_better else worse
        return ClaimResult(
            claim, "test AUC", None, "inconclusive", f"'{missing}' was not compared", {}
        )
    by_seed = {r.seed: r.test["auc"] for r in runs_worse}
    paired = np.array(
        [r.test["auc"] - by_seed[r.seed] for r in runs_better if r.seed in by_seed]
    )
    seeds = paired_interval(paired)
    test = prepared.folder / "test"
    users = np.load(test / "user.npy") if comparison.config.data.user_column else None
    users_interval = bootstrap_auc_difference(
        np.load(test / "label.npy"),
        _test_logits(runs_better),
        _test_logits(runs_worse),
        users,
        seed=comparison.config.seed,
    )
    chosen = wider(seeds, users_interval)
    result, reason = verdict(chosen, margin)
    details = {
        "per_seed": paired.tolist(),
        "seeds": asdict(seeds) if seeds else None,
        "bootstrap": asdict(users_interval),
        "reported_gain": REPORTED_AUC_GAIN,
        "margin": margin,
    }
    return ClaimResult(claim, "test AUC", chosen, result, reason, details)


def _loss_claims(comparison: Comparison) -> list[ClaimResult]:
    """Batch normalization gives a lower final loss, and a steadier one."""
    with_bn = {r.seed: r for r in comparison.runs_of("wide_resnet")}
    without = {r.seed: r for r in comparison.runs_of("wide_resnet_nobn")}
    claims = (
        "Wide-ResNet's training loss ends lower with batch normalization",
        "Wide-ResNet's training loss is steadier with batch normalization",
    )
    seeds = sorted(set(with_bn) & set(without))
    if not seeds:
        reason = "'wide_resnet' and 'wide_resnet_nobn' were not both compared"
        return [
            ClaimResult(c, m, None, "inconclusive", reason, {})
            for c, m in zip(claims, ("final loss", "loss spread"), strict=True)
        ]
    curves = {
        name: [
            loss_trend_spread(np.array(r.steps), np.array(r.losses))
            for r in (runs[s] for s in seeds)
        ]
        for name, runs in (("bn", with_bn), ("nobn", without))
    }
    results = []
    for index, (claim, measure) in enumerate(
        zip(claims, ("final loss", "loss spread"), strict=True)
    ):
        # Negative differences are wins for BN here: flip the sign so that
        # "above 0" means BN is better, as for AUC.
        gains = np.array(
            [
                nobn[index] - bn[index]
                for bn, nobn in zip(curves["bn"], curves["nobn"], strict=True)
            ]
        )
        interval = paired_interval(gains)
        scale = float(np.mean([c[index] for c in curves["nobn"]]))
        # A gain under 1% of the measure's own size is a tie.
        result, reason = verdict(interval, margin=0.01 * scale)
        details = {
            "with_bn": [c[index] for c in curves["bn"]],
            "without_bn": [c[index] for c in curves["nobn"]],
            "gain_per_seed": gains.tolist(),
        }
        results.append(ClaimResult(claim, measure, interval, result, reason, details))
    return results


def _incremental_claim(comparison: Comparison) -> ClaimResult:
    claim = "incremental training lifts AUC over training from scratch"
    days = comparison.incremental
    if not days:
        return ClaimResult(
            claim,
            "test AUC",
            None,
            "inconclusive",
            "not tested (compare.incremental_days is 0)",
            {},
        )
    intervals = [Interval(**d.difference) for d in days]
    # Days are independent test sets: the mean difference's interval combines
    # the per-day half-widths as independent errors.
    estimate = float(np.mean([i.estimate for i in intervals]))
    half = float(np.sqrt(np.sum([(i.width / 2) ** 2 for i in intervals]))) / len(days)
    interval = Interval(
        estimate, estimate - half, estimate + half, f"mean over {len(days)} day(s)"
    )
    result, reason = verdict(interval, comparison.config.compare.auc_margin)
    details = {
        "days": [
            {"day": d.day, **d.difference, "verdict": verdict(i, 0.0)[0]}
            for d, i in zip(days, intervals, strict=True)
        ]
    }
    return ClaimResult(claim, "test AUC", interval, result, reason, details)


def test_claims(comparison: Comparison, prepared: Prepared) -> list[ClaimResult]:
    """The mission's claims, each measured and judged on this comparison."""
    return [
        _auc_claim(
            comparison,
            prepared,
            "wide_resnet",
            "wide_deep",
            "Wide-ResNet (with BN) beats Wide&Deep on AUC (reported: about +0.01)",
        ),
        *_loss_claims(comparison),
        _incremental_claim(comparison),
    ]
