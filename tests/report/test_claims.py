"""The verdict statistics on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from likely.report.claims import (
    Interval,
    bootstrap_auc_difference,
    loss_trend_spread,
    paired_interval,
    t_quantile,
    verdict,
    weighted_auc,
    wider,
)
from likely.train.metrics import roc_auc


def _test_set(seed: int, users: int = 400, rows_per_user: int = 20):
    """Labels drawn from a known probability; `signal` is that probability's
    logit, so a model scoring `signal` is the best possible one."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), rows_per_user)
    signal = rng.normal(size=user.size) * 1.5 + rng.normal(size=users)[user]
    labels = (rng.random(user.size) < 1 / (1 + np.exp(-signal))).astype(np.int8)
    return rng, user, signal, labels


def test_weighted_auc_matches_roc_auc_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    assert weighted_auc(labels, scores, np.ones((1, 500)))[0] == pytest.approx(
        roc_auc(labels, scores), abs=1e-12
    )
    counts = rng.integers(0, 4, 500)
    repeated = np.repeat(np.arange(500), counts)
    expected = roc_auc(labels[repeated], scores[repeated])
    got = weighted_auc(labels, scores, counts[None, :].astype(float))[0]
    assert got == pytest.approx(expected, abs=1e-12)


def test_t_quantiles_and_paired_interval():
    assert t_quantile(1) == 12.706 and t_quantile(200) == 1.96
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0)
    interval = paired_interval(np.array([0.01, 0.02, 0.03, 0.04]))
    half = 3.182 * np.std([0.01, 0.02, 0.03, 0.04], ddof=1) / 2
    assert interval.estimate == pytest.approx(0.025)
    assert (interval.low, interval.high) == pytest.approx((0.025 - half, 0.025 + half))
    assert paired_interval(np.array([0.5])) is None
    with pytest.raises(ValueError, match="NaN"):
        paired_interval(np.array([0.1, np.nan]))


def test_clear_win_is_supported():
    rng, users, signal, labels = _test_set(1)
    good, poor = signal, signal + rng.normal(size=signal.size) * 3
    interval = bootstrap_auc_difference(labels, good, poor, users, replicates=100)
    assert interval.low > 0.02
    assert verdict(interval, margin=0.001)[0] == "supported"


def test_clear_loss_is_not_supported():
    rng, users, signal, labels = _test_set(2)
    good, poor = signal, signal + rng.normal(size=signal.size) * 3
    interval = bootstrap_auc_difference(labels, poor, good, users, replicates=100)
    assert interval.high < 0
    assert verdict(interval, margin=0.001)[0] == "not supported"


def test_tie_is_not_supported_when_tight_and_inconclusive_when_wide():
    rng, users, signal, labels = _test_set(3)
    # Two models of equal quality whose noise differs: a tie with a spread.
    a = signal + rng.normal(size=signal.size)
    b = signal + rng.normal(size=signal.size)
    interval = bootstrap_auc_difference(labels, a, b, users, replicates=100)
    assert interval.low < 0 < interval.high
    assert verdict(interval, margin=0.05)[0] == "not supported"  # gain < margin
    assert verdict(interval, margin=0.0005)[0] == "inconclusive"
    same = bootstrap_auc_difference(labels, a, a.copy(), users, replicates=20)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert verdict(same, margin=0.001)[0] == "not supported"


def test_bootstrap_over_users_is_wider_than_over_rows_when_users_differ():
    # Each user's rows move together; with strong user effects, resampling
    # users shows more spread than resampling rows as if independent.
    rng, users, signal, labels = _test_set(4, users=60, rows_per_user=80)
    a = signal + rng.normal(size=signal.size) * 0.5
    b = signal + rng.normal(size=signal.size) * 1.5
    by_user = bootstrap_auc_difference(labels, a, b, users, replicates=200)
    by_row = bootstrap_auc_difference(labels, a, b, None, replicates=200)
    assert by_user.estimate == by_row.estimate
    assert "users" in by_user.method and "rows" in by_row.method
    assert by_user.width > 0 and by_row.width > 0


def test_bootstrap_is_seeded():
    rng, users, signal, labels = _test_set(5, users=50)
    a, b = signal, signal + rng.normal(size=signal.size)
    first = bootstrap_auc_difference(labels, a, b, users, replicates=30, seed=7)
    again = bootstrap_auc_difference(labels, a, b, users, replicates=30, seed=7)
    assert first == again


def test_verdict_without_interval_and_wider():
    assert verdict(None, 0.001)[0] == "inconclusive"
    narrow = Interval(0.0, -0.1, 0.1, "a")
    wide = Interval(0.0, -0.2, 0.2, "b")
    assert wider(narrow, None, wide) is wide
    assert wider(None) is None


def test_loss_spread_separates_noisy_from_smooth_curves():
    rng = np.random.default_rng(0)
    steps = np.arange(400.0)
    trend = 0.3 + 0.2 * np.exp(-steps / 100)
    smooth_level, smooth_spread = loss_trend_spread(steps, trend)
    noisy_level, noisy_spread = loss_trend_spread(
        steps, trend + rng.normal(size=400) * 0.05
    )
    assert smooth_spread < 0.01 < noisy_spread
    assert noisy_spread == pytest.approx(0.05, rel=0.2)
    assert smooth_level == pytest.approx(noisy_level, abs=0.02)
    with pytest.raises(ValueError, match="at least 4 points"):
        loss_trend_spread(steps[:3], trend[:3])
