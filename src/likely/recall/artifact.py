"""The recall artifact, and the recaller that answers queries from it.

A recall run is a training run folder (see `likely.train.trainer`) with a
`recall/` folder added once training ends:

    run/
      config.json  manifest.json  encoders.json  metrics.jsonl  checkpoints/
      model/model.safetensors  model/model.json    the two-tower weights
      recall/
        items.parquet      each item of the window: raw id, item-side columns,
                           clicks and impressions, most clicked first
        item_vectors.npy   (N, E) float32; row i is item i of items.parquet
        users.parquet      each user's latest user-side row of the window
        template.parquet   no rows: the logs' raw columns and their types
        index.faiss  index.json                the item index (`index.py`)
        recall.json        sizes and build times

The index stores each item's row in items.parquet as its id, so a search
result indexes straight into the item table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from likely.config import ExperimentConfig, load_config
from likely.data.batches import Batch, gather
from likely.data.encoders import EncodedColumns, FeatureEncoders
from likely.data.prepare import ARRAY_NAMES, ENCODERS, Prepared
from likely.models.inputs import FeatureLayout
from likely.recall.index import ItemIndex
from likely.recall.two_tower import CHUNK_ROWS, TwoTower
from likely.recall.window import (
    CLICKS,
    QueryEncoder,
    RowEncoder,
    WindowRows,
    behaviour_column,
    item_column,
    read_window,
    user_column,
)
from likely.train.checkpoint import atomic_write_json, load_weights

logger = logging.getLogger(__name__)

RECALL_DIR = "recall"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "item_vectors.npy"
USERS_FILE = "users.parquet"
TEMPLATE_FILE = "template.parquet"
SUMMARY_FILE = "recall.json"


@dataclass(frozen=True)
class Recommendation:
    """Candidates for one user, best first.

    Attributes:
        items: raw item ids.
        scores: `(K,)` inner products of user and item vectors, or, for the
            popularity list, each item's clicks in the window.
        source: `two_tower`, or `popularity` for a user without history.
    """

    items: list[Any]
    scores: np.ndarray
    source: Literal["two_tower", "popularity"]


def _load_model(run_dir: Path, config: ExperimentConfig) -> TwoTower:
    model_json = run_dir / "model" / "model.json"
    if not model_json.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no trained model ({model_json} is missing); did "
            "`likely recall train` finish?"
        )
    info = json.loads(model_json.read_text())
    if info["model"].get("name") != "two_tower":
        raise ValueError(
            f"{run_dir} holds a '{info['model'].get('name')}' model, not a "
            "two-tower recall model; train one with `likely recall train`"
        )
    layout = FeatureLayout.from_config(config, info["vocab_sizes"], info["cross_sizes"])
    model = TwoTower(config, layout)
    load_weights(run_dir / "model" / "model.safetensors", model)
    return model.eval()


class Recaller:
    """A loaded recall artifact: user vectors at query time, items from the
    index, and the popularity list for users without history.

    Build the artifact with `build_artifact` and load it with
    `Recaller.load(run_dir)`.
    """

    def __init__(
        self,
        run_dir: Path,
        config: ExperimentConfig,
        model: TwoTower,
        rows: RowEncoder,
        items: pl.DataFrame,
        users: pl.DataFrame,
        index: ItemIndex | None,
    ):
        self.run_dir, self.config, self.model, self.rows = run_dir, config, model, rows
        self.items, self.users, self.index = items, users, index
        self.item_column = item_column(config)
        self.user_column = user_column(config)
        self.behaviour = behaviour_column(config)
        self.num_candidates = config.recall.num_candidates
        self.query = QueryEncoder(config, rows)
        self.query.warm(users)

    @classmethod
    def load(cls, run_dir: Path, *, with_index: bool = True) -> Recaller:
        """Load the model, encoders, item table and index of a recall run;
        without the index when `with_index` is false (to build one).

        Raises:
            FileNotFoundError: the run or its `recall/` folder is incomplete.
        """
        run_dir = Path(run_dir)
        folder = run_dir / RECALL_DIR
        if not (folder / ITEMS_FILE).is_file():
            raise FileNotFoundError(
                f"{folder / ITEMS_FILE} is missing; is {run_dir} a finished "
                "`likely recall train` run?"
            )
        config = load_config(run_dir / "config.json")
        model = _load_model(run_dir, config)
        encoders = FeatureEncoders.load(run_dir / ENCODERS, config)
        target = json.loads((run_dir / "manifest.json").read_text())["target_date"]
        template = pl.read_parquet(folder / TEMPLATE_FILE)
        rows = RowEncoder.for_config(config, encoders, template, target)
        return cls(
            run_dir,
            config,
            model,
            rows,
            pl.read_parquet(folder / ITEMS_FILE),
            pl.read_parquet(folder / USERS_FILE),
            ItemIndex.load(folder) if with_index else None,
        )

    # ------------------------------------------------------------ vectors

    @torch.no_grad()
    def _vectors(self, encoded: EncodedColumns, side: str) -> np.ndarray:
        arrays = {name: getattr(encoded, name) for name in ARRAY_NAMES}
        encode = self.model.user_vectors if side == "user" else self.model.item_vectors
        parts = [
            encode(gather(arrays, slice(start, start + CHUNK_ROWS))).numpy()
            for start in range(0, len(encoded), CHUNK_ROWS)
        ]
        if not parts:
            return np.zeros((0, self.model.output_dim), dtype=np.float32)
        return np.concatenate(parts)

    def user_vectors(self, rows: pl.DataFrame) -> np.ndarray:
        """`(U, E)` vectors of raw user rows (user-side columns and behaviour)."""
        return self._vectors(self.rows.encode(rows), "user")

    def item_vectors(self, rows: pl.DataFrame) -> np.ndarray:
        """`(N, E)` vectors of raw item rows (item-side columns)."""
        return self._vectors(self.rows.encode(rows), "item")

    # ------------------------------------------------------------ queries

    def has_history(self, rows: pl.DataFrame) -> np.ndarray:
        """`(U,)` bool: the rows' behaviour sequences hold at least one item."""
        if self.behaviour is None:
            return np.ones(rows.height, dtype=bool)
        if self.behaviour not in rows.columns:
            return np.zeros(rows.height, dtype=bool)
        lengths = rows[self.behaviour].list.len().fill_null(0)
        return lengths.to_numpy() > 0

    def popular(self, k: int) -> np.ndarray:
        """Rows of the `k` most clicked items of the window (fewer if fewer)."""
        return np.arange(min(k, self.items.height))

    def search(self, rows: pl.DataFrame, k: int | None = None) -> np.ndarray:
        """`(U, K)` item rows for raw user rows, best first, -1 past the end.

        Users without history get the popularity list.
        """
        k = k or self.num_candidates
        if self.index is None:
            raise FileNotFoundError(f"{self.run_dir} has no item index")
        out = np.full((rows.height, k), -1, dtype=np.int64)
        popular = self.popular(k)
        out[:, : len(popular)] = popular
        known = np.flatnonzero(self.has_history(rows))
        for start in range(0, len(known), CHUNK_ROWS):
            chunk = known[start : start + CHUNK_ROWS]
            vectors = self.user_vectors(rows[chunk])
            out[chunk] = self.index.search(vectors, k)[1]
        return out

    def recall(
        self,
        features: Mapping[str, Any],
        history: Sequence[Any] | None = None,
        k: int | None = None,
    ) -> Recommendation:
        """Candidates for a user from their features and latest behaviour.

        This is the online path: the feature store passes the user's features
        (raw values by column) and their recent clicks (raw item ids, oldest
        first), so a click is in the next query's user vector.

        Args:
            features: raw user-side values by column; others are ignored.
            history: the user's recent clicked items; None or empty for none.
            k: candidates wanted; default `recall.num_candidates`.
        """
        rows, scores, source = self.recall_rows(features, history, k)
        return Recommendation(self._item_ids(rows), scores, source)

    def recall_rows(
        self,
        features: Mapping[str, Any],
        history: Sequence[Any] | None = None,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Literal["two_tower", "popularity"]]:
        """As `recall`, but the candidates as `(K,)` rows of the item table
        (what the ranker gathers by), with their `(K,)` scores and source."""
        k = k or self.num_candidates
        history = list(history or [])
        if self.behaviour is not None and not history:
            top = self.popular(k)
            scores = self.items[CLICKS].to_numpy()[top].astype(np.float32)
            return top, scores, "popularity"
        if self.index is None:
            raise FileNotFoundError(f"{self.run_dir} has no item index")
        user = dict(features)
        if self.behaviour is not None:
            user[self.behaviour] = history
        scores, top = self.index.search(self._query_vector(user), k)
        keep = top[0] >= 0
        return top[0][keep], scores[0][keep], "two_tower"

    @torch.no_grad()
    def _query_vector(self, user: Mapping[str, Any]) -> np.ndarray:
        """`(1, E)` vector of one user's raw values, through the query encoder."""
        query = self.query.encode(user, {})
        batch = Batch(
            sparse=torch.from_numpy(query.sparse.astype(np.int64)),
            dense=torch.from_numpy(query.dense),
            sequence=torch.from_numpy(query.sequence.astype(np.int64)),
            cross=torch.zeros((1, len(self.config.crosses)), dtype=torch.int64),
            label=torch.zeros(1),
            user=torch.zeros(1, dtype=torch.int64),
        )
        return self.model.user_vectors(batch).numpy()

    def user_row(self, user: Any) -> dict[str, Any] | None:
        """The window's latest user-side row of a raw user id, or None.

        A command-line id arrives as text; it is matched as an integer where
        the user column holds integers.
        """
        column = self.users[self.user_column]
        if column.dtype.is_integer():
            try:
                user = int(user)
            except (TypeError, ValueError):
                return None
        found = self.users.filter(column == user)
        return found.row(0, named=True) if found.height else None

    def recall_user(
        self, user: Any, history: Sequence[Any] | None = None, k: int | None = None
    ) -> Recommendation:
        """Candidates for a user of the window, by raw id; `history`, when
        given, replaces the window's behaviour sequence. A user the window
        has not seen gets the popularity list unless `history` is given."""
        row = self.user_row(user) or {}
        if history is None and self.behaviour is not None:
            history = row.get(self.behaviour) or []
        return self.recall(row, history, k)

    def _item_ids(self, rows: np.ndarray) -> list[Any]:
        return self.items[self.item_column].gather(rows).to_list()

    # ------------------------------------------------------------ items

    def add_items(self, rows: pl.DataFrame) -> np.ndarray:
        """Add new items (raw rows with item-side columns) to the index and the
        item table, without rebuilding the index. Returns their item rows.

        Raises:
            ValueError: an item is already in the table, or the item column is
                missing.
        """
        if self.item_column not in rows.columns:
            raise ValueError(f"new item rows lack the item column {self.item_column}")
        known = rows.join(self.items.select(self.item_column), on=self.item_column)
        if known.height:
            shown = known[self.item_column].head(5).to_list()
            raise ValueError(f"items already in the index: {shown}")
        if self.index is None:
            raise FileNotFoundError(f"{self.run_dir} has no item index")
        vectors = self.item_vectors(rows)
        positions = np.arange(self.items.height, self.items.height + rows.height)
        self.index.add(vectors, positions)
        new = rows.select(
            [c for c in self.items.columns if c in rows.columns]
        ).with_columns(pl.lit(0).alias(CLICKS))
        self.items = pl.concat([self.items, new], how="diagonal_relaxed")
        logger.info("added %d items; the index holds %d", rows.height, len(self.index))
        return positions

    def save(self) -> None:
        """Write the item table and index back to the run (after `add_items`)."""
        folder = self.run_dir / RECALL_DIR
        self.items.write_parquet(folder / ITEMS_FILE)
        if self.index is not None:
            self.index.save(folder)


