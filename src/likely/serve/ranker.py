"""Real-time ranking: one user's candidates scored by a trained run in one batch.

Serving applies exactly the preprocessing of training, but not row by row.
When the ranker is built, every item of the catalogue is encoded once with
the run's encoders into item-side arrays. A request then encodes one row (the
user's features, their recent clicks and the context) and builds the batch
`(K, F)` by broadcasting that row and gathering the candidates' item columns
by index; crosses are hashed over the assembled ids, so a cross of a user
field and an item field is what training saw. No Python runs per candidate.

The catalogue's item rows are the recall artifact's, so a candidate from the
item index is a row number into the ranker's arrays as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from likely.config import Side
from likely.data.batches import Batch
from likely.recall.window import (
    QueryEncoder,
    QueryRow,
    RowEncoder,
    on_side,
    side_columns,
)
from likely.train.predict import LoadedRun, load_run
from likely.train.trainer import pick_device, pick_precision

logger = logging.getLogger(__name__)


def model_version(run_dir: Path) -> str:
    """`<run folder>@<first 12 hex of the weights' sha256>`: names the weights
    served, so two runs of one name (or a run retrained in place) differ."""
    weights = Path(run_dir) / "model" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return f"{Path(run_dir).name}@{digest}"


@dataclass(frozen=True)
class RankedItems:
    """Candidates in score order.

    Attributes:
        rows: `(K,)` catalogue rows of the candidates, best first.
        logits: `(K,)` the model's logits, in the same order.
        order: `(K,)` where each stood in the candidates given, so that
            `candidates[order] == rows`.
    """

    rows: np.ndarray
    logits: np.ndarray
    order: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        """`(K,)` click probabilities."""
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


class Ranker:
    """A trained ranking run with the catalogue encoded for it.

    Args:
        run: the loaded run (model, config, encoders).
        items: the catalogue: one row per item with its item-side columns.
        template: no rows; every raw column of the logs with its type.
    """

    def __init__(self, run: LoadedRun, items: pl.DataFrame, template: pl.DataFrame):
        self.run, self.config = run, run.config
        self.version = model_version(run.run_dir)
        # The day column is no feature, but encoding reads it: the run's
        # target day fills it.
        manifest = json.loads((run.run_dir / "manifest.json").read_text())
        self.rows = RowEncoder.for_config(
            self.config, run.encoders, template, manifest.get("target_date")
        )
        self.context_columns = side_columns(self.config, Side.CONTEXT)
        config = self.config
        self.item_sparse = on_side(config.sparse_features, Side.ITEM)
        self.item_dense = on_side(config.dense_features, Side.ITEM)
        self.item_sequence = on_side(config.sequence_features, Side.ITEM)
        self.query = QueryEncoder(config, self.rows)
        self.device = pick_device(config.serve.device)
        run.model.to(self.device)
        self.bf16 = pick_precision(config.serve.precision, self.device) == "bf16"
        encoded = self.rows.encode(items)
        # Only the item-side columns are ever read from these arrays.
        self.items = (
            np.ascontiguousarray(encoded.sparse[:, self.item_sparse]),
            np.ascontiguousarray(encoded.dense[:, self.item_dense]),
            np.ascontiguousarray(encoded.sequence[:, self.item_sequence]),
        )
        self.num_items = items.height
        logger.info(
            "ranker %s: %s model, %d catalogue items encoded",
            self.version,
            self.config.model.name,
            self.num_items,
        )

    @classmethod
    def load(cls, run_dir: Path, items: pl.DataFrame, template: pl.DataFrame) -> Ranker:
        """Load a finished ranking run and encode the catalogue for it."""
        return cls(load_run(Path(run_dir)), items, template)

    def query_row(
        self, user: Mapping[str, Any], context: Mapping[str, Any]
    ) -> QueryRow:
        """The one encoded row of a request: user columns (their behaviour list
        included) and context, the config's defaults under the request's."""
        values = {**self.config.serve.context_defaults}
        values.update({k: v for k, v in context.items() if v is not None})
        return self.query.encode(user, values)

    def warm(self, users: pl.DataFrame) -> None:
        """Encode the parts of many users in one pass (the window's, at start)."""
        self.query.warm(users)

    def typed_row(self, row: Mapping[str, Any], *, exact: bool = False) -> pl.DataFrame:
        """One row in the logs' column types; see `QueryEncoder.typed_row`."""
        return self.query.typed_row(row, exact=exact)

    def batch(self, query: QueryRow, candidates: np.ndarray) -> Batch:
        """The `(K, ...)` batch of one query row against candidate item rows."""
        k = len(candidates)
        item_sparse, item_dense, item_sequence = self.items
        sparse = np.repeat(query.sparse, k, axis=0)  # (K, F)
        sparse[:, self.item_sparse] = item_sparse[candidates]
        dense = np.repeat(query.dense, k, axis=0)  # (K, F_dense)
        dense[:, self.item_dense] = item_dense[candidates]
        sequence = np.repeat(query.sequence, k, axis=0)  # (K, S, L)
        sequence[:, self.item_sequence] = item_sequence[candidates]
        cross = self.run.encoders.cross_ids(sparse)  # (K, C)
        return Batch(
            sparse=torch.from_numpy(sparse.astype(np.int64)),
            dense=torch.from_numpy(dense),
            sequence=torch.from_numpy(sequence.astype(np.int64)),
            cross=torch.from_numpy(cross.astype(np.int64)),
            label=torch.zeros(k),
            user=torch.zeros(k, dtype=torch.int64),
        )

    @torch.inference_mode()
    def logits(
        self,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        candidates: np.ndarray,
    ) -> np.ndarray:
        """`(K,)` logits of candidate item rows for one user, in their order.

        Raises:
            IndexError: a candidate is not a row of the catalogue.
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        if len(candidates) == 0:
            return np.zeros(0, dtype=np.float32)
        bad = (candidates < 0) | (candidates >= self.num_items)
        if bad.any():
            raise IndexError(
                f"candidate rows {candidates[bad][:5].tolist()} are outside the "
                f"catalogue of {self.num_items} items"
            )
        batch = self.batch(self.query_row(user, context), candidates)
        batch = batch.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.run.model.score(batch).float().cpu().numpy()

    def rank(
        self,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        candidates: np.ndarray,
        k: int,
    ) -> RankedItems:
        """The best `k` candidates (fewer if fewer), by logit."""
        candidates = np.asarray(candidates, dtype=np.int64)
        logits = self.logits(user, context, candidates)
        k = min(k, len(candidates))
        if k < len(candidates):
            top = np.argpartition(-logits, k - 1)[:k]
            top = top[np.argsort(-logits[top], kind="stable")]
        else:
            top = np.argsort(-logits, kind="stable")
        return RankedItems(candidates[top], logits[top], top)

    def check(self, user: Mapping[str, Any]) -> None:
        """Score a probe request; raise unless every logit is finite.

        Raises:
            ValueError: the model returned a non-finite logit or a wrong shape.
        """
        probe = np.arange(min(self.num_items, 64))
        logits = self.logits(user, {}, probe)
        if logits.shape != probe.shape or not np.isfinite(logits).all():
            raise ValueError(
                f"model {self.version} failed its probe: {len(probe)} candidates "
                f"gave logits of shape {logits.shape}, finite: "
                f"{bool(np.isfinite(logits).all())}"
            )
