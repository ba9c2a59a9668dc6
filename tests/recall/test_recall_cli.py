"""`likely recall train`, `query` and `eval` end to end on tiny synthetic logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from likely.cli import app
from likely.config import load_config
from likely.data.prepare import prepare
from likely.data.synthetic import generate
from likely.data.windows import parse_date
from likely.recall.artifact import Recaller
from likely.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TARGET = "2026-11-08"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny logs, a config with a small recall section, a recall run and a
    ranking run for the embedding baseline."""
    root = tmp_path_factory.mktemp("recall")
    logs = root / "synthetic"
    generate(logs, days=8, rows_per_day=3000, num_users=200, num_items=400, seed=5)
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(logs)
    raw["data"]["cache_dir"] = str(root / "cache")
    raw["train"] = {"batch_size": 512, "epochs": 1, "threads": 1}
    raw["model"] = {"name": "deepfm", "hidden_dims": [16]}
    raw["recall"] = {
        "output_dim": 16,
        "hidden_dims": [32],
        "temperature": 0.1,
        "num_candidates": 40,
        "train": {"batch_size": 64, "epochs": 3, "threads": 1, "learning_rate": 0.01},
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    run = root / "two_tower"
    trained = invoke(
        "recall", "train", "-c", config_path, "--target-date", TARGET, "--run", run
    )
    assert trained.exit_code == 0, trained.output
    config = load_config(config_path)
    ranking = root / "ranking"
    Trainer(config, prepare(config, parse_date(TARGET)), ranking).fit()
    return {"config": config_path, "run": run, "ranking": ranking, "output": trained}


def test_train_writes_a_recall_artifact(world):
    run = world["run"]
    assert "recall of clicks" in world["output"].output
    for name in ("config.json", "encoders.json", "model/model.safetensors"):
        assert (run / name).is_file(), name
    model = json.loads((run / "model" / "model.json").read_text())
    assert model["model"]["name"] == "two_tower"
    assert model["metrics"]["test"]["recall"] > 0
    assert any((run / "checkpoints").iterdir())
    items = pl.read_parquet(run / "recall" / "items.parquet")
    vectors = np.load(run / "recall" / "item_vectors.npy")
    assert vectors.shape == (items.height, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Every item seen in the window, rare ones (shared OOV id) included.
    window = pl.read_parquet(
        world["config"].parent / "synthetic" / "**" / "*.parquet",
        hive_partitioning=True,
    )
    seen = window.filter(pl.col("day") < parse_date(TARGET))["item_id"].n_unique()
    assert items.height == seen
    assert items["recall_clicks"].is_sorted(descending=True)


def test_query_prints_top_items_and_a_click_changes_them(world):
    recaller = Recaller.load(world["run"])
    users = recaller.users.filter(pl.col("recent_clicks").list.len() > 0)
    user = users["user_id"][0]
    shown = invoke("recall", "query", "--run", world["run"], "--user", user)
    assert shown.exit_code == 0, shown.output
    assert "two_tower" in shown.output and "rank" in shown.output

    before = recaller.recall_user(user)
    assert before.source == "two_tower" and len(before.items) == 40
    assert np.all(np.diff(before.scores) <= 1e-6)
    history = users["recent_clicks"][0].to_list()
    # A click on an item far from the current list changes the next recall.
    clicked = recaller.items["item_id"][-1]
    after = recaller.recall_user(user, history=[*history, clicked] * 5)
    assert after.items != before.items
    # The same through the command line.
    given = ",".join(str(i) for i in [*history, clicked] * 5)
    changed = invoke(
        "recall", "query", "--run", world["run"], "--user", user, "--history", given
    )
    assert changed.exit_code == 0 and changed.output != shown.output


def test_online_recall_equals_the_batch_search(world):
    recaller = Recaller.load(world["run"])
    users = recaller.users.filter(pl.col("recent_clicks").list.len() > 0).head(5)
    batch = recaller.search(users, 40)
    for i, user in enumerate(users.iter_rows(named=True)):
        rows, _, source = recaller.recall_rows(user, user["recent_clicks"], 40)
        assert source == "two_tower"
        assert rows.tolist() == batch[i].tolist()


def test_users_without_history_get_the_popularity_list(world):
    recaller = Recaller.load(world["run"])
    popular = recaller.items.sort("recall_clicks", descending=True)["item_id"]
    for found in (
        recaller.recall_user("no-such-user"),
        recaller.recall_user(recaller.users["user_id"][0], history=[]),
        recaller.recall({"user_type": "business"}, history=None),
    ):
        assert found.source == "popularity"
        assert found.items == popular.head(40).to_list()
    shown = invoke("recall", "query", "--run", world["run"], "--user", 999999)
    assert shown.exit_code == 0 and "popularity" in shown.output
    assert "not in the window" in shown.output


def test_new_items_join_a_loaded_index_without_a_rebuild(world, tmp_path):
    recaller = Recaller.load(world["run"])
    size = len(recaller.index)
    template = recaller.items.head(2).with_columns(
        pl.Series("item_id", [10_000_001, 10_000_002])
    )
    positions = recaller.add_items(template)
    assert positions.tolist() == [size, size + 1] and len(recaller.index) == size + 2
    # A query on a new item's own vector finds it first.
    vectors = recaller.item_vectors(template)
    scores, found = recaller.index.search(vectors, 3)
    assert found[:, 0].tolist() == [size, size + 1]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert recaller.items["item_id"].tail(2).to_list() == [10_000_001, 10_000_002]
    # Saved and loaded again, the index and the table keep them.
    recaller.save()
    again = Recaller.load(world["run"])
    assert len(again.index) == size + 2 and again.items.height == size + 2
    with pytest.raises(ValueError, match="already in the index"):
        recaller.add_items(template)


def test_eval_reports_the_three_methods(world):
    result = invoke(
        "recall", "eval", "--run", world["run"], "--ranking-run", world["ranking"]
    )
    assert result.exit_code == 0, result.output
    for name in ("two_tower", "popularity", "ranking item embeddings"):
        assert name in result.output
    saved = json.loads((world["run"] / "recall" / "eval.json").read_text())
    methods = {m["method"]: m for m in saved["methods"]}
    assert set(methods) == {"two_tower", "popularity", "ranking item embeddings"}
    for scores in methods.values():
        assert 0 < scores["recall"] <= scores["hit_rate"] <= 1
    assert saved["k"] == 40 and 0 < saved["reachable"] <= 1


def test_a_bad_index_kind_fails_before_training(tmp_path, world):
    raw = yaml.safe_load(world["config"].read_text())
    raw["recall"]["index"] = {"kind": "annoy"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = invoke("recall", "train", "--config", path, "--target-date", TARGET)
    assert result.exit_code == 2
    assert "recall.index" in result.output and "'hnsw'" in result.output
    assert "Traceback" not in result.output


def test_query_of_a_run_that_is_not_there_is_a_clean_error(tmp_path):
    result = invoke("recall", "query", "--run", tmp_path, "--user", 1)
    assert result.exit_code == 2 and "likely recall train" in result.output
