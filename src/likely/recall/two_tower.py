"""The two-tower recall model and its in-batch sampled-softmax objective.

A user tower reads the user-side fields and the behaviour sequences of a row,
an item tower its item-side fields; each is an MLP ending in an L2-normalised
vector, and a (user, item) pair scores their inner product. Both towers look
their ids up in one `FeatureEmbedding` built from the same tables as ranking,
so `recent_clicks` and `item_id`, which share the `item` table, embed a
clicked item and a candidate item in the same row.

Training (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large
Corpus Item Recommendations", RecSys 2019): each clicked impression is a
positive pair, and the other items of the batch are its negatives. A batch
drawn from clicks holds popular items more often, so as negatives they would
be pushed down in proportion to their popularity; subtracting log q(item),
the item's share of the clicks, from every logit removes that bias.

Shapes, besides the glossary of `likely.models.layers`: `E` the output
(vector) width, `F_s` sparse columns, `S` sequences, `L` sequence length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from likely.config import ExperimentConfig, FeatureSpec, RecallConfig, Side
from likely.data.batches import Batch, SplitArrays, gather
from likely.data.encoders import FIRST_ID
from likely.data.prepare import Prepared
from likely.models.inputs import FeatureEmbedding, FeatureLayout
from likely.models.layers import MLP

logger = logging.getLogger(__name__)

MODEL_NAME = "two_tower"
# Rows whose vectors are computed at once when embedding a catalogue or users.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class TowerColumns:
    """Which columns of a batch's arrays feed which tower.

    Context fields feed neither: recall runs before a slot, hour or page is
    known. Sequences of the user side (behaviour) feed the user tower,
    sequences of the item side the item tower.
    """

    user_sparse: tuple[int, ...]
    item_sparse: tuple[int, ...]
    user_dense: tuple[int, ...]
    item_dense: tuple[int, ...]
    user_sequences: tuple[int, ...]
    item_sequences: tuple[int, ...]
    item_id: int  # column of `sparse` holding the item's id

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> TowerColumns:
        config.check_recall()

        def side(features: list[FeatureSpec], wanted: Side) -> tuple[int, ...]:
            return tuple(j for j, f in enumerate(features) if f.side == wanted)

        sparse = config.sparse_features
        names = [f.name for f in sparse]
        return cls(
            user_sparse=side(sparse, Side.USER),
            item_sparse=side(sparse, Side.ITEM),
            user_dense=side(config.dense_features, Side.USER),
            item_dense=side(config.dense_features, Side.ITEM),
            user_sequences=side(config.sequence_features, Side.USER),
            item_sequences=side(config.sequence_features, Side.ITEM),
            item_id=names.index(config.recall.item_feature),
        )


def _index(values: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


class Tower(nn.Module):
    """An MLP and a linear map to `E`, then L2 normalisation: `(B, H_in)` to
    unit vectors `(B, E)`."""

    def __init__(self, input_dim: int, recall: RecallConfig):
        super().__init__()
        self.mlp = MLP(input_dim, recall.hidden_dims, activation=recall.activation)
        self.out = nn.Linear(self.mlp.output_dim, recall.output_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.mlp(inputs)), dim=1)  # (B, E)


class TwoTower(nn.Module):
    """User and item towers over one shared embedding layer.

    Every method takes the arrays of a `Batch` in the prepared column order
    and reads its own side's columns, so the same encoded rows serve training,
    item vectors and query-time user vectors.

    Args:
        config: the experiment config; `recall` shapes the towers.
        layout: the prepared window's layout (every table and field).
        sparse: embedding tables produce sparse gradients (for SparseAdam).
    """

    user_index: torch.Tensor
    item_index: torch.Tensor

    def __init__(
        self, config: ExperimentConfig, layout: FeatureLayout, *, sparse: bool = False
    ):
        super().__init__()
        columns = TowerColumns.from_config(config)
        self.columns = columns
        sparse_columns = columns.user_sparse + columns.item_sparse
        sequences = columns.user_sequences + columns.item_sequences
        sparse_tables = tuple(layout.sparse_tables[j] for j in sparse_columns)
        sequence_tables = tuple(layout.sequence_tables[s] for s in sequences)
        used = set(sparse_tables + sequence_tables)
        tower_layout = FeatureLayout(
            tables=tuple(t for t in layout.tables if t.name in used),
            sparse_tables=sparse_tables,
            sequence_tables=sequence_tables,
            num_dense=len(columns.user_dense) + len(columns.item_dense),
            cross_sizes=(),
        )
        self.embedding = FeatureEmbedding(tower_layout, sparse=sparse)
        self.register_buffer("sparse_columns", _index(sparse_columns), persistent=False)
        self.register_buffer("sequences", _index(sequences), persistent=False)
        self.register_buffer("user_dense", _index(columns.user_dense), persistent=False)
        self.register_buffer("item_dense", _index(columns.item_dense), persistent=False)

        # Tower fields, numbered as FeatureEmbedding numbers them: the user's
        # sparse columns, the item's, then user sequences, item sequences.
        num_sparse = len(sparse_columns)
        user_fields = set(range(len(columns.user_sparse)))
        user_fields |= {num_sparse + s for s in range(len(columns.user_sequences))}
        user_dims, item_dims, start = [], [], 0
        for field, width in self.embedding.flat_blocks():
            dims = user_dims if field in user_fields else item_dims
            dims.extend(range(start, start + width))
            start += width
        self.register_buffer("user_index", _index(tuple(user_dims)), persistent=False)
        self.register_buffer("item_index", _index(tuple(item_dims)), persistent=False)
        recall = config.recall
        self.user_tower = Tower(len(user_dims) + len(columns.user_dense), recall)
        self.item_tower = Tower(len(item_dims) + len(columns.item_dense), recall)
        self.output_dim = recall.output_dim

    def _flat(self, sparse: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """`(B, W)` embeddings of every tower field of the rows."""
        ids = sparse.index_select(1, self.sparse_columns)  # (B, F_t)
        behaviour = sequence.index_select(1, self.sequences)  # (B, S_t, L)
        return self.embedding.flat(ids, behaviour)

    def _user(self, flat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = [flat.index_select(1, self.user_index)]
        inputs.append(dense.index_select(1, self.user_dense))
        return self.user_tower(torch.cat(inputs, dim=1))  # (B, E)

    def _item(self, flat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = [flat.index_select(1, self.item_index)]
        inputs.append(dense.index_select(1, self.item_dense))
        return self.item_tower(torch.cat(inputs, dim=1))  # (B, E)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item vectors of each row, `(B, E)` each, unit length.

        The embeddings of both towers come from one lookup. `cross` is unused
        (crossed ids belong to the ranking model's wide part) and is taken so
        that the trainer calls every model the same way.
        """
        flat = self._flat(sparse, sequence)
        return self._user(flat, dense), self._item(flat, dense)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """`(B, E)` user vectors of rows; only user-side columns are read."""
        return self._user(self._flat(batch.sparse, batch.sequence), batch.dense)

    def item_vectors(self, batch: Batch) -> torch.Tensor:
        """`(B, E)` item vectors of rows; only item-side columns are read."""
        return self._item(self._flat(batch.sparse, batch.sequence), batch.dense)


