"""Ranking and calibration metrics for click models, computed with numpy.

Every metric works on the whole evaluation set at once: one sort, then group
sums, never a Python loop per row or per user. Models output logits;
:func:`evaluate` is the one place here that turns them into probabilities.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, from ranks (the Mann-Whitney U statistic).

    Tied scores get the average of the ranks they span, so a tie between a
    positive and a negative counts one half. The rank sum is kept in integers
    (twice the average rank is always whole), so the result is exact up to the
    final division.

    Args:
        labels: 0/1 (or boolean) click labels, shape (N,).
        scores: any real-valued scores, higher meaning more likely a click, shape
            (N,).

    Returns:
        The probability that a random positive scores above a random negative.

    Raises:
        ValueError: the arrays are not 1-D or differ in length, a label is not 0
            or 1, a score is NaN, or only one class is present.

    Example:
        >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    labels, scores = _check_labelled(labels, scores, "scores", require_rows=False)
    _check_no_nan(scores, "scores")
    positive = labels == 1
    num_positive = int(positive.sum())
    num_negative = labels.size - num_positive
    if num_positive == 0 or num_negative == 0:
        raise ValueError(
            f"AUC needs both classes; got {num_positive} positive and "
            f"{num_negative} negative labels"
        )

    order = np.argsort(scores, kind="stable")
    twice_u = _twice_mann_whitney_u(positive[order], scores[order], np.array([0]))
    return int(twice_u[0]) / (2 * num_positive * num_negative)


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with each user's impressions as weight.

    A user whose impressions are all clicks or all non-clicks says nothing about
    ranking and is left out, weight included. Ties within a user count one half,
    as in :func:`roc_auc`. One sort by (user, score) serves every user.

    Args:
        labels: 0/1 (or boolean) click labels, shape (N,).
        scores: any real-valued scores, higher meaning more likely a click, shape
            (N,).
        users: user ids of any sortable dtype, shape (N,).

    Returns:
        The impression-weighted mean of the per-user AUCs, or NaN (not an error)
        when no user has both a click and a non-click, so that a small or
        one-sided evaluation set still reports its other metrics.

    Raises:
        ValueError: the arrays are not 1-D, are empty or differ in length, a
            label is not 0 or 1, or a score or user id is NaN.

    Example:
        >>> labels = np.array([0, 1, 0, 1, 1, 1])
        >>> scores = np.array([0.2, 0.9, 0.5, 0.1, 0.3, 0.4])
        >>> users = np.array([7, 7, 8, 8, 9, 9])  # user 9 has clicks only
        >>> gauc(labels, scores, users)  # (2 * 1.0 + 2 * 0.0) / 4
        0.5
    """
    labels, scores = _check_labelled(labels, scores, "scores")
    _check_no_nan(scores, "scores")
    users = np.asarray(users)
    if users.ndim != 1 or users.size != labels.size:
        raise ValueError(
            f"users must be 1-D with one id per label; got shape {users.shape} "
            f"for {labels.size} labels"
        )
    if users.dtype.kind == "f":
        _check_no_nan(users, "users")

    order = np.lexsort((scores, users))  # by user, then by score within a user
    sorted_users = users[order]
    positive = labels[order] == 1
    user_starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    impressions = np.diff(np.r_[user_starts, labels.size])
    num_positive = np.add.reduceat(positive, user_starts, dtype=np.int64)
    num_negative = impressions - num_positive
    twice_u = _twice_mann_whitney_u(positive, scores[order], user_starts)

    ranked = (num_positive > 0) & (num_negative > 0)
    if not ranked.any():
        return float("nan")
    user_auc = twice_u[ranked] / (2.0 * num_positive[ranked] * num_negative[ranked])
    weights = impressions[ranked]
    return float(np.dot(weights, user_auc) / weights.sum())


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of click probabilities.

    Args:
        labels: 0/1 (or boolean) click labels, shape (N,).
        probs: predicted click probabilities in [0, 1], shape (N,).
        eps: probabilities are clipped to [eps, 1 - eps] first, so that a
            confident mistake costs -log(eps) rather than infinity.

    Returns:
        The mean of -log(p) over clicks and -log(1 - p) over non-clicks.

    Raises:
        ValueError: the arrays are not 1-D, are empty or differ in length, a
            label is not 0 or 1, a probability lies outside [0, 1] (or is NaN),
            or eps is not in (0, 0.5).

    Example:
        >>> round(log_loss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
        0.693147
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5); got {eps!r}")
    labels, probs = _check_labelled(labels, probs, "probs")
    _check_probs(probs)

    clipped = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
    log_likelihood = np.where(labels == 1, np.log(clipped), np.log1p(-clipped))
    return float(-log_likelihood.mean())


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean predicted CTR over observed CTR; 1.0 is calibrated, above 1 overpredicts.

    Args:
        labels: 0/1 (or boolean) click labels, shape (N,).
        probs: predicted click probabilities in [0, 1], shape (N,).

    Returns:
        mean(probs) / mean(labels), or NaN when there are no clicks (the observed
        CTR is zero and the ratio undefined).

    Raises:
        ValueError: the arrays are not 1-D, are empty or differ in length, a
            label is not 0 or 1, or a probability lies outside [0, 1] (or is NaN).

    Example:
        >>> calibration(np.array([0, 0, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
        2.0
    """
    labels, probs = _check_labelled(labels, probs, "probs")
    _check_probs(probs)

    num_clicks = int(np.count_nonzero(labels))
    if num_clicks == 0:
        return float("nan")
    return float(probs.sum(dtype=np.float64) / num_clicks)


def evaluate(
    labels: np.ndarray, logits: np.ndarray, users: np.ndarray | None = None
) -> dict[str, float]:
    """Every evaluation metric of one split, from the model's logits.

    Models output logits (the losses are with-logits); the sigmoid is applied
    here, and nowhere else in training, in a form that neither overflows nor
    warns at extreme logits. AUC and GAUC rank the logits themselves: in float64
    the sigmoid rounds every logit above about 37 to 1.0, which would turn
    distinct scores into ties.

    Args:
        labels: 0/1 (or boolean) click labels, shape (N,).
        logits: the model's raw outputs, shape (N,); +-inf is allowed.
        users: user ids, shape (N,), for GAUC; None to skip it.

    Returns:
        ``auc`` (NaN when only one class is present, where :func:`roc_auc`
        would raise), ``logloss``, ``gauc`` (only when users are given; NaN when
        no user has both classes), ``calibration`` (NaN without clicks),
        ``ctr`` (observed click rate), ``mean_prob`` (mean predicted click
        probability) and ``rows``.

    Raises:
        ValueError: the arrays are not 1-D, are empty or differ in length, a
            label is not 0 or 1, or a logit or user id is NaN.

    Example:
        >>> metrics = evaluate(np.array([0, 1, 1]), np.array([-2.0, 0.0, 3.0]))
        >>> metrics["auc"], metrics["rows"]
        (1.0, 3)
    """
    labels, logits = _check_labelled(labels, logits, "logits")
    _check_no_nan(logits, "logits")
    probs = _sigmoid(logits)

    num_clicks = int(np.count_nonzero(labels))
    both_classes = 0 < num_clicks < labels.size
    metrics = {
        "auc": roc_auc(labels, logits) if both_classes else float("nan"),
        "logloss": log_loss(labels, probs),
    }
    if users is not None:
        metrics["gauc"] = gauc(labels, logits, users)
    metrics["calibration"] = calibration(labels, probs)
    metrics["ctr"] = num_clicks / labels.size
    metrics["mean_prob"] = float(probs.mean())
    metrics["rows"] = labels.size
    return metrics


def platt_scaling(
    labels: np.ndarray, logits: np.ndarray, max_steps: int = 100
) -> tuple[float, float]:
    """`(scale, bias)` minimising the logloss of `sigmoid(scale * logit + bias)`.

    Newton's method on the two parameters, which is exact and fast for this
    convex problem. The scale is what corrects an over-confident model (one
    whose logits are too large), the bias a wrong base rate.

    The targets are Platt's smoothed labels, (N+ + 1) / (N+ + 2) for clicks
    and 1 / (N- + 2) for the rest, rather than 1 and 0: on rows the logits
    separate perfectly (a small validation split) the plain fit has no
    minimum and the scale runs off to thousands; smoothed, it stays finite,
    while on a split of thousands of rows the change is below 1e-3.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=100_000)
        >>> y = (rng.random(100_000) < 1 / (1 + np.exp(-(0.5 * z - 1)))).astype(float)
        >>> [round(v, 1) for v in platt_scaling(y, z)]
        [0.5, -1.0]

    Raises:
        ValueError: labels of one class only, or a NaN logit.
    """
    labels, z = _check_labelled(labels, logits, "logits")
    z = z.astype(np.float64)
    _check_no_nan(z, "logits")
    if labels.min() == labels.max():
        raise ValueError(f"labels are all {int(labels[0])}; scaling needs both classes")
    positives = int(labels.sum())
    negatives = labels.size - positives
    y = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(scale: float, bias: float) -> float:
        # log(1 + e^x) - y x, stable for large |x|.
        x = scale * z + bias
        return float(np.mean(np.logaddexp(0.0, x) - y * x))

    scale, bias = 1.0, 0.0
    current = loss(scale, bias)
    for _ in range(max_steps):
        probs = _sigmoid(scale * z + bias)
        residual = probs - y
        gradient = np.array([np.mean(residual * z), np.mean(residual)])
        weight = probs * (1 - probs) + 1e-12
        hessian = np.array(
            [
                [np.mean(weight * z * z), np.mean(weight * z)],
                [np.mean(weight * z), np.mean(weight)],
            ]
        )
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        # Backtrack: where the logits saturate the curvature is tiny and a
        # full Newton step overshoots.
        size = 1.0
        while size > 1e-6:
            trial = loss(scale - size * step[0], bias - size * step[1])
            if trial <= current:
                break
            size /= 2
        else:
            break
        scale, bias = scale - size * step[0], bias - size * step[1]
        improvement, current = current - trial, trial
        if improvement < 1e-12:
            break
    return float(scale), float(bias)


def _twice_mann_whitney_u(
    positive: np.ndarray, sorted_scores: np.ndarray, group_starts: np.ndarray
) -> np.ndarray:
    """Twice the Mann-Whitney U of each group, in exact integers.

    Rows must already be sorted by group, then by score within a group; group g
    spans rows group_starts[g] up to the next start. Each run of equal scores
    within a group spans ranks a+1 .. b counted from the group's start s, so
    twice their mean rank is a + b + 1 - 2s, a whole number.

    Shape:
        positive, sorted_scores: (N,); group_starts: (G,) -> (G,) int64.
    """
    size = sorted_scores.size
    group_change = np.zeros(size, dtype=bool)
    group_change[group_starts] = True
    run_starts = np.flatnonzero(
        group_change | np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    )
    run_ends = np.r_[run_starts[1:], size]
    group_of_run = np.cumsum(group_change)[run_starts] - 1
    twice_run_rank = run_starts + run_ends + 1 - 2 * group_starts[group_of_run]
    twice_rank = np.repeat(twice_run_rank.astype(np.int64), run_ends - run_starts)

    twice_rank_sum = np.add.reduceat(np.where(positive, twice_rank, 0), group_starts)
    num_positive = np.add.reduceat(positive, group_starts, dtype=np.int64)
    return twice_rank_sum - num_positive * (num_positive + 1)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp is only taken of -|x|."""
    logits = logits.astype(np.float64)
    decay = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + decay), decay / (1.0 + decay))


