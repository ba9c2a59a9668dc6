"""A FAISS inner-product index over item vectors, addressed by item position.

Three kinds, picked by `recall.index.kind`:

- `exact`: a flat index, every query scores every item. Right for catalogues
  up to about a million items (a 1M x 64 float32 catalogue is 256 MB and one
  query a few milliseconds).
- `hnsw`: a small-world graph; sub-millisecond queries on any size, for
  memory (the graph's links) and a build that grows as N log N.
- `ivf`: k-means cells, a query scans the `probe` nearest; needs training on
  the vectors, so a catalogue much unlike the trained one should rebuild it.

Every kind stores the ids it was given (an item's row in the artifact's item
table), so items added later get the next rows and search returns them like
the others. Saved as `index.faiss` (FAISS's own format) and `index.json`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter

from likely.config import (
    INDEX_KINDS,
    ExactIndexConfig,
    HNSWIndexConfig,
    IndexConfig,
    IVFIndexConfig,
)
from likely.train.checkpoint import atomic_write_json

# FAISS logs each CPU build it tries while importing; only failures matter.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_JSON = "index.json"
# k-means wants a few dozen training points per cell.
POINTS_PER_LIST = 39


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 `(N, E)`, as FAISS needs."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or (dim is not None and matrix.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, E)"
        raise ValueError(f"expected vectors of shape {want}, got {matrix.shape}")
    return matrix


def default_lists(num_items: int) -> int:
    """IVF cells for a catalogue: about 4 * sqrt(N), with enough points each."""
    return max(1, min(int(4 * math.sqrt(num_items)), num_items // POINTS_PER_LIST))


class ItemIndex:
    """Item vectors in a FAISS index; `search` gives the best ids by inner
    product.

    Build one with `ItemIndex.build`, or `ItemIndex.load` a saved one.

    Example:
        >>> vectors = np.eye(3, 4, dtype=np.float32)
        >>> index = ItemIndex.build(vectors, np.arange(3), ExactIndexConfig())
        >>> scores, ids = index.search(np.array([[0.0, 1.0, 0.0, 0.0]]), k=2)
        >>> ids.tolist()
        [[1, 0]]
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, dim: int):
        self.index, self.config, self.dim = index, config, dim

    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: np.ndarray, config: IndexConfig
    ) -> ItemIndex:
        """An index of the kind `config` names over `vectors (N, E)` with `ids (N,)`.

        Raises:
            ValueError: the vectors are not `(N, E)`, ids differ in count, or
                the kind is unknown.
        """
        matrix = _as_matrix(vectors)
        dim = matrix.shape[1]
        started = time.perf_counter()
        if isinstance(config, ExactIndexConfig):
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif isinstance(config, HNSWIndexConfig):
            graph = faiss.IndexHNSWFlat(
                dim, config.neighbors, faiss.METRIC_INNER_PRODUCT
            )
            graph.hnsw.efConstruction = config.ef_construction
            index = faiss.IndexIDMap2(graph)
        elif isinstance(config, IVFIndexConfig):
            lists = config.lists or default_lists(len(matrix))
            if lists > len(matrix):
                raise ValueError(
                    f"recall.index.lists is {lists} but there are only "
                    f"{len(matrix)} items to train the cells on"
                )
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(
                quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT
            )
            index.train(matrix)
        else:
            raise ValueError(
                f"unknown index kind {getattr(config, 'kind', config)!r}; choose "
                f"one of: {', '.join(INDEX_KINDS)}"
            )
        built = cls(index, config, dim)
        built.add(matrix, ids)
        logger.info(
            "built the %s index of %d items (dim %d) in %.2fs",
            config.kind,
            len(built),
            dim,
            time.perf_counter() - started,
        )
        return built

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `vectors (N, E)` under `ids (N,)`; no rebuild, nothing retrained."""
        matrix = _as_matrix(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(matrix),):
            raise ValueError(f"{len(matrix)} vectors but ids of shape {ids.shape}")
        self.index.add_with_ids(matrix, ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` ids by inner product for each query.

        Args:
            queries: `(Q, E)` query vectors.
            k: neighbours per query; fewer come back where the index holds
                fewer, padded with id -1 and score -inf.

        Returns:
            Scores `(Q, k)` float32 and ids `(Q, k)` int64, best first.
        """
        matrix = _as_matrix(queries, self.dim)
        if isinstance(self.config, HNSWIndexConfig):
            graph = faiss.downcast_index(self.index.index)
            graph.hnsw.efSearch = max(self.config.ef_search, k)
        elif isinstance(self.config, IVFIndexConfig):
            faiss.extract_index_ivf(self.index).nprobe = self.config.probe
        scores, ids = self.index.search(matrix, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def save(self, folder: Path) -> None:
        """Write `index.faiss` and `index.json` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{INDEX_FILE}.tmp"
        faiss.write_index(self.index, str(tmp))
        tmp.replace(folder / INDEX_FILE)
        atomic_write_json(
            folder / INDEX_JSON,
            {
                "config": self.config.model_dump(mode="json"),
                "dim": self.dim,
                "items": len(self),
            },
        )

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        """Read an index written by `save`.

        Raises:
            FileNotFoundError: `folder` holds no saved index.
        """
        folder = Path(folder)
        if not (folder / INDEX_FILE).is_file() or not (folder / INDEX_JSON).is_file():
            raise FileNotFoundError(
                f"no item index in {folder} ({INDEX_FILE} and {INDEX_JSON} are "
                "written by `likely recall train`)"
            )
        info = json.loads((folder / INDEX_JSON).read_text())
        config = TypeAdapter(IndexConfig).validate_python(info["config"])
        index = faiss.read_index(str(folder / INDEX_FILE))
        return cls(index, config, int(info["dim"]))
