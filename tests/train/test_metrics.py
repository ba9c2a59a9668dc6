"""Tests of the evaluation metrics against sklearn and brute-force references."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sklearn_log_loss
from sklearn.metrics import roc_auc_score

from likely.train import metrics
from likely.train.metrics import (
    calibration,
    evaluate,
    gauc,
    log_loss,
    platt_scaling,
    roc_auc,
)


def brute_force_gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray):
    """Loop over users, sklearn AUC per user, weighted by impressions."""
    weighted_sum = 0.0
    total_weight = 0
    for user in np.unique(users):
        mine = users == user
        if np.unique(labels[mine]).size < 2:
            continue
        weighted_sum += mine.sum() * roc_auc_score(labels[mine], scores[mine])
        total_weight += mine.sum()
    return weighted_sum / total_weight if total_weight else math.nan


def click_log(seed: int, num_rows: int = 1500, num_users: int = 300):
    """Labels, tied scores and users; every tenth user clicks never, the next always.

    Scores are rounded to 2 decimals, and users see few items, so there are ties
    both within and across users; many users have one impression only.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, num_rows)
    scores = (rng.random(num_rows) * 0.6 + 0.2).round(2)
    labels = (rng.random(num_rows) < scores).astype(np.int8)
    labels[users % 10 == 0] = 0
    labels[users % 10 == 1] = 1
    return labels, scores, users


def test_docstring_examples_run():
    result = doctest.testmod(metrics)

    assert result.attempted >= 5
    assert result.failed == 0


# ------------------------------------------------------------ roc_auc, log_loss


@pytest.mark.parametrize("seed", range(3))
def test_roc_auc_matches_sklearn_with_ties(seed):
    labels, scores, _ = click_log(seed)

    assert np.unique(scores).size < scores.size / 10  # plenty of ties
    assert roc_auc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), rel=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
def test_log_loss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = rng.random(2000).round(2).clip(0.01, 0.99)
    labels = (rng.random(2000) < probs).astype(np.int64)

    assert log_loss(labels, probs) == pytest.approx(
        sklearn_log_loss(labels, probs), rel=1e-12
    )


def test_log_loss_clips_confident_mistakes_to_eps():
    labels = np.array([1, 0])
    probs = np.array([0.0, 1.0])

    assert log_loss(labels, probs) == pytest.approx(-math.log(1e-7))
    assert log_loss(labels, probs, eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert log_loss(labels.astype(bool), np.array([1.0, 0.0])) == pytest.approx(
        -math.log(1 - 1e-7)
    )


# ----------------------------------------------------------------------- gauc


@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_per_user_sklearn_loop(seed):
    labels, scores, users = click_log(seed)
    sizes = np.bincount(users)
    clicks = np.bincount(users, weights=labels)
    one_sided = (clicks == 0) | (clicks == sizes)

    assert one_sided.sum() > 70 and (~one_sided).sum() > 150
    assert (sizes == 1).sum() > 5
    assert gauc(labels, scores, users) == pytest.approx(
        brute_force_gauc(labels, scores, users), rel=1e-12
    )


def test_gauc_ignores_single_class_users_entirely():
    labels, scores, users = click_log(0)
    sizes = np.bincount(users)
    clicks = np.bincount(users, weights=labels)
    ranked = ((clicks > 0) & (clicks < sizes))[users]

    assert not ranked.all()
    assert gauc(labels, scores, users) == pytest.approx(
        gauc(labels[ranked], scores[ranked], users[ranked]), rel=1e-12
    )


def test_gauc_of_one_user_is_that_users_auc():
    labels, scores, _ = click_log(1, num_rows=500)
    users = np.full(500, 42)

    assert gauc(labels, scores, users) == pytest.approx(roc_auc(labels, scores))


def test_gauc_is_nan_when_no_user_has_both_classes():
    labels = np.array([0, 0, 1, 1, 0])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    users = np.array([1, 1, 2, 2, 3])

    assert math.isnan(gauc(labels, scores, users))


def test_gauc_known_answer_with_ties_and_weights():
    # User "a": 4 impressions; of its 4 pairs, 3 are ranked right and 1 is tied,
    # so AUC 3.5 / 4. User "b": 2 impressions ranked wrongly, AUC 0. User "c":
    # clicks only, so skipped with its weight.
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.5, 0.5, 0.1, 0.9, 0.8, 0.2, 0.3, 0.3])
    users = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])

    assert gauc(labels, scores, users) == pytest.approx((4 * 0.875 + 2 * 0.0) / 6)


