"""Recall@K and hit rate@K of the target day's clicks, against two baselines.

Every user who clicked on the target day is queried once, with their latest
features and behaviour of the training window (the state a recall service
would hold at the start of the day). Three candidate lists of K items are
compared:

- `two_tower`: the recall artifact's index, queried with the user vector;
- `popularity`: the K most clicked items of the window, the same for all;
- `ranking item embeddings`: the mean of a trained ranking model's item-id
  embeddings over the user's recent clicks, against every item's embedding,
  by inner product.

A user with no recent clicks gets the popularity list from every method.

recall@K is, per user, the share of their distinct clicked items that are in
their K candidates, averaged over users; hit rate@K is the share of users
with at least one clicked item among them. Items first seen on the target day
are in no window's catalogue and count as misses for every method; the share
of clicks on catalogue items is reported as the reachable ceiling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from likely.config import ExactIndexConfig
from likely.data.prepare import Prepared
from likely.models.inputs import _TableGroup
from likely.recall.artifact import Recaller
from likely.recall.index import ItemIndex
from likely.recall.window import target_clicks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodScores:
    """One method's scores on the target day."""

    method: str
    recall: float
    hit_rate: float


@dataclass(frozen=True)
class RecallEvaluation:
    """Every method's scores and what they were measured on."""

    k: int
    users: int
    clicks: int
    reachable: float  # share of clicked (user, item) pairs on catalogue items
    users_without_history: int
    methods: list[MethodScores]

    def to_json(self) -> dict:
        return asdict(self)


def score_lists(
    candidates: np.ndarray, click_users: np.ndarray, click_items: np.ndarray
) -> tuple[float, float]:
    """(recall@K, hit rate@K) of candidate lists against clicks.

    Args:
        candidates: `(U, K)` item rows per user, -1 where a list is short.
        click_users: `(P,)` user row of each distinct clicked pair.
        click_items: `(P,)` item row of each pair, -1 for an item outside the
            catalogue (never a hit).

    >>> score_lists(np.array([[0, 1], [2, -1]]), np.array([0, 0, 1]),
    ...             np.array([1, 5, -1]))
    (0.25, 0.5)
    """
    num_users, k = candidates.shape
    width = int(max(candidates.max(initial=0), click_items.max(initial=0))) + 1
    offered = (np.arange(num_users)[:, None] * width + candidates)[candidates >= 0]
    pairs = click_users * width + click_items
    hit = np.isin(pairs, offered) & (click_items >= 0)
    clicks = np.bincount(click_users, minlength=num_users)
    hits = np.bincount(click_users, weights=hit, minlength=num_users)
    counted = clicks > 0
    recall = float(np.mean(hits[counted] / clicks[counted]))
    hit_rate = float(np.mean(hits[counted] > 0))
    return recall, hit_rate


def _item_table(run, table: str) -> np.ndarray:
    """The widest embedding rows of `table` in a ranking run's model."""
    best = None
    for module in run.model.modules():
        if isinstance(module, _TableGroup) and table in module.table_rows:
            start, rows = module.table_rows[table]
            weight = module.embedding.weight.detach()[start : start + rows]
            if best is None or weight.shape[1] > best.shape[1]:
                best = weight
    if best is None or best.shape[1] < 2:
        raise ValueError(
            f"the ranking run {run.run_dir} has no item embeddings for table "
            f"'{table}' (a model with only a wide part, such as lr, has none); "
            "use a run of a deep model"
        )
    return best.float().numpy()


def ranking_candidates(
    ranking_run: Path, recaller: Recaller, users: pl.DataFrame, k: int
) -> np.ndarray:
    """`(U, K)` item rows by the mean item-id embedding of each user's recent
    clicks, from a trained ranking run; popularity for users without clicks.
    """
    from likely.train.predict import load_run

    run = load_run(ranking_run)
    name = recaller.config.recall.item_feature
    feature = next((f for f in run.config.features if f.name == name), None)
    if feature is None or recaller.behaviour is None:
        raise ValueError(
            f"the ranking run {ranking_run} has no feature '{name}', or the "
            "config has no behaviour sequence sharing its table"
        )
    encoder = run.encoders.tables[feature.group]
    table = _item_table(run, feature.group)  # (V, D)
    item_ids = encoder.transform(recaller.items[recaller.item_column])
    index = ItemIndex.build(
        table[item_ids], np.arange(len(item_ids)), ExactIndexConfig()
    )

    has_history = recaller.has_history(users)
    out = np.full((users.height, k), -1, dtype=np.int64)
    popular = recaller.popular(k)
    out[:, : len(popular)] = popular
    rows = np.flatnonzero(has_history)
    history = users[recaller.behaviour].gather(rows)
    lengths = history.list.len().to_numpy().astype(np.int64)
    flat = history.explode().drop_nulls()
    clicked = torch.from_numpy(table[encoder.transform(flat)])  # (sum lengths, D)
    owner = torch.from_numpy(np.repeat(np.arange(len(rows)), lengths))
    sums = torch.zeros(len(rows), table.shape[1]).index_add_(0, owner, clicked)
    means = sums / torch.from_numpy(lengths).clamp(min=1).unsqueeze(1).float()
    out[rows] = index.search(means.numpy(), k)[1]
    return out


def evaluate_recall(
    recaller: Recaller,
    prepared: Prepared,
    ranking_run: Path | None,
    k: int | None = None,
) -> RecallEvaluation:
    """Score the two-tower index and the baselines on the target day's clicks.

    Args:
        recaller: the loaded recall artifact.
        prepared: its prepared window (for the target day's logs).
        ranking_run: a trained ranking run for the embedding baseline, or None
            to leave that baseline out.
        k: candidates per user; default `recall.num_candidates`.
    """
    k = k or recaller.num_candidates
    clicks = target_clicks(recaller.config, prepared)
    user, item = recaller.user_column, recaller.item_column
    users = clicks.select(user).unique(maintain_order=True)
    rows = users.join(recaller.users, on=user, how="left", maintain_order="left")
    user_row = users.with_row_index("user_row")
    item_row = recaller.items.select(item).with_row_index("item_row")
    pairs = clicks.join(user_row, on=user, how="left").join(
        item_row, on=item, how="left"
    )
    click_users = pairs["user_row"].to_numpy().astype(np.int64)
    click_items = pairs["item_row"].fill_null(-1).to_numpy().astype(np.int64)
    without = int((~recaller.has_history(rows)).sum())
    logger.info(
        "evaluating %d users with %d clicks on the target day (%d without history)",
        users.height,
        len(click_users),
        without,
    )

    lists = {"two_tower": recaller.search(rows, k)}
    popular = np.full((users.height, k), -1, dtype=np.int64)
    top = recaller.popular(k)
    popular[:, : len(top)] = top
    lists["popularity"] = popular
    if ranking_run is not None:
        lists["ranking item embeddings"] = ranking_candidates(
            ranking_run, recaller, rows, k
        )
    methods = [
        MethodScores(name, *score_lists(candidates, click_users, click_items))
        for name, candidates in lists.items()
    ]
    return RecallEvaluation(
        k=k,
        users=users.height,
        clicks=len(click_users),
        reachable=float(np.mean(click_items >= 0)),
        users_without_history=without,
        methods=methods,
    )
