import numpy as np
import pytest
import torch

from likely.data.batches import Batch, BatchIterator, SplitArrays
from likely.data.encoders import EncodedColumns
from likely.data.prepare import write_split


@pytest.fixture
def split(tmp_path):
    n = 103
    rows = np.arange(n)
    encoded = EncodedColumns(
        sparse=np.stack([rows, rows * 2], axis=1).astype(np.int32),
        dense=rows[:, None].astype(np.float32),
        sequence=np.repeat(rows[:, None, None], 3, axis=2).astype(np.int32),
        cross=rows[:, None].astype(np.int32),
        label=(rows % 2).astype(np.float32),
        user=rows.astype(np.int64),
        day=np.zeros(n, np.int32),
    )
    write_split(tmp_path / "train", encoded)
    return SplitArrays(tmp_path / "train")


def ids(batch: Batch) -> list[int]:
    return batch.sparse[:, 0].tolist()


def test_batch_dtypes_shapes_and_row_alignment(split):
    batch = next(iter(BatchIterator(split, 16, seed=1)))
    assert batch.sparse.dtype == torch.int64 and batch.sparse.shape == (16, 2)
    assert batch.sequence.shape == (16, 1, 3) and batch.dense.dtype == torch.float32
    rows = batch.sparse[:, 0]
    # Every array of a batch comes from the same rows.
    assert torch.equal(batch.sparse[:, 1], rows * 2)
    assert torch.equal(batch.dense[:, 0].long(), rows)
    assert torch.equal(batch.sequence[:, 0, 2], rows)
    assert torch.equal(batch.user, rows)
    assert torch.equal(batch.label, (rows % 2).float())
    assert len(batch) == 16


def test_epoch_covers_every_row_once_and_is_seeded(split):
    iterator = BatchIterator(split, 10, seed=7)
    seen = [i for b in iterator.batches(0) for i in ids(b)]
    assert sorted(seen) == list(range(103))
    again = [i for b in BatchIterator(split, 10, seed=7).batches(0) for i in ids(b)]
    assert again == seen
    other_epoch = [i for b in iterator.batches(1) for i in ids(b)]
    assert other_epoch != seen
    assert len(iterator) == 11


def test_drop_last_and_no_shuffle(split):
    iterator = BatchIterator(split, 10, shuffle=False, drop_last=True)
    batches = list(iterator)
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert ids(batches[0]) == list(range(10))


def test_resume_mid_epoch_gives_the_remaining_batches(split):
    iterator = BatchIterator(split, 10, seed=3)
    full = [ids(b) for b in iterator.batches(2)]
    assert [ids(b) for b in iterator.batches(2, start=4)] == full[4:]


def test_ranks_split_batches_evenly_and_disjointly(split):
    ranks = [BatchIterator(split, 10, seed=5, rank=r, world_size=3) for r in range(3)]
    per_rank = [[i for b in it.batches(0) for i in ids(b)] for it in ranks]
    assert len({len(it) for it in ranks}) == 1
    flat = [i for part in per_rank for i in part]
    assert len(flat) == len(set(flat))
    assert len(flat) >= 90


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank 2 is not in a world"),
    ],
)
def test_bad_arguments(split, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchIterator(split, **kwargs)


def test_missing_arrays_are_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks arrays"):
        SplitArrays(tmp_path / "train")


def test_batch_to_device_keeps_values(split):
    batch = next(iter(BatchIterator(split, 8)))
    moved = batch.to("cpu")
    assert torch.equal(moved.sparse, batch.sparse)