@settings(derandomize=True, deadline=None, max_examples=100)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 1), st.integers(-3, 3), st.integers(0, 4)
        ),  # label, score, user
        min_size=1,
        max_size=60,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_gauc_invariant_to_row_order_and_increasing_transform(rows, seed):
    labels, scores, users = (np.array(column) for column in zip(*rows, strict=True))
    shuffle = np.random.default_rng(seed).permutation(labels.size)
    expected = gauc(labels, scores, users)

    shuffled = gauc(labels[shuffle], scores[shuffle], users[shuffle])
    transformed = gauc(labels, np.exp(scores) + scores**3, users)

    np.testing.assert_allclose(shuffled, expected, rtol=1e-12)
    np.testing.assert_allclose(transformed, expected, rtol=1e-12)


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    ("labels", "probs", "expected"),
    [
        ([0, 0, 0, 1], [0.25, 0.25, 0.25, 0.25], 1.0),
        ([0, 0, 0, 1], [0.5, 0.5, 0.5, 0.5], 2.0),
        ([0, 1, 0, 1], [0.1, 0.3, 0.2, 0.2], 0.4),
        ([True, False], [0.0, 0.0], 0.0),
    ],
)
def test_calibration_known_answers(labels, probs, expected):
    assert calibration(np.array(labels), np.array(probs)) == pytest.approx(expected)


def test_calibration_is_nan_without_clicks():
    assert math.isnan(calibration(np.zeros(3, dtype=int), np.full(3, 0.2)))


# ------------------------------------------------------------------- evaluate


def test_evaluate_matches_the_separate_metrics():
    labels, scores, users = click_log(2)
    logits = np.log(scores / (1 - scores))
    probs = 1 / (1 + np.exp(-logits))

    result = evaluate(labels, logits, users)

    assert list(result) == [
        "auc",
        "logloss",
        "gauc",
        "calibration",
        "ctr",
        "mean_prob",
        "rows",
    ]
    assert result["auc"] == pytest.approx(roc_auc(labels, probs))
    assert result["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-12)
    assert result["gauc"] == pytest.approx(gauc(labels, probs, users))
    assert result["calibration"] == pytest.approx(calibration(labels, probs))
    assert result["ctr"] == pytest.approx(labels.mean())
    assert result["mean_prob"] == pytest.approx(scores.mean())
    assert result["rows"] == labels.size


def test_evaluate_without_users_has_no_gauc():
    result = evaluate(np.array([0, 1, 1, 0]), np.array([-1.0, 2.0, 0.5, 0.0]))

    assert "gauc" not in result
    assert result["auc"] == 1.0


def test_evaluate_extreme_logits_without_overflow():
    labels = np.array([1, 0, 1, 0, 1, 0])
    logits = np.array([50.0, -50.0, -50.0, 50.0, 40.0, 0.0], dtype=np.float32)

    with np.errstate(all="raise"):
        result = evaluate(labels, logits, np.array([1, 1, 2, 2, 3, 3]))

    probs = np.array([1.0, math.exp(-50), math.exp(-50), 1.0, 1.0, 0.5])
    assert result["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-12)
    assert result["calibration"] == pytest.approx(calibration(labels, probs))
    assert result["mean_prob"] == pytest.approx(probs.mean())
    # Ranked by logits, 50 beats 40 although both sigmoid to 1.0 in float64.
    assert result["auc"] == pytest.approx(roc_auc(labels, logits.astype(float)))
    assert result["auc"] == pytest.approx(5 / 9)
    assert result["gauc"] == pytest.approx(4 / 6)


def test_evaluate_sigmoid_saturates_cleanly_far_beyond_float_range():
    labels = np.array([1, 0, 1, 0])
    logits = np.array([1000.0, -1000.0, np.inf, -np.inf])

    # exp(-1000) underflows to 0 by design; overflow or 0/0 would be a bug.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        result = evaluate(labels, logits)

    assert result["mean_prob"] == 0.5
    assert result["logloss"] == pytest.approx(-math.log(1 - 1e-7))
    assert result["auc"] == 1.0


def test_evaluate_reports_nan_for_one_class_instead_of_raising():
    result = evaluate(np.zeros(4, dtype=int), np.array([-1.0, 0.0, 1.0, 2.0]))

    assert math.isnan(result["auc"])
    assert math.isnan(result["calibration"])
    assert result["ctr"] == 0.0
    assert result["logloss"] > 0


# ----------------------------------------------------------------- validation

GOOD_LABELS = [0, 1, 1]
GOOD_VALUES = [0.2, 0.7, 0.4]
USERS = [1, 1, 2]


def _call(function: str, labels, values, users=USERS):
    labels, values = np.array(labels), np.array(values)
    if function == "gauc":
        return gauc(labels, values, np.array(users))
    if function == "evaluate":
        return evaluate(labels, values, np.array(users))
    return getattr(metrics, function)(labels, values)


ALL = ["log_loss", "gauc", "calibration", "evaluate"]


@pytest.mark.parametrize("function", ALL)
@pytest.mark.parametrize(
    ("labels", "values", "message"),
    [
        ([0, 1, 2], GOOD_VALUES, r"labels must be 0 or 1; found \[2\]"),
        ([0, 0.5, -1], GOOD_VALUES, r"labels must be 0 or 1; found \[-1.0, 0.5\]"),
        ([0, 1], GOOD_VALUES, r"differ in length: 2 labels, 3 "),
        ([[0, 1, 1]], [GOOD_VALUES], r"must be 1-D; got shapes \(1, 3\) and \(1, 3\)"),
        (GOOD_LABELS, 0.5, r"must be 1-D; got shapes \(3,\) and \(\)"),
        ([], [], "are empty; need at least one row"),
    ],
)
def test_shape_and_label_errors_name_the_problem(function, labels, values, message):
    with pytest.raises(ValueError, match=message):
        _call(function, labels, values)


@pytest.mark.parametrize("function", ["log_loss", "calibration"])
@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([0.2, 1.5, 0.4], r"probs must lie in \[0, 1\]; 1 do not, e.g. \[1.5\]"),
        ([-0.1, 0.5, -0.2], r"2 do not, e.g. \[-0.2, -0.1\]"),
        ([0.2, float("nan"), 0.4], r"1 do not, e.g. \[nan\]"),
    ],
)
def test_probs_outside_unit_interval_are_named(function, probs, message):
    with pytest.raises(ValueError, match=message):
        _call(function, GOOD_LABELS, probs)