def _check_labelled(
    labels: np.ndarray, values: np.ndarray, name: str, *, require_rows: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and values as arrays, once both are 1-D, equally long and 0/1-labelled.

    require_rows=False leaves empty input to the caller, whose own check then
    names the problem (roc_auc reports "0 positive and 0 negative").
    """
    labels = np.asarray(labels)
    values = np.asarray(values)
    if labels.ndim != 1 or values.ndim != 1:
        raise ValueError(
            f"labels and {name} must be 1-D; got shapes {labels.shape} and "
            f"{values.shape}"
        )
    if labels.shape != values.shape:
        raise ValueError(
            f"labels and {name} differ in length: {labels.size} labels, "
            f"{values.size} {name}"
        )
    if require_rows and labels.size == 0:
        raise ValueError(f"labels and {name} are empty; need at least one row")
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        found = np.unique(labels[bad])[:5].tolist()
        raise ValueError(f"labels must be 0 or 1; found {found}")
    return labels, values


def _check_no_nan(values: np.ndarray, name: str) -> None:
    nan = np.isnan(values)
    if nan.any():
        raise ValueError(f"{name} contain {int(nan.sum())} NaN values")


def _check_probs(probs: np.ndarray) -> None:
    outside = ~((probs >= 0) & (probs <= 1))  # NaN counts as outside
    if outside.any():
        found = np.unique(probs[outside])[:5].tolist()
        raise ValueError(
            f"probs must lie in [0, 1]; {int(outside.sum())} do not, e.g. {found}"
        )
