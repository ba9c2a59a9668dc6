"""Checkpoints: exact round trips, damage detection, crash safety, pruning."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from likely.train import checkpoint
from likely.train.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)

VOCAB_SIZE = 10
EMBEDDING_DIM = 4
HIDDEN = 3


def make_model(vocab_size: int = VOCAB_SIZE, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(vocab_size, EMBEDDING_DIM, sparse=True),
        nn.Linear(EMBEDDING_DIM, HIDDEN),
        nn.BatchNorm1d(HIDDEN),
    )


def make_optimizers(model: nn.Sequential) -> dict[str, torch.optim.Optimizer]:
    return {
        "dense": torch.optim.Adam(
            [*model[1].parameters(), *model[2].parameters()], lr=0.01
        ),
        "sparse": torch.optim.SparseAdam(list(model[0].parameters()), lr=0.01),
    }


def train_step(model: nn.Module, optimizers: dict, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, VOCAB_SIZE, (8,), generator=generator)
    target = torch.randn(8, HIDDEN, generator=generator)
    model.train()
    for optimizer in optimizers.values():
        optimizer.zero_grad()
    loss = (model(ids) - target).pow(2).mean()
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()


def assert_same(left, right, where: str = "") -> None:
    """Bitwise equality of nested optimizer/state values, tensors included."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), where
        assert left.dtype == right.dtype, where
        assert left.shape == right.shape, where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert isinstance(right, dict), where
        assert list(left) == list(right), where
        for key in left:
            assert_same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple):
        assert type(left) is type(right), where
        assert len(left) == len(right), where
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{where}.{i}")
    else:
        assert type(left) is type(right), where
        assert left == right, where


def save(run_dir: Path, step: int, model=None, optimizers=None, **kwargs) -> Path:
    model = model if model is not None else make_model()
    optimizers = optimizers if optimizers is not None else make_optimizers(model)
    return save_checkpoint(
        checkpoint_dir(run_dir, step),
        model=model,
        optimizers=optimizers,
        scheduler_state=kwargs.get("scheduler_state"),
        trainer_state=kwargs.get("trainer_state", {"global_step": step}),
        metadata=kwargs.get("metadata", {"model": "test"}),
    )


@pytest.fixture
def trained(tmp_path):
    """A model and optimizers after three real steps, saved at step 3."""
    model = make_model()
    optimizers = make_optimizers(model)
    for step in range(3):
        train_step(model, optimizers, step)
    folder = save(
        tmp_path,
        3,
        model,
        optimizers,
        trainer_state={"epoch": 1, "global_step": 3, "best_auc": float("-inf")},
        scheduler_state={"last_epoch": 3, "base_lrs": [0.01], "pair": (1, 2)},
        metadata={"model": "tiny", "fields": ["user", "item"]},
    )
    return model, optimizers, folder


# ---------------------------------------------------------------- round trips


def test_round_trip_is_bitwise_and_keeps_training_identically(trained):
    model, optimizers, folder = trained
    assert optimizers["dense"].state_dict()["state"][0]["step"].dim() == 0
    fresh = make_model(seed=123)
    fresh_optimizers = make_optimizers(fresh)

    loaded = load_checkpoint(folder, model=fresh, optimizers=fresh_optimizers)

    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.trainer_state == {
        "epoch": 1,
        "global_step": 3,
        "best_auc": float("-inf"),
    }
    assert loaded.scheduler_state == {
        "last_epoch": 3,
        "base_lrs": [0.01],
        "pair": (1, 2),
    }
    assert loaded.metadata == {"model": "tiny", "fields": ["user", "item"]}
    assert "0.weight" in model.state_dict()
    assert "2.num_batches_tracked" in model.state_dict()
    assert_same(model.state_dict(), fresh.state_dict(), "model")
    for name in optimizers:
        assert_same(
            optimizers[name].state_dict(),
            fresh_optimizers[name].state_dict(),
            name,
        )

    train_step(model, optimizers, 3)
    train_step(fresh, fresh_optimizers, 3)
    assert_same(model.state_dict(), fresh.state_dict(), "after one more step")


