"""Batches: memory-mapped split arrays sliced into tensors, no per-sample Python.

A batch is a gather of B row indices from each array of a split, turned into
tensors in one step. There is no `Dataset.__getitem__` and no collate of single
samples: those cost more than the model on CPU for typical CTR widths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from likely.data.prepare import ARRAY_NAMES


@dataclass
class Batch:
    """Tensors of one batch. Shapes use B batch, F sparse fields, S sequences,
    L sequence length, C crosses.

    Attributes:
        sparse: `(B, F)` int64 ids.
        dense: `(B, F_dense)` float32.
        sequence: `(B, S, L)` int64 ids, 0 for padding.
        cross: `(B, C)` int64 hashed cross ids for the wide part.
        label: `(B,)` float32, 1 for a click.
        user: `(B,)` int64 user keys, for grouped metrics.
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    sequence: torch.Tensor
    cross: torch.Tensor
    label: torch.Tensor
    user: torch.Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on `device`."""
        return Batch(
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in fields(self)
            }
        )

    def pin_memory(self) -> Batch:
        return Batch(
            **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)}
        )


class SplitArrays:
    """The arrays of one prepared split, memory-mapped read-only."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        missing = [n for n in ARRAY_NAMES if not (folder / f"{n}.npy").is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks arrays {missing}; prepare again")
        self.folder = folder
        self.arrays = {
            n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAY_NAMES
        }
        probability = folder / "probability.npy"
        self.probability = (
            np.load(probability, mmap_mode="r") if probability.is_file() else None
        )
        rows = {n: len(a) for n, a in self.arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"{folder}: arrays disagree on row count: {rows}")

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def take(self, rows: np.ndarray | slice) -> Batch:
        """Gather rows into a `Batch`; sorted indices read memory maps in order."""
        return gather(self.arrays, rows)


def gather(arrays: Mapping[str, np.ndarray], rows: np.ndarray | slice) -> Batch:
    """Rows of a split's arrays (memory-mapped or in memory) as a `Batch`."""

    def ids(name: str) -> torch.Tensor:
        return torch.from_numpy(arrays[name][rows].astype(np.int64))

    def owned(name: str) -> torch.Tensor:
        # Fancy indexing copies; a slice is a view (read-only for a memory
        # map) that torch must not write through, so copy it.
        part = arrays[name][rows]
        return torch.from_numpy(part if isinstance(rows, np.ndarray) else part.copy())

    return Batch(
        sparse=ids("sparse"),
        dense=owned("dense"),
        sequence=ids("sequence"),
        cross=ids("cross"),
        label=owned("label"),
        user=owned("user"),
    )


class BatchIterator:
    """Batches of a split, in a seeded shuffled order, sliced for one rank.

    Each epoch draws one permutation of the rows from `(seed, epoch)`, cuts it
    into runs of `batch_size`, and gives rank r the batches r, r + W, r + 2W,
    ... of the W ranks; every rank gets the same number of batches, as
    DistributedDataParallel needs. `batches(epoch, start)` resumes mid-epoch.
    With `rows`, only those rows of the split are batched (the clicked rows a
    recall model trains on), in the same seeded order over their positions.

    Example:
        >>> import numpy as np
        >>> order = BatchIterator.order(10, batch_size=4, seed=0, epoch=0,
        ...                             shuffle=False, drop_last=False)
        >>> [b.tolist() for b in order]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        >>> [len(b) for b in BatchIterator.order(9, 4, 0, 0, True, False)]
        [4, 5]
    """

    def __init__(
        self,
        split: SplitArrays,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        rows: np.ndarray | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    @staticmethod
    def order(
        rows: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool,
        drop_last: bool,
    ) -> list[np.ndarray]:
        """Row indices of every batch of an epoch, before the rank split."""
        if shuffle:
            rng = np.random.default_rng([seed, epoch])
            perm = rng.permutation(rows)
        else:
            perm = np.arange(rows)
        cut = rows - rows % batch_size if drop_last else rows
        batches = [perm[i : i + batch_size] for i in range(0, cut, batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            # A lone last row joins the batch before it: batch normalization
            # cannot normalise a batch of one.
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def _mine(self, epoch: int) -> list[np.ndarray]:
        every = self.order(
            len(self.split) if self.rows is None else len(self.rows),
            self.batch_size,
            self.seed,
            epoch,
            self.shuffle,
            self.drop_last,
        )
        usable = len(every) - len(every) % self.world_size
        mine = every[self.rank : usable : self.world_size]
        if self.rows is not None:
            mine = [self.rows[positions] for positions in mine]
        return mine

    def __len__(self) -> int:
        return len(self._mine(0))

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Batches of `epoch` from the `start`-th on (for resuming)."""
        for rows in self._mine(epoch)[start:]:
            if self.shuffle or self.rows is not None:
                rows = np.sort(rows)
                yield self.split.take(rows)
            else:
                yield self.split.take(slice(int(rows[0]), int(rows[-1]) + 1))

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(0)