def build_artifact(
    run_dir: Path, config: ExperimentConfig, prepared: Prepared
) -> dict[str, Any]:
    """Write `run/recall/`: the window's items with their vectors, its users,
    and the item index of `recall.index`, for a finished two-tower run.

    Returns:
        The summary written to `recall.json`.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    window: WindowRows = read_window(config, prepared)
    read_seconds = time.perf_counter() - started
    folder = run_dir / RECALL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    window.template.write_parquet(folder / TEMPLATE_FILE)
    window.items.write_parquet(folder / ITEMS_FILE)
    window.users.write_parquet(folder / USERS_FILE)
    recaller = Recaller.load(run_dir, with_index=False)
    started = time.perf_counter()
    vectors = recaller.item_vectors(window.items)
    vector_seconds = time.perf_counter() - started
    np.save(folder / VECTORS_FILE, vectors)
    started = time.perf_counter()
    index = ItemIndex.build(vectors, np.arange(len(vectors)), config.recall.index)
    build_seconds = time.perf_counter() - started
    index.save(folder)
    summary = {
        "items": window.items.height,
        "clicked_items": int((window.items[CLICKS] > 0).sum()),
        "users": window.users.height,
        "vector_dim": int(vectors.shape[1]),
        "index": config.recall.index.model_dump(mode="json"),
        "seconds": {
            "read_window": round(read_seconds, 3),
            "item_vectors": round(vector_seconds, 3),
            "index_build": round(build_seconds, 3),
        },
    }
    atomic_write_json(folder / SUMMARY_FILE, summary)
    logger.info(
        "recall artifact: %d items, %d users, %s index built in %.2fs, in %s",
        summary["items"],
        summary["users"],
        config.recall.index.kind,
        build_seconds,
        folder,
    )
    return summary
