"""Ranking and calibration metrics for click models, computed with numpy."""

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
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D; got shapes {labels.shape} and "
            f"{scores.shape}"
        )
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores differ in length: {labels.size} labels, "
            f"{scores.size} scores"
        )
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        found = np.unique(labels[bad])[:5].tolist()
        raise ValueError(f"labels must be 0 or 1; found {found}")
    if np.isnan(scores).any():
        raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN values")
    positive = labels == 1
    num_positive = int(positive.sum())
    num_negative = labels.size - num_positive
    if num_positive == 0 or num_negative == 0:
        raise ValueError(
            f"AUC needs both classes; got {num_positive} positive and "
            f"{num_negative} negative labels"
        )

    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Each run of equal scores spans ranks start+1 .. end; twice their mean is
    # start + end + 1, a whole number.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    twice_rank = np.repeat(starts + ends + 1, ends - starts)
    twice_rank_sum = int(twice_rank[positive[order]].sum(dtype=np.int64))

    twice_u = twice_rank_sum - num_positive * (num_positive + 1)
    return twice_u / (2 * num_positive * num_negative)
