"""The comparison's charts, drawn with matplotlib into PNG files.

Three charts: the training loss of every model over its steps (mean over
seeds, with the seeds' range shaded, and the second half enlarged where the
steadiness claim looks), the test AUC of every run beside the Bayes-optimal
AUC where the data knows it, and the incremental experiment day by day.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests

import matplotlib.pyplot as plt
import numpy as np

from likely.report.compare import Comparison

# Colour-blind-safe palette (Okabe and Ito), one colour per model.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average; the first points average what exists so far.

    Example:
        >>> smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2)
        array([1., 2., 4., 6.])
    """
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _colours(comparison: Comparison) -> dict[str, str]:
    return {
        v.name: PALETTE[i % len(PALETTE)] for i, v in enumerate(comparison.variants)
    }


def plot_losses(comparison: Comparison, path: Path) -> Path:
    """Training loss per model: the whole run, and its second half enlarged."""
    colours = _colours(comparison)
    figure, (whole, tail) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in comparison.variants:
        runs = comparison.runs_of(variant.name)
        length = min(len(r.losses) for r in runs)
        if length < 2:
            continue
        steps = np.array(runs[0].steps[:length])
        window = max(1, length // 25)
        curves = np.array([smooth(np.array(r.losses[:length]), window) for r in runs])
        mean = curves.mean(axis=0)
        half = length // 2
        for axes, rows in ((whole, slice(None)), (tail, slice(half, None))):
            axes.plot(steps[rows], mean[rows], color=colours[variant.name], lw=1.6)
            axes.fill_between(
                steps[rows],
                curves.min(axis=0)[rows],
                curves.max(axis=0)[rows],
                color=colours[variant.name],
                alpha=0.15,
                lw=0,
            )
        whole.plot([], [], color=colours[variant.name], label=variant.name)
    seeds = len(comparison.seeds)
    whole.set_title(f"training loss (mean of {seeds} seeds, range shaded)")
    tail.set_title("second half of training")
    for axes in (whole, tail):
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("step")
        axes.set_ylabel("logloss (moving average)")
        axes.grid(alpha=0.3)
    whole.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_auc(comparison: Comparison, path: Path) -> Path:
    """Test AUC of every run (dots), each model's mean ± std (diamond and bar),
    and the Bayes-optimal AUC where the data knows it (dashed line)."""
    colours = _colours(comparison)
    names = [v.name for v in comparison.variants]
    figure, axes = plt.subplots(figsize=(8, 0.55 * len(names) + 1.6))
    for row, name in enumerate(names):
        values = np.array([r.test["auc"] for r in comparison.runs_of(name)])
        spread = values.std(ddof=1) if values.size > 1 else 0.0
        axes.errorbar(
            values.mean(),
            row,
            xerr=spread,
            fmt="D",
            color=colours[name],
            markersize=7,
            capsize=4,
        )
        axes.scatter(
            values, np.full(values.size, row + 0.18), color=colours[name], s=14
        )
        axes.annotate(
            f"{values.mean():.4f}",
            (values.mean() + spread, row),
            xytext=(8, -3),
            textcoords="offset points",
            fontsize=8,
        )
    values = [r.test["auc"] for r in comparison.runs]
    low, high = min(values), max(values)
    if comparison.bayes_auc is not None:
        axes.axvline(comparison.bayes_auc, color="k", ls="--", lw=1)
        axes.text(
            comparison.bayes_auc,
            1.01,
            f"Bayes-optimal {comparison.bayes_auc:.4f}",
            transform=axes.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )
        high = max(high, comparison.bayes_auc)
    pad = max(0.002, 0.1 * (high - low))
    axes.set_xlim(low - pad, high + 2 * pad)
    axes.set_ylim(len(names) - 0.5, -0.6)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("test AUC (diamond: mean ± std over seeds; dots: seeds)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_incremental(comparison: Comparison, path: Path) -> Path:
    """Test AUC per later day: incremental update against retraining."""
    days = comparison.incremental
    figure, axes = plt.subplots(figsize=(7, 4))
    x = np.arange(len(days))
    for side, colour, marker in (
        ("incremental", PALETTE[0], "o"),
        ("scratch", PALETTE[1], "s"),
    ):
        aucs = [getattr(d, side)["auc"] for d in days]
        axes.plot(x, aucs, marker=marker, color=colour, label=side)
    bayes = [d.scratch.get("bayes_auc") for d in days]
    if all(b is not None for b in bayes):
        axes.plot(
            x, bayes, ls="--", marker="_", ms=14, color="k", lw=1, label="Bayes-optimal"
        )
    axes.set_xticks(x, [d.day for d in days])
    axes.set_ylabel("test AUC")
    axes.set_title("incremental update against training from scratch")
    axes.grid(alpha=0.3)
    axes.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
