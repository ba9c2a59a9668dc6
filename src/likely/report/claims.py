"""Statistics behind the comparison report's verdicts.

A claim says that one model beats another on some measure. The report does
not take that on trust: it measures the difference on the user's own data,
puts a 95% interval around it, and reads a verdict off the interval.

Two sources of noise move a difference between two models:

- training: another seed gives another model. Runs of both models share each
  seed (same batches, same initial draws where shapes agree), so the
  per-seed differences are paired, and a t interval over seeds covers them;
- the test set: another day's users would rank differently. A bootstrap over
  test users (users resampled with replacement, all of a user's impressions
  moving together) covers that.

A verdict uses the wider of the two intervals, so it is only as confident as
the weaker source allows. With one seed, only the bootstrap is available.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Verdict = Literal["supported", "not supported", "inconclusive"]

# Two-sided 95% quantiles of Student's t by degrees of freedom; past 30 the
# normal quantile is within 2% of t's.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.960


@dataclass(frozen=True)
class Interval:
    """A difference with its 95% interval; `method` says how it was made."""

    estimate: float
    low: float
    high: float
    method: str

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class ClaimResult:
    """One claim tested: what was compared, the numbers, and the verdict."""

    claim: str
    measure: str
    interval: Interval | None
    verdict: Verdict
    reason: str
    details: dict

    def to_json(self) -> dict:
        result = asdict(self)
        result["interval"] = asdict(self.interval) if self.interval else None
        return result


def t_quantile(degrees_of_freedom: int) -> float:
    """The two-sided 95% quantile of Student's t.

    Example:
        >>> t_quantile(2)
        4.303
    """
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees_of_freedom}")
    if degrees_of_freedom <= len(_T_975):
        return _T_975[degrees_of_freedom - 1]
    return _Z_975


def paired_interval(differences: np.ndarray) -> Interval | None:
    """Mean of paired differences (one per seed) with its t interval.

    Returns None for fewer than two pairs, where no spread can be estimated.

    Example:
        >>> iv = paired_interval(np.array([0.010, 0.012, 0.014]))
        >>> round(iv.estimate, 3), round(iv.low, 4), round(iv.high, 4)
        (0.012, 0.007, 0.017)
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 1:
        raise ValueError(f"differences must be 1-D, got shape {differences.shape}")
    if np.isnan(differences).any():
        raise ValueError("differences contain NaN")
    n = differences.size
    if n < 2:
        return None
    mean = float(differences.mean())
    half = t_quantile(n - 1) * float(differences.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, f"paired t over {n} seeds")


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """AUC of rows counted `weights` times each, for many weightings at once.

    Args:
        labels: `(N,)` 0/1 labels.
        scores: `(N,)` scores.
        weights: `(R, N)` non-negative row counts, one weighting per row of R.

    Returns:
        `(R,)` AUCs; a tied positive and negative count one half.

    Example:
        >>> labels = np.array([0, 0, 1, 1])
        >>> scores = np.array([0.1, 0.4, 0.35, 0.8])
        >>> weighted_auc(labels, scores, np.ones((1, 4)))
        array([0.75])
        >>> weighted_auc(labels, scores, np.array([[1.0, 0, 1, 1]]))  # drop row 1
        array([1.])
    """
    labels = np.asarray(labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    positive = (labels[order] == 1).astype(np.float64)  # (N,)
    weights = np.asarray(weights, dtype=np.float64)[:, order]  # (R, N)
    # Rows of equal score form one group; a positive beats the negatives of all
    # lower groups and ties with half of its own group's negatives.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    negative_weights = weights * (1.0 - positive)  # (R, N)
    positive_weights = weights * positive
    group_negatives = np.add.reduceat(negative_weights, starts, axis=1)  # (R, G)
    group_positives = np.add.reduceat(positive_weights, starts, axis=1)
    below = np.cumsum(group_negatives, axis=1) - group_negatives
    wins = (group_positives * (below + 0.5 * group_negatives)).sum(axis=1)
    total = group_positives.sum(axis=1) * group_negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def bootstrap_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    users: np.ndarray | None,
    *,
    replicates: int = 200,
    seed: int = 0,
    chunk: int = 25,
) -> Interval:
    """AUC(a) - AUC(b) on one test set, with a percentile bootstrap interval.

    Users are resampled with replacement and carry all their impressions, so
    the interval reflects how much the difference depends on which users
    happened to be in the test set; without user ids, rows are resampled.

    Args:
        labels: `(N,)` labels of the test rows.
        scores_a: `(N,)` scores of model a (e.g. logits averaged over seeds).
        scores_b: `(N,)` scores of model b.
        users: `(N,)` user ids, or None.
        replicates: bootstrap resamples.
        seed: seed of the resampling.
        chunk: replicates computed at once (memory: chunk x N floats).
    """
    labels = np.asarray(labels)
    if users is None:
        groups = np.arange(labels.size)
    else:
        _, groups = np.unique(np.asarray(users), return_inverse=True)
    num_groups = int(groups.max()) + 1 if groups.size else 0
    rng = np.random.default_rng(seed)
    ones = np.ones((1, labels.size))
    estimate = float(
        weighted_auc(labels, scores_a, ones)[0]
        - weighted_auc(labels, scores_b, ones)[0]
    )
    draws = []
    for start in range(0, replicates, chunk):
        count = min(chunk, replicates - start)
        # How many times each user was drawn, then spread to their rows.
        picks = rng.integers(0, num_groups, size=(count, num_groups))
        user_counts = np.zeros((count, num_groups))
        np.add.at(user_counts, (np.arange(count)[:, None], picks), 1.0)
        weights = user_counts[:, groups]  # (count, N)
        draws.append(
            weighted_auc(labels, scores_a, weights)
            - weighted_auc(labels, scores_b, weights)
        )
    values = np.concatenate(draws)
    values = values[~np.isnan(values)]
    low, high = np.percentile(values, [2.5, 97.5])
    unit = "users" if users is not None else "rows"
    return Interval(
        estimate, float(low), float(high), f"bootstrap over test {unit} ({replicates})"
    )


