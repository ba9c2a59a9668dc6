"""Shared fixtures: paths to the real data beside the project, small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, where the real sample logs lie (never copied here)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


# Property tests draw the same examples on every run and never fail on time:
# a test that passes or fails by chance or by machine load is a defect.
from hypothesis import settings  # noqa: E402

settings.register_profile("likely", derandomize=True, deadline=None)
settings.load_profile("likely")


@pytest.fixture(scope="session")
def served_world(tmp_path_factory):
    """Tiny synthetic logs with a ranking run and a recall run on the week
    before 2026-11-08: what the service tests serve.

    Returns a dict: `logs`, `config` (YAML path), `ranking` and `recall` run
    folders, `target` (the evaluation day).
    """
    import yaml

    from likely.config import load_config
    from likely.data.prepare import prepare
    from likely.data.synthetic import generate
    from likely.data.windows import parse_date
    from likely.recall.artifact import build_artifact
    from likely.recall.two_tower import RetrievalObjective
    from likely.train.trainer import Trainer

    root = tmp_path_factory.mktemp("served")
    logs = root / "synthetic"
    generate(logs, days=8, rows_per_day=3000, num_users=200, num_items=400, seed=7)
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(logs)
    raw["data"]["cache_dir"] = str(root / "cache")
    raw["train"] = {"batch_size": 512, "epochs": 1, "threads": 1}
    raw["model"] = {"name": "deepfm", "hidden_dims": [16]}
    # Exact scores, to compare with offline scoring; bf16 is tested apart.
    raw["serve"]["precision"] = "fp32"
    raw["recall"] = {
        "output_dim": 16,
        "hidden_dims": [32],
        "num_candidates": 100,
        "train": {"batch_size": 256, "epochs": 1, "threads": 1},
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    target = "2026-11-08"
    prepared = prepare(config, parse_date(target))
    ranking = root / "ranking"
    Trainer(config, prepared, ranking).fit()
    recall = root / "recall"
    recall_config = config.model_copy(update={"train": config.recall.train})
    objective = RetrievalObjective(recall_config, prepared)
    Trainer(recall_config, prepared, recall, objective=objective).fit()
    build_artifact(recall, recall_config, prepared)
    return {
        "logs": logs,
        "config": config_path,
        "ranking": ranking,
        "recall": recall,
        "target": target,
    }