@pytest.mark.parametrize(
    ("function", "message"),
    [("gauc", "scores contain 1 NaN values"), ("evaluate", "logits contain 1 NaN")],
)
def test_nan_scores_are_named(function, message):
    with pytest.raises(ValueError, match=message):
        _call(function, GOOD_LABELS, [0.2, float("nan"), 0.4])


@pytest.mark.parametrize("function", ["gauc", "evaluate"])
@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([1, 2], r"users must be 1-D with one id per label; got shape \(2,\) for 3"),
        ([[1, 1, 2]], r"got shape \(1, 3\) for 3 labels"),
        ([1.0, float("nan"), 2.0], "users contain 1 NaN values"),
    ],
)
def test_bad_users_are_named(function, users, message):
    with pytest.raises(ValueError, match=message):
        _call(function, GOOD_LABELS, GOOD_VALUES, users)


@pytest.mark.parametrize("eps", [0.0, -1e-7, 0.5, float("nan")])
def test_log_loss_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match=rf"eps must lie in \(0, 0.5\); got {eps!r}"):
        log_loss(np.array(GOOD_LABELS), np.array(GOOD_VALUES), eps=eps)


def test_platt_scaling_recovers_the_true_scale_and_lowers_logloss():
    rng = np.random.default_rng(3)
    true = rng.normal(-1.5, 1.0, size=200_000)
    labels = (rng.random(true.size) < 1 / (1 + np.exp(-true))).astype(np.float32)
    # Calibrated logits need nothing; over-confident ones are scaled down.
    scale, bias = platt_scaling(labels, true)
    assert abs(scale - 1) < 0.03 and abs(bias) < 0.03
    confident = 3 * true + 1
    scale, bias = platt_scaling(labels, confident)
    assert abs(scale - 1 / 3) < 0.01 and abs(bias + 1 / 3) < 0.03
    fixed = 1 / (1 + np.exp(-(scale * confident + bias)))
    assert log_loss(labels, fixed) < log_loss(labels, 1 / (1 + np.exp(-confident)))
    assert roc_auc(labels, fixed) == pytest.approx(roc_auc(labels, confident))


def test_platt_scaling_refuses_one_class_and_nan():
    with pytest.raises(ValueError, match="all 0; scaling needs both classes"):
        platt_scaling(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        platt_scaling(np.array([0, 1]), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="differ in length"):
        platt_scaling(np.array([0, 1]), np.zeros(3))


def test_platt_scaling_stays_finite_on_separable_rows():
    # Eight validation rows the logits split perfectly: the unsmoothed fit has
    # no minimum (it stopped at scale 20, bias -38: probabilities of 0 and 1).
    logits = np.array([-2.0, -1.5, -1.0, -0.5, 0.0, 0.4, 0.8, 3.0])
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    scale, bias = platt_scaling(labels, logits)
    assert 0 < scale < 10 and abs(bias) < 10
    probs = 1 / (1 + np.exp(-(scale * logits + bias)))
    # Ranking kept; the click's probability is high but not 1, the rest low.
    assert roc_auc(labels, probs) == 1.0
    assert 0.5 < probs[-1] < 0.99 and probs[:-1].max() < 0.5