def inner_products(user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """`(U, N)` float32 inner products of `user (U, E)` and `item (N, E)`.

    Kept in float32 under bf16 autocast: at temperature 0.05 logits span
    +-20, where bfloat16 steps by 0.125, too coarse for a softmax or a top-K.
    """
    with torch.autocast(user.device.type, enabled=False):
        return user.float() @ item.float().T


def sampled_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax: row i's item is its positive, the others of
    the batch its negatives.

    Logits are `<u_i, v_j> / temperature - log q_j`, with the log-frequency
    correction where `log_q` is given. A column holding the same item as the
    row's positive (a popular item twice in one batch) is masked out of that
    row: it is not a negative.

    Args:
        user: `(B, E)` user vectors.
        item: `(B, E)` item vectors of the clicked items.
        item_ids: `(B,)` item ids, to find repeated items.
        temperature: divides the inner products.
        log_q: `(B,)` log of each item's sampling probability, or None.

    Returns:
        The mean cross-entropy over the B rows, a scalar.
    """
    logits = inner_products(user, item) / temperature  # (B, B)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)  # (B, B)
    eye = torch.eye(len(item_ids), dtype=torch.bool, device=item_ids.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(item_ids), device=item_ids.device)
    return F.cross_entropy(logits, target)


def click_log_frequency(item_ids: np.ndarray, num_items: int) -> np.ndarray:
    """`(num_items,)` log of each id's share of `item_ids`, the clicked items.

    Ids never clicked never enter a batch, so their value only has to be
    finite: they get the log share of one click.

    >>> np.exp(click_log_frequency(np.array([3, 3, 4, 3]), 5)).round(2).tolist()
    [0.25, 0.25, 0.25, 0.75, 0.25]
    """
    counts = np.bincount(item_ids, minlength=num_items).astype(np.float64)
    total = max(counts.sum(), 1.0)
    return np.log(np.maximum(counts, 1.0) / total)


def _last_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct id of `ids (N,)` and the row of its last occurrence."""
    distinct, first_from_end = np.unique(ids[::-1], return_index=True)
    return distinct, len(ids) - 1 - first_from_end


@torch.no_grad()
def batch_vectors(
    encode: Callable[[Batch], torch.Tensor],
    arrays: dict[str, np.ndarray],
    rows: np.ndarray,
    device: torch.device,
) -> torch.Tensor:
    """`(R, E)` vectors of `rows` of `arrays`, `encode(batch)` in chunks."""
    parts = [
        encode(gather(arrays, rows[start : start + CHUNK_ROWS]).to(device))
        for start in range(0, len(rows), CHUNK_ROWS)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


class RetrievalObjective:
    """Train `TwoTower` on the window's clicked impressions.

    Each batch holds clicked rows only; the loss is `sampled_softmax_loss`
    with the log-frequency correction where `recall.logq_correction` is set.
    The best epoch is the one with the highest `recall`: the share of the
    held-out split's clicks whose item is among the top `num_candidates` of
    the training window's items, queried with the click row's own user
    features and behaviour. That catalogue holds items with their own id
    (seen at least the vocabulary's min_count times); clicks on rarer items
    count as misses.

    Args:
        config: the experiment config (its `recall` section).
        prepared: the prepared window; item click counts come from its
            training split.
    """

    name = MODEL_NAME
    metric = "recall"

    def __init__(self, config: ExperimentConfig, prepared: Prepared):
        self.config, self.recall = config, config.recall
        self.columns = TowerColumns.from_config(config)
        train = SplitArrays(prepared.folder / "train")
        labels = np.asarray(train.arrays["label"])
        self.clicked = np.flatnonzero(labels > 0.5)
        if not len(self.clicked):
            raise ValueError(
                f"the training split of {prepared.folder} has no clicks; a recall "
                "model trains on clicked impressions"
            )
        items = np.asarray(train.arrays["sparse"][:, self.columns.item_id])
        table = config.features[
            [f.name for f in config.features].index(self.recall.item_feature)
        ].group
        log_q = click_log_frequency(
            items[self.clicked].astype(np.int64),
            int(prepared.manifest["vocab_sizes"][table]),
        )
        self.log_q = torch.from_numpy(log_q.astype(np.float32))
        self._catalogue = _last_rows(items.astype(np.int64))
        logger.info(
            "recall training rows: %d clicks of %d impressions; %d clicked items",
            len(self.clicked),
            len(labels),
            int(np.count_nonzero(np.bincount(items[self.clicked]))),
        )

    def build_model(self, layout: FeatureLayout, *, sparse: bool) -> nn.Module:
        return TwoTower(self.config, layout, sparse=sparse)

    def model_info(self) -> dict[str, Any]:
        return {"name": MODEL_NAME, **self.recall.model_dump(mode="json")}

    def train_rows(self, split: SplitArrays) -> np.ndarray | None:
        return self.clicked

    def calibrate(self, model: nn.Module, prepared: Prepared) -> dict[str, float]:
        """Nothing: recall ranks by inner products, which need no calibration."""
        return {}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        user, item = model(batch.sparse, batch.dense, batch.sequence, batch.cross)
        item_ids = batch.sparse[:, self.columns.item_id]  # (B,)
        log_q = None
        if self.recall.logq_correction:
            if self.log_q.device != item_ids.device:
                self.log_q = self.log_q.to(item_ids.device)
            log_q = self.log_q[item_ids]
        return sampled_softmax_loss(
            user, item, item_ids, self.recall.temperature, log_q
        )

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, prepared: Prepared, split: str, device: torch.device
    ) -> dict[str, float]:
        """`recall`: share of the split's clicks retrieved in the top K."""
        distinct, rows = self._catalogue
        known = distinct >= FIRST_ID
        catalogue, rows = distinct[known], np.sort(rows[known])
        train = SplitArrays(prepared.folder / "train").arrays
        items = batch_vectors(model.item_vectors, train, rows, device)  # (N, E)
        item_ids = torch.from_numpy(
            np.asarray(train["sparse"][rows, self.columns.item_id]).astype(np.int64)
        ).to(device)
        arrays = SplitArrays(prepared.folder / split).arrays
        queries = np.flatnonzero(np.asarray(arrays["label"]) > 0.5)
        k = min(self.recall.num_candidates, len(catalogue))
        hits = 0
        for start in range(0, len(queries), CHUNK_ROWS):
            batch = gather(arrays, queries[start : start + CHUNK_ROWS]).to(device)
            users = model.user_vectors(batch)  # (B, E)
            top = inner_products(users, items).topk(k, dim=1).indices  # (B, K)
            target = batch.sparse[:, self.columns.item_id]
            hits += int((item_ids[top] == target.unsqueeze(1)).any(dim=1).sum())
        return {
            "recall": hits / len(queries) if len(queries) else float("nan"),
            "clicks": float(len(queries)),
            "items": float(len(catalogue)),
        }