def wider(*intervals: Interval | None) -> Interval | None:
    """The widest of the intervals given (None ones skipped)."""
    present = [i for i in intervals if i is not None]
    return max(present, key=lambda i: i.width) if present else None


def verdict(interval: Interval | None, margin: float) -> tuple[Verdict, str]:
    """Read a verdict for "a is better than b" off the interval of a - b.

    Args:
        interval: the 95% interval of the difference, positive meaning a wins.
        margin: the smallest gain worth the name, in the measure's units.

    Returns:
        The verdict and its reason in words:
        supported when the whole interval is above 0 (a reliably better);
        not supported when the whole interval is below `margin` (a reliably
        not better by a gain worth having: a loss or a tie);
        inconclusive otherwise (the data cannot tell).

    Example:
        >>> verdict(Interval(0.01, 0.006, 0.014, "t"), margin=0.001)[0]
        'supported'
        >>> verdict(Interval(0.0, -0.0005, 0.0005, "t"), margin=0.001)[0]
        'not supported'
        >>> verdict(Interval(0.001, -0.004, 0.006, "t"), margin=0.001)[0]
        'inconclusive'
    """
    if interval is None:
        return "inconclusive", "no interval: too few runs to measure the spread"
    low, high = interval.low, interval.high
    if low > 0:
        return "supported", f"the whole interval [{low:+.4f}, {high:+.4f}] is above 0"
    if high < margin:
        return (
            "not supported",
            f"the whole interval [{low:+.4f}, {high:+.4f}] is below {margin:+.4f}, "
            "the smallest gain that counts",
        )
    return (
        "inconclusive",
        f"the interval [{low:+.4f}, {high:+.4f}] holds both no gain and a gain "
        f"of {margin:+.4f} or more",
    )


def loss_trend_spread(steps: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """Final level and spread of a training loss curve's second half.

    The level is the mean loss of the last tenth of the steps; the spread is
    the standard deviation of the second half around its straight-line trend,
    so that a curve still falling steadily is not called unsteady.

    Example:
        >>> steps = np.arange(100.0)
        >>> level, spread = loss_trend_spread(steps, 1.0 - steps / 200)
        >>> round(level, 3), round(spread, 6)
        (0.527, 0.0)
    """
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if steps.size < 4:
        raise ValueError(f"a loss curve needs at least 4 points, got {steps.size}")
    level = float(losses[-max(1, steps.size // 10) :].mean())
    half_steps, half = steps[steps.size // 2 :], losses[steps.size // 2 :]
    slope, intercept = np.polyfit(half_steps, half, 1)
    residual = half - (slope * half_steps + intercept)
    return level, float(residual.std(ddof=1))