# Adagrad takes the embedding's sparse gradients too, which makes torch warn.
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_adagrad_round_trip(tmp_path):
    model = make_model()
    optimizers = {"all": torch.optim.Adagrad(model.parameters(), lr=0.1)}
    for step in range(2):
        train_step(model, optimizers, step)
    folder = save(tmp_path, 2, model, optimizers)
    fresh = make_model(seed=7)
    fresh_optimizers = {"all": torch.optim.Adagrad(fresh.parameters(), lr=0.1)}

    load_checkpoint(folder, model=fresh, optimizers=fresh_optimizers)

    assert_same(optimizers["all"].state_dict(), fresh_optimizers["all"].state_dict())
    train_step(model, optimizers, 2)
    train_step(fresh, fresh_optimizers, 2)
    assert_same(model.state_dict(), fresh.state_dict())


def test_optimizer_tensors_are_named_by_param_index_and_key(trained):
    _, _, folder = trained
    manifest = json.loads((folder / "checkpoint.json").read_text())
    tensors = checkpoint.load_file(folder / "optimizer-dense.safetensors")
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(tensors)
    assert tensors["state.0.step"].shape == ()
    assert manifest["optimizers"]["sparse"]["param_groups"][0]["lr"] == 0.01
    assert sorted(manifest["files"]) == [
        "model.safetensors",
        "optimizer-dense.safetensors",
        "optimizer-sparse.safetensors",
    ]


def test_fresh_optimizer_without_state_round_trips(tmp_path):
    model = make_model()
    folder = save(tmp_path, 0, model, make_optimizers(model))
    fresh = make_model()
    fresh_optimizers = make_optimizers(fresh)
    load_checkpoint(folder, model=fresh, optimizers=fresh_optimizers)
    assert fresh_optimizers["dense"].state_dict()["state"] == {}


def test_tied_weights_are_saved_and_stay_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(6, 4)
            self.output = nn.Linear(4, 6, bias=False)
            self.output.weight = self.embedding.weight

    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_weights(path, model)
    fresh = Tied()
    load_weights(path, fresh)
    assert torch.equal(fresh.output.weight, model.embedding.weight)
    assert fresh.output.weight is fresh.embedding.weight


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    state = rng_state()
    json.dumps(state)  # JSON-able as it is
    expected = (torch.rand(4), random.random(), random.gauss(0, 1))
    torch.rand(100)
    random.random()

    set_rng_state(state)
    assert_same((torch.rand(4), random.random(), random.gauss(0, 1)), expected)

    folder = save(tmp_path, 1, trainer_state={"global_step": 1, "rng": state})
    loaded = load_checkpoint(
        folder, model=make_model(), optimizers=make_optimizers(make_model())
    )
    torch.rand(10)
    set_rng_state(loaded.trainer_state["rng"])
    assert_same((torch.rand(4), random.random(), random.gauss(0, 1)), expected)


def test_rng_state_missing_key_is_named():
    with pytest.raises(CheckpointError, match="'python'"):
        set_rng_state({"torch": rng_state()["torch"]})


def test_weights_round_trip(tmp_path):
    model = make_model()
    train_step(model, make_optimizers(model), 0)
    path = tmp_path / "best.safetensors"
    save_weights(path, model)
    fresh = make_model(seed=9)
    load_weights(path, fresh)
    assert_same(model.state_dict(), fresh.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


# ---------------------------------------------------------------- damage


def test_corrupted_byte_names_the_file(trained):
    _, _, folder = trained
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = make_model()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_checkpoint(folder, model=fresh, optimizers=make_optimizers(fresh))
    assert_same(before, fresh.state_dict())  # nothing was loaded


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer-sparse.safetensors", "checkpoint.json"]
)
def test_missing_file_is_named(trained, name):
    _, _, folder = trained
    (folder / name).unlink()
    fresh = make_model()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(folder, model=fresh, optimizers=make_optimizers(fresh))


def test_unknown_format_version(trained):
    _, _, folder = trained
    path = folder / "checkpoint.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    fresh = make_model()
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(folder, model=fresh, optimizers=make_optimizers(fresh))


