"""The trainer end to end on small synthetic logs: metrics, artifacts, resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from likely.config import load_config, parse_config
from likely.data.prepare import PrepareError, prepare
from likely.data.synthetic import generate
from likely.data.windows import parse_date
from likely.models.inputs import FeatureLayout
from likely.models.registry import build_model
from likely.train.checkpoint import load_weights
from likely.train.trainer import Trainer, learning_rate_factor

ROOT = Path(__file__).resolve().parents[2]
TARGET = "2026-11-08"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logs") / "synthetic"
    generate(out, days=8, rows_per_day=2500, num_users=300, num_items=600, seed=3)
    return out


def write_config(tmp_path: Path, logs: Path, model: dict, **train) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(logs)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["data"]["holdout_fraction"] = 0.1
    raw["model"] = model
    raw["train"] = {"batch_size": 256, "epochs": 2, "threads": 1, **train}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_evaluates_and_writes_a_self_contained_run(tmp_path, logs):
    config = load_config(
        write_config(
            tmp_path, logs, {"name": "wide_resnet", "width": 64, "num_blocks": 2}
        )
    )
    prepared = prepare(config, parse_date(TARGET))
    result = Trainer(config, prepared, tmp_path / "run").fit()
    test = result.metrics["test"]
    assert {"auc", "logloss", "gauc", "calibration"} <= set(test)
    assert test["auc"] > 0.65, test
    assert 0.0 < test["logloss"] < 0.5
    run = result.run_dir
    for name in ("config.json", "manifest.json", "encoders.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    lines = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["eval"]["epoch"] for r in lines if "eval" in r] == [0, 1]
    assert all(r["eval"]["split"] == "valid" for r in lines if "eval" in r)
    assert any("loss" in r for r in lines)
    # The saved model rebuilds from the run folder alone and scores identically.
    model_info = json.loads((run / "model" / "model.json").read_text())
    saved = load_config(run / "config.json")
    layout = FeatureLayout.from_config(
        saved, model_info["vocab_sizes"], model_info["cross_sizes"]
    )
    rebuilt = build_model(saved, layout)
    load_weights(run / "model" / "model.safetensors", rebuilt)
    from likely.data.batches import BatchIterator, SplitArrays

    batch = next(
        iter(BatchIterator(SplitArrays(prepared.folder / "test"), 64, shuffle=False))
    )
    rebuilt.eval()
    reference = build_model(saved, layout)
    load_weights(run / "best.safetensors", reference)
    # The saved model is the best epoch's, calibrated on the validation rows.
    (fitted,) = [r["calibration"] for r in lines if "calibration" in r]
    assert fitted["scale"] > 0
    reference.set_calibration(fitted["scale"], fitted["bias"])
    reference.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt.score(batch), reference.score(batch))


def test_a_non_empty_run_folder_is_refused(tmp_path, logs):
    config = load_config(write_config(tmp_path, logs, {"name": "lr"}))
    prepared = prepare(config, parse_date(TARGET))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        Trainer(config, prepared, tmp_path / "run")


def test_a_one_row_training_split_is_a_clear_error(tmp_path):
    logs = tmp_path / "tiny"
    generate(logs, days=2, rows_per_day=1, num_users=5, num_items=10, seed=1)
    config = load_config(write_config(tmp_path, logs, {"name": "wide_resnet"}))
    config = config.model_copy(
        update={
            "data": config.data.model_copy(
                update={"window_days": 1, "holdout_fraction": 0.0}
            )
        }
    )
    prepared = prepare(config, parse_date("2026-11-02"))
    with pytest.raises(PrepareError, match="has 1 row.*at least 2"):
        Trainer(config, prepared, tmp_path / "run")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_learning_rate_schedules(schedule):
    config = parse_config(
        {
            "data": {"path": "x", "format": "csv"},
            "features": [{"name": "a", "kind": "sparse"}],
            "train": {"schedule": schedule, "warmup_steps": 10},
        }
    )
    factors = [learning_rate_factor(config, step, 110) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    if schedule == "constant":
        assert set(factors[10:]) == {1.0}
    else:
        assert factors[10] == pytest.approx(1.0)
        assert factors[-1] < 0.05
        assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def _train_command(config: Path, run: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "likely.cli", "train", "--config", str(config)]
    command += ["--target-date", TARGET]
    return command + (["--resume", str(run)] if resume else ["--run", str(run)])


def test_a_killed_run_resumes_to_the_same_result(tmp_path, logs):
    config = write_config(
        tmp_path,
        logs,
        {"name": "deepfm", "hidden_dims": [32, 32]},
        batch_size=64,
        epochs=2,
        checkpoint_every=25,
        early_stopping_patience=None,
    )
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    straight = tmp_path / "straight"
    subprocess.run(
        _train_command(config, straight, False),
        check=True,
        env=env,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(config, killed, False),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    checkpoints = killed / "checkpoints"
    while time.monotonic() < deadline:
        done = sorted(checkpoints.glob("step-*")) if checkpoints.is_dir() else []
        if any(int(p.name.split("-")[1]) >= 50 for p in done):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run finished before it was killed"
    subprocess.run(
        _train_command(config, killed, True), check=True, env=env, capture_output=True
    )

    a = _weights(straight / "model" / "model.safetensors")
    b = _weights(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def test_predict_applies_the_runs_preprocessing(tmp_path, logs):
    from likely.train.predict import load_run, predict_file

    config = load_config(write_config(tmp_path, logs, {"name": "fm"}, epochs=1))
    prepared = prepare(config, parse_date(TARGET))
    result = Trainer(config, prepared, tmp_path / "run").fit()
    run = load_run(result.run_dir)
    day = logs / f"day={TARGET}" / "part-0.parquet"
    scored = predict_file(run, day, tmp_path / "scores.parquet")
    from likely.train.metrics import evaluate

    again = evaluate(scored["label"].to_numpy(), scored["logit"].to_numpy())
    assert again["auc"] == pytest.approx(result.metrics["test"]["auc"], abs=1e-9)
    assert again["logloss"] == pytest.approx(
        result.metrics["test"]["logloss"], abs=1e-6
    )
    assert (tmp_path / "scores.parquet").is_file()
    probability = scored["probability"].to_numpy()
    assert ((probability > 0) & (probability < 1)).all()


def test_load_run_without_a_model_is_a_clear_error(tmp_path):
    from likely.train.predict import load_run

    with pytest.raises(FileNotFoundError, match="has no trained model"):
        load_run(tmp_path)


@pytest.mark.parametrize("embedding_optimizer", ["sparse_adam", "adagrad", "adam"])
def test_init_from_grows_tables_and_keeps_trained_rows(
    tmp_path, logs, embedding_optimizer
):
    from likely.data.encoders import FeatureEncoders
    from likely.models.inputs import _TableGroup
    from likely.train.predict import load_run

    model = {"name": "deepfm", "hidden_dims": [16]}
    # Adagrad's steps shrink from the first; it wants a larger rate than Adam.
    rate = {"adagrad": 0.05}.get(embedding_optimizer)
    config = load_config(
        write_config(
            tmp_path,
            logs,
            model,
            epochs=1,
            embedding_optimizer=embedding_optimizer,
            embedding_learning_rate=rate,
        )
    )
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"window_days": 3})}
    )
    first = Trainer(config, prepare(config, parse_date("2026-11-05")), tmp_path / "a")
    first.fit()
    old = load_run(tmp_path / "a")
    extend = FeatureEncoders.load(tmp_path / "a" / "encoders.json", config)
    later = prepare(config, parse_date("2026-11-08"), extend=extend)
    old_sizes = old.encoders.vocab_sizes()
    assert later.manifest["vocab_sizes"]["item"] > old_sizes["item"]
    assert later.manifest["extended_from_sizes"] == old_sizes

    second = Trainer(config, later, tmp_path / "b", init_from=tmp_path / "a")
    # Right after growth, before any step: every old row is the trained row.
    for name, group in second.model.named_modules():
        if not isinstance(group, _TableGroup):
            continue
        before = dict(old.model.named_modules())[name]
        for table, (start, rows) in before.table_rows.items():
            new_start, new_rows = group.table_rows[table]
            assert new_rows >= rows
            assert torch.equal(
                group.embedding.weight[new_start : new_start + rows],
                before.embedding.weight[start : start + rows],
            ), table
    old_dense = dict(old.model.named_parameters())["deep.1.weight"]
    assert torch.equal(
        dict(second.model.named_parameters())["deep.1.weight"], old_dense
    )
    _assert_optimizers_continued(second, old, config, tmp_path / "a")
    result = second.fit()
    assert result.metrics["test"]["auc"] > 0.6
    # The same id still means the same item: old ids kept their numbers.
    items = old.encoders.tables["item"].keys
    grown = FeatureEncoders.load(tmp_path / "b" / "encoders.json", config)
    assert np.array_equal(
        grown.tables["item"].transform(items),
        old.encoders.tables["item"].transform(items),
    )


def _assert_optimizers_continued(trainer, old, config, old_run):
    """The new optimizers hold the old run's last checkpoint state: dense
    state as it was, each embedding row's state at its id's new row, zeros
    for rows of new ids."""
    from likely.models.inputs import _TableGroup
    from likely.train.checkpoint import latest_checkpoint, load_checkpoint
    from likely.train.trainer import build_optimizers

    saved = build_optimizers(old.model, config)
    load_checkpoint(latest_checkpoint(old_run), model=old.model, optimizers=saved)
    old_params = dict(old.model.named_parameters())
    new_params = dict(trainer.model.named_parameters())
    groups = {
        n: m for n, m in trainer.model.named_modules() if isinstance(m, _TableGroup)
    }
    checked = 0
    for label, optimizer in saved.items():
        for name, old_param in old_params.items():
            if old_param not in optimizer.state:
                continue
            before = optimizer.state[old_param]
            after = trainer.optimizers[label].state[new_params[name]]
            assert before.keys() == after.keys(), name
            group = groups.get(name.removesuffix(".embedding.weight"))
            for key, value in before.items():
                if group is None or torch.as_tensor(value).shape != old_param.shape:
                    assert torch.equal(
                        torch.as_tensor(after[key]), torch.as_tensor(value)
                    )
                    continue
                old_group = dict(old.model.named_modules())[
                    name.removesuffix(".embedding.weight")
                ]
                for table, (start, rows) in old_group.table_rows.items():
                    new_start, new_rows = group.table_rows[table]
                    kept = after[key][new_start : new_start + rows]
                    assert torch.equal(kept, value[start : start + rows]), (name, key)
                    added = after[key][new_start + rows : new_start + new_rows]
                    assert not added.any(), (table, key)
                checked += 1
    assert checked, "no embedding state was compared"


@pytest.mark.parametrize("damage", ["removed", "corrupt"])
def test_init_from_without_a_readable_checkpoint_starts_optimizers_afresh(
    tmp_path, logs, caplog, damage
):
    import shutil

    from likely.train.checkpoint import latest_checkpoint

    config = load_config(
        write_config(tmp_path, logs, {"name": "fm"}, epochs=1, batch_size=512)
    )
    prepared = prepare(config, parse_date(TARGET))
    Trainer(config, prepared, tmp_path / "a").fit()
    if damage == "removed":
        shutil.rmtree(tmp_path / "a" / "checkpoints")
    else:
        state = latest_checkpoint(tmp_path / "a") / "optimizer-dense.safetensors"
        state.write_bytes(state.read_bytes()[:-8] + b"garbage!")
    with caplog.at_level("WARNING"):
        second = Trainer(config, prepared, tmp_path / "b", init_from=tmp_path / "a")
    assert "optimizers start afresh" in caplog.text
    expected = "has no checkpoint" if damage == "removed" else "sha256"
    assert expected in caplog.text
    assert all(not opt.state for opt in second.optimizers.values())
    assert second.fit().metrics["test"]["auc"] > 0.5  # it trains all the same


def test_batch_norm_statistics_are_measured_again_before_evaluation(tmp_path, logs):
    from likely.data.batches import BatchIterator

    model = {"name": "wide_resnet", "width": 32, "num_blocks": 1, "dropout": 0.5}
    config = load_config(
        write_config(tmp_path, logs, model, epochs=1, batch_norm_refresh=3)
    )
    trainer = Trainer(config, prepare(config, parse_date(TARGET)), tmp_path / "run")
    norm = next(
        m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm1d)
    )
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    trainer._refresh_batch_norm(epoch=0)
    hook.remove()
    assert len(seen) == 3 and trainer.model.training  # mode restored
    assert norm.momentum == 0.1  # restored too
    # A plain average of the three batches' statistics, dropout off.
    means = torch.stack([x.mean(dim=0) for x in seen])
    variances = torch.stack([x.var(dim=0) for x in seen])
    torch.testing.assert_close(norm.running_mean, means.mean(dim=0))
    torch.testing.assert_close(norm.running_var, variances.mean(dim=0))
    # The epoch's first batches, through the network as evaluation runs it.
    first = next(iter(BatchIterator(trainer.train_split, 256, seed=0).batches(0)))
    evaluated: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda m, args, out: evaluated.append(args[0]))
    trainer.model.eval()
    with torch.no_grad():
        trainer.model(first.sparse, first.dense, first.sequence, first.cross)
    hook.remove()
    trainer.model.train()
    torch.testing.assert_close(seen[0], evaluated[0])
    # The same weights give the same statistics: nothing random is drawn.
    again = norm.running_mean.clone()
    trainer._refresh_batch_norm(epoch=0)
    assert torch.equal(norm.running_mean, again)


def test_growth_refuses_a_shrunk_table(tmp_path):
    from likely.models.inputs import grow_into

    config = parse_config(
        {
            "data": {"path": "x", "format": "csv"},
            "features": [{"name": "a", "kind": "sparse"}],
            "model": {"name": "lr"},
        }
    )
    big = build_model(config, FeatureLayout.from_config(config, {"a": 10}))
    small = build_model(config, FeatureLayout.from_config(config, {"a": 5}))
    with pytest.raises(ValueError, match="table 'a' shrank from 10 to 5 rows"):
        grow_into(small, big)


def test_incremental_against_scratch(tmp_path, logs):
    from likely.train.incremental import run_incremental

    config = load_config(
        write_config(tmp_path, logs, {"name": "fm"}, epochs=1, batch_size=512)
    )
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"window_days": 3})}
    )
    stages: list[str] = []
    results = run_incremental(
        config, parse_date("2026-11-05"), 2, tmp_path / "exp", on_stage=stages.append
    )
    assert [r.day for r in results] == ["2026-11-06", "2026-11-07"]
    for row in results:
        assert 0.5 < row.incremental["auc"] < 1 and 0.5 < row.scratch["auc"] < 1
        assert row.incremental["bayes_auc"] == row.scratch["bayes_auc"]
    runs = sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert runs == [
        "base-2026-11-05",
        "incremental-2026-11-06",
        "incremental-2026-11-07",
        "scratch-2026-11-06",
        "scratch-2026-11-07",
    ]
    second = json.loads(
        (tmp_path / "exp" / "incremental-2026-11-07" / "init_from.json").read_text()
    )
    assert second["run"].endswith("incremental-2026-11-06")
    assert len(stages) == 5
    saved = json.loads((tmp_path / "exp" / "incremental.json").read_text())
    assert [d["day"] for d in saved["days"]] == ["2026-11-06", "2026-11-07"]
