"""`likely compare` end to end on small synthetic logs: runs, resume, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from likely.cli import app
from likely.config import ConfigError, load_config, parse_config
from likely.data.synthetic import generate
from likely.data.windows import parse_date
from likely.report.compare import CompareError, resolve_variant, run_comparison
from likely.report.page import markdown_table, write_report

ROOT = Path(__file__).resolve().parents[2]
TARGET = "2026-11-06"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logs") / "synthetic"
    generate(out, days=6, rows_per_day=2000, num_users=300, num_items=500, seed=5)
    return out


def write_config(folder: Path, logs: Path, **compare) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"].update(path=str(logs), cache_dir=str(folder / "cache"), window_days=4)
    raw["model"] = {"name": "wide_resnet", "num_blocks": 1, "width": 32}
    raw["train"] = {"batch_size": 512, "epochs": 1, "threads": 1}
    raw["compare"] = {
        "models": ["wide_deep", "wide_resnet", "wide_resnet_nobn"],
        "variants": {"wide_deep": {"name": "wide_deep", "hidden_dims": [32]}},
        "seeds": 2,
        **compare,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compare_writes_the_report_and_resumes(tmp_path, logs):
    config = write_config(tmp_path, logs, incremental_days=1)
    report = tmp_path / "report"
    command = ["compare", "-c", str(config), "-t", TARGET, "--out", str(report)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    for name in ("plan.json", "results.json", "claims.json", "table.md"):
        assert (report / name).is_file(), name
    for chart in ("loss_curves.png", "auc.png", "incremental.png"):
        assert (report / chart).read_bytes()[:4] == b"\x89PNG", chart
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "Bayes-optimal" in page and "wide_resnet_nobn" in page

    results = json.loads((report / "results.json").read_text())
    assert [m["model"] for m in results["models"]] == [
        "wide_deep",
        "wide_resnet",
        "wide_resnet_nobn",
    ]
    assert len(results["runs"]) == 6
    assert {r["seed"] for r in results["runs"]} == {0, 1}
    assert 0.0 < results["models"][1]["auc"] < 1.0 and results["bayes_auc"] > 0.7
    assert [d["day"] for d in results["incremental"]] == [TARGET]
    claims = json.loads((report / "claims.json").read_text())
    assert len(claims) == 4
    assert {c["verdict"] for c in claims} <= {
        "supported",
        "not supported",
        "inconclusive",
    }
    assert claims[0]["details"]["bootstrap"]["method"].startswith("bootstrap")
    assert "supported" in result.output or "inconclusive" in result.output
    assert f"report: {report / 'index.html'}" in result.output.replace("\n", "")
    # Every step's loss was logged for the curves.
    run = json.loads((report / "runs/wide_resnet/seed-0/result.json").read_text())
    assert run["steps"] == list(range(1, len(run["steps"]) + 1))

    # Stopped with one run missing (and one half-made folder): the same
    # command trains only that run and keeps the others.
    shutil.rmtree(report / "runs" / "wide_deep" / "seed-1")
    (report / "runs" / "wide_deep" / "seed-1").mkdir()
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert again.output.count("done earlier, kept") == 5
    assert "wide_deep seed 1: training" in again.output
    rerun = json.loads((report / "results.json").read_text())
    assert rerun["runs"][0] == results["runs"][0]
    assert rerun["runs"][1]["test"] == results["runs"][1]["test"]  # deterministic


def test_a_report_folder_of_another_config_is_refused(tmp_path, logs):
    config = load_config(write_config(tmp_path, logs, models=["wide_resnet"]))
    comparison = run_comparison(config, tmp_path / "report", parse_date(TARGET))
    assert [r.variant for r in comparison.runs] == ["wide_resnet", "wide_resnet"]
    assert comparison.claims[0].verdict == "inconclusive"
    assert "not compared" in comparison.claims[0].reason
    write_report(comparison)
    assert "| wide_resnet |" in markdown_table(comparison)
    other = config.model_copy(update={"seed": 9})
    with pytest.raises(CompareError, match="another config, day or logs"):
        run_comparison(other, tmp_path / "report", parse_date(TARGET))


def test_variants_resolve_from_the_config(tmp_path, logs):
    config = load_config(write_config(tmp_path, logs))
    assert resolve_variant(config, "wide_resnet").model == config.model
    nobn = resolve_variant(config, "wide_resnet_nobn").model
    assert nobn.batch_norm is False and nobn.width == 32
    assert resolve_variant(config, "wide_deep").model.hidden_dims == [32]
    assert resolve_variant(config, "deepfm").model.name == "deepfm"
    with pytest.raises(CompareError, match="unknown model variant 'nope'"):
        resolve_variant(config, "nope")


def test_bad_compare_settings_name_the_field(tmp_path, logs):
    raw = yaml.safe_load(write_config(tmp_path, logs).read_text())
    for compare, message in (
        ({"models": ["deepfn"]}, "models[0] 'deepfn' is neither"),
        ({"models": ["fm", "fm"]}, "more than once"),
        ({"seeds": 0}, "compare.seeds"),
        ({"incremental_days": -1}, "compare.incremental_days"),
        ({"models": []}, "compare.models"),
    ):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            parse_config({**raw, "compare": compare})


def test_incremental_needs_days(tmp_path, logs):
    config = load_config(write_config(tmp_path, logs, incremental_days=1))
    with pytest.raises(CompareError, match="needs logs with days"):
        run_comparison(config, tmp_path / "report", None)
