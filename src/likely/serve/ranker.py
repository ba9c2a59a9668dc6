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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from likely.config import FeatureSpec, Side
from likely.data.batches import Batch
from likely.recall.window import RowEncoder
from likely.train.predict import LoadedRun, load_run

logger = logging.getLogger(__name__)


def model_version(run_dir: Path) -> str:
    """`<run folder>@<first 12 hex of the weights' sha256>`: names the weights
    served, so two runs of one name (or a run retrained in place) differ."""
    weights = Path(run_dir) / "model" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return f"{Path(run_dir).name}@{digest}"


def _on_side(features: Sequence[FeatureSpec], side: Side) -> np.ndarray:
    """`(n,)` bool: which of these features are of `side`."""
    return np.array([f.side == side for f in features], dtype=bool)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# Encoded user and context parts kept between requests. A part is two small
# rows, so 100k of them take a few MB; past that the cache starts afresh.
CACHE_SIZE = 100_000


@dataclass(frozen=True)
class QueryRow:
    """The encoded row of one request, before the candidates' item columns.

    Attributes:
        sparse: `(1, F)` ids; item-side columns are 0 here.
        dense: `(1, F_dense)`.
        sequence: `(1, S, L)`.
    """

    sparse: np.ndarray
    dense: np.ndarray
    sequence: np.ndarray


@dataclass(frozen=True)
class RankedItems:
    """Candidates in score order.

    Attributes:
        rows: `(K,)` catalogue rows of the candidates, best first.
        logits: `(K,)` the model's logits, in the same order.
    """

    rows: np.ndarray
    logits: np.ndarray

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
        self.context_columns = [
            f.source for f in self.config.features if f.side == Side.CONTEXT
        ]
        config = self.config
        self.item_sparse = _on_side(config.sparse_features, Side.ITEM)
        self.item_dense = _on_side(config.dense_features, Side.ITEM)
        self.item_sequence = _on_side(config.sequence_features, Side.ITEM)
        self.sides = {
            side: (
                _on_side(config.sparse_features, side),
                _on_side(config.dense_features, side),
                list(
                    dict.fromkeys(
                        f.source
                        for f in config.features
                        if f.side == side and f not in config.sequence_features
                    )
                ),
            )
            for side in (Side.USER, Side.CONTEXT)
        }
        self.sequence_columns = [f.source for f in config.sequence_features]
        self._parts: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
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
        included) and context, the config's defaults under the request's.

        Each side is encoded on its own, exactly as a whole row would be
        (a feature reads its own column only; crosses are hashed later, over
        the assembled ids), so the user and context parts can be cached: a
        request then encodes only the behaviour list.
        """
        values = {**self.config.serve.context_defaults}
        values.update({k: v for k, v in context.items() if v is not None})
        user_sparse, user_dense = self._part(Side.USER, user)
        context_sparse, context_dense = self._part(Side.CONTEXT, values)
        sparse = np.where(self.sides[Side.USER][0], user_sparse, context_sparse)
        dense = np.where(self.sides[Side.USER][1], user_dense, context_dense)
        lists = {**values, **user}
        sequences = self.typed_row(
            {c: lists.get(c) or [] for c in self.sequence_columns}
        )
        sequence = self.run.encoders.sequence_ids(sequences)  # (1, S, L)
        return QueryRow(sparse, dense, sequence)

    def _part(
        self, side: Side, values: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(1, F)` ids and `(1, F_dense)` values of one side's columns."""
        columns = self.sides[side][2]
        key = (side, *(_hashable(values.get(c)) for c in columns))
        part = self._parts.get(key)
        if part is None:
            known = {c: values[c] for c in columns if values.get(c) is not None}
            encoded = self.rows.encode(self.typed_row(known))
            part = (encoded.sparse, encoded.dense)
            if len(self._parts) >= CACHE_SIZE:
                self._parts.clear()
            self._parts[key] = part
        return part

    def warm(self, users: pl.DataFrame) -> None:
        """Encode many users' parts in one pass (the window's users, at start)."""
        columns = [c for c in self.sides[Side.USER][2] if c in users.columns]
        rows = users.select(columns).unique(maintain_order=True)
        rows = rows.head(CACHE_SIZE - len(self._parts))
        encoded = self.rows.encode(rows)
        for i, row in enumerate(rows.iter_rows()):
            named = dict(zip(columns, row, strict=True))
            all_columns = self.sides[Side.USER][2]
            key = (Side.USER, *(_hashable(named.get(c)) for c in all_columns))
            self._parts[key] = (encoded.sparse[i : i + 1], encoded.dense[i : i + 1])

    def typed_row(self, row: Mapping[str, Any]) -> pl.DataFrame:
        """One row in the logs' column types; columns the logs lack are dropped.

        Raises:
            ValueError: a value does not fit its column's type; names both.
        """
        schema = self.rows.template.schema
        columns = []
        for name, value in row.items():
            if name not in schema:
                continue
            try:
                series = pl.Series(name, [value]).cast(schema[name], strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError):
                raise ValueError(
                    f"{name}: {value!r} is not a {schema[name]} value"
                ) from None
            columns.append(series)
        # A frame needs a height even when no column is known (a cold user
        # with an empty context): one row of a column the template ignores.
        return pl.DataFrame(columns) if columns else pl.DataFrame({"_": [0]})

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
        return self.run.model.score(batch).float().numpy()

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
        return RankedItems(candidates[top], logits[top])

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