def test_shape_mismatch_names_key_and_shapes(trained, tmp_path):
    _, _, folder = trained
    bigger = make_model(vocab_size=12)
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*\(10, 4\).*\(12, 4\)"):
        load_checkpoint(folder, model=bigger, optimizers=make_optimizers(bigger))

    path = tmp_path / "weights.safetensors"
    save_weights(path, make_model())
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*\(10, 4\).*\(12, 4\)"):
        load_weights(path, bigger)


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_weights(path, make_model())
    wider = nn.Sequential(*make_model(), nn.Linear(HIDDEN, 1))
    with pytest.raises(CheckpointError, match=r"3\.weight"):
        load_weights(path, wider)


def test_optimizer_names_must_match(trained):
    _, _, folder = trained
    fresh = make_model()
    optimizers = {"dense": make_optimizers(fresh)["dense"]}
    with pytest.raises(CheckpointError, match="sparse"):
        load_checkpoint(folder, model=fresh, optimizers=optimizers)


def test_unstorable_state_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match=r"trainer_state\.when"):
        save(tmp_path, 1, trainer_state={"when": object()})
    with pytest.raises(CheckpointError, match=r"trainer_state\.weights"):
        save(tmp_path, 1, trainer_state={"weights": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="'a/b'"):
        save(
            tmp_path,
            1,
            optimizers={"a/b": torch.optim.SGD([nn.Parameter(torch.zeros(1))])},
        )
    assert latest_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoints").exists()


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.safetensors"):
        load_weights(tmp_path / "nothing.safetensors", make_model())


# ---------------------------------------------------------------- crash safety


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    previous = save(tmp_path, 1)
    real_save_file = checkpoint.save_file
    calls = []

    def crash_after_first(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise OSError("disk full")
        real_save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", crash_after_first)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2)

    assert len(calls) == 2
    assert latest_checkpoint(tmp_path) == previous
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000000001"
    ]
    fresh = make_model()
    load_checkpoint(previous, model=fresh, optimizers=make_optimizers(fresh))


def test_resave_same_step_replaces_it(tmp_path):
    save(tmp_path, 4, trainer_state={"global_step": 4, "try": 1})
    folder = save(tmp_path, 4, trainer_state={"global_step": 4, "try": 2})
    fresh = make_model()
    loaded = load_checkpoint(folder, model=fresh, optimizers=make_optimizers(fresh))
    assert loaded.trainer_state["try"] == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000000004"]


# ---------------------------------------------------------------- latest, prune


def test_latest_ignores_temporary_and_incomplete_folders(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    save(tmp_path, 2)
    newest = save(tmp_path, 10)
    save(tmp_path, 9)
    root = tmp_path / "checkpoints"
    (root / ".step-000000011.tmp-12345").mkdir()
    (root / ".step-000000011.tmp-12345" / "checkpoint.json").write_text("{}")
    (root / "step-000000012").mkdir()  # no checkpoint.json: incomplete
    (root / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path) == newest


def test_prune_keeps_newest_complete(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / ".step-000000005.tmp-1").mkdir()

    deleted = prune_checkpoints(tmp_path, keep=2)

    assert [p.name for p in deleted] == ["step-000000001", "step-000000002"]
    assert sorted(p.name for p in root.iterdir()) == [
        ".step-000000005.tmp-1",
        "step-000000003",
        "step-000000004",
    ]
    assert latest_checkpoint(tmp_path) == root / "step-000000004"
    assert prune_checkpoints(tmp_path, keep=2) == []
    with pytest.raises(ValueError, match="got 0"):
        prune_checkpoints(tmp_path, keep=0)


# ---------------------------------------------------------------- atomic writes


def test_atomic_writes_replace_and_leave_no_temporary_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"old")
    atomic_write_bytes(tmp_path / "a.bin", b"new")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5]})
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_failed_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "c.json"
    atomic_write_json(path, {"version": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


# ---------------------------------------------------------------- safe loading


def test_module_never_unpickles():
    source = Path(checkpoint.__file__).read_text(encoding="utf-8")
    assert "torch.load" not in source
    assert "pickle" not in source
