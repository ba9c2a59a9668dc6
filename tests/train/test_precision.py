"""Training precision (`train.precision`) and compiling (`train.compile`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from likely.config import ConfigError, load_config, parse_config
from likely.data.prepare import prepare
from likely.data.synthetic import generate
from likely.data.windows import parse_date
from likely.models.inputs import FeatureLayout
from likely.models.registry import build_model
from likely.train.trainer import Trainer, compile_dense_parts, pick_precision

ROOT = Path(__file__).resolve().parents[2]
TARGET = "2026-11-08"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logs") / "synthetic"
    generate(out, days=8, rows_per_day=2500, num_users=300, num_items=600, seed=5)
    return out


def deepfm_config(tmp_path: Path, logs: Path, **train):
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(logs)
    raw["data"]["cache_dir"] = str(tmp_path.parent / "cache")
    raw["model"] = {"name": "deepfm", "hidden_dims": [64, 64]}
    raw["train"] = {
        "batch_size": 256,
        "epochs": 2,
        "threads": 1,
        "early_stopping_patience": None,
        **train,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_a_bad_precision_names_the_setting_and_the_choices():
    raw = {
        "data": {"path": "x.csv", "format": "csv"},
        "features": [{"name": "item", "kind": "sparse"}],
        "train": {"precision": "fp16"},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    message = str(error.value)
    assert "train.precision" in message
    assert "'fp32'" in message and "'bf16'" in message and "'fp16'" in message
    assert "'auto'" in message


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [({}, "fp32"), ({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16")],
)
def test_auto_precision_takes_bf16_only_with_bf16_instructions(
    monkeypatch, capabilities, expected
):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == expected
    assert pick_precision("fp32", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"


def test_bf16_trains_to_about_the_auc_of_fp32(tmp_path, logs):
    aucs = {}
    for precision in ("fp32", "bf16"):
        folder = tmp_path / precision
        folder.mkdir()
        config = deepfm_config(folder, logs, precision=precision)
        prepared = prepare(config, parse_date(TARGET))
        result = Trainer(config, prepared, folder / "run").fit()
        aucs[precision] = result.metrics["test"]["auc"]
    assert aucs["fp32"] > 0.65, aucs  # the model learned something
    assert abs(aucs["bf16"] - aucs["fp32"]) < 0.01, aucs


def test_a_bf16_run_resumes_to_the_same_weights(tmp_path, logs):
    """Two epochs straight, against one epoch then a resumed second one."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    straight.mkdir()
    halves.mkdir()
    config = deepfm_config(straight, logs, precision="bf16")
    prepared = prepare(config, parse_date(TARGET))
    Trainer(config, prepared, straight / "run").fit()

    first = deepfm_config(halves, logs, precision="bf16", epochs=1)
    Trainer(first, prepared, halves / "run").fit()
    second = deepfm_config(halves, logs, precision="bf16", epochs=2)
    Trainer(second, prepared, halves / "run", resume=True).fit()

    a = load_file(straight / "run" / "model" / "model.safetensors")
    b = load_file(halves / "run" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_compile_covers_the_dense_parts_and_keeps_parameter_names(tmp_path, logs):
    config = deepfm_config(tmp_path, logs, compile=True)
    layout = FeatureLayout.from_config(
        config,
        {f.group: 50 for f in config.categorical_features},
        [101] * len(config.crosses),
    )
    model = build_model(config, layout, sparse=True)
    names = set(model.state_dict())
    # The MLP is compiled; the parts holding embedding tables stay eager, and
    # the FM term has no parameters to speak of.
    assert compile_dense_parts(model) == ["deep"]
    assert set(model.state_dict()) == names
