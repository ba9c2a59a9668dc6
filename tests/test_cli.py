import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from likely.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def frappe_config(tmp_path, shared_data, **data):
    lines = [
        "data:",
        f"  path: {shared_data / 'frappe' / 'valid.csv'}",
        f"  test_path: {shared_data / 'frappe' / 'test.csv'}",
        "  format: csv",
        "  user_column: user",
        f"  cache_dir: {tmp_path / 'cache'}",
        *[f"  {k}: {v}" for k, v in data.items()],
        "features:",
        *[
            f"  - {{name: {n}, kind: sparse}}"
            for n in ("user", "item", "daytime", "weekday", "city")
        ],
    ]
    path = tmp_path / "frappe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", ["prepare", "info", "init", "generate"])
def test_every_command_explains_itself(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_prepare_then_info(tmp_path, shared_data):
    result = invoke("prepare", "--config", frappe_config(tmp_path, shared_data))
    assert result.exit_code == 0, result.output
    folder = result.output.strip().splitlines()[-1].removeprefix("prepared: ")
    assert "28,860" in result.output
    shown = invoke("info", folder, "--json")
    assert shown.exit_code == 0
    manifest = json.loads(shown.output)
    assert manifest["splits"]["test"]["rows"] == 28_860
    assert manifest["vocab_sizes"]["user"] > 800


def test_prepare_reports_a_bad_config_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: x.csv, format: xls}\nfeatures: []\n")
    result = invoke("prepare", "--config", path)
    assert result.exit_code == 2
    assert "data.format" in result.output and "features" in result.output
    assert "Traceback" not in result.output


def test_prepare_reports_a_malformed_log(tmp_path):
    logs = tmp_path / "logs.csv"
    logs.write_text("label,a\n1,x\n7,y\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{path: {logs}, format: csv, cache_dir: {tmp_path / 'cache'}}}\n"
        "features: [{name: a, kind: sparse}]\n"
    )
    result = invoke("prepare", "--config", config)
    assert result.exit_code == 2
    assert "line 3" in result.output and "'label'" in result.output


def test_prepare_rejects_target_date_without_dates(tmp_path, shared_data):
    config = frappe_config(tmp_path, shared_data)
    result = invoke("prepare", "--config", config, "--target-date", "2026-11-08")
    assert result.exit_code == 2
    assert "no data.date_column" in result.output
    result = invoke("prepare", "--config", config, "--target-date", "tomorrow")
    assert result.exit_code == 2 and "'tomorrow' is not a date" in result.output


def test_info_on_a_folder_that_is_not_prepared(tmp_path):
    result = invoke("info", tmp_path)
    assert result.exit_code == 2 and "not a prepared folder" in result.output


def test_init_writes_a_config_that_prepares(tmp_path, shared_data):
    out = tmp_path / "configs" / "frappe.yaml"
    result = invoke("init", shared_data / "frappe" / "valid.csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert "next: likely prepare --config" in result.output
    again = invoke("init", shared_data / "frappe" / "valid.csv", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    text = out.read_text().replace("data:\n", f"data:\n  cache_dir: {tmp_path}/c\n", 1)
    out.write_text(text)
    assert invoke("prepare", "--config", out).exit_code == 0


def test_generate_then_prepare_the_shipped_synthetic_config(tmp_path):
    logs = tmp_path / "data" / "synthetic"
    result = invoke(
        "generate",
        "--out",
        logs,
        "--days",
        8,
        "--rows-per-day",
        3000,
        "--users",
        300,
        "--items",
        500,
    )
    assert result.exit_code == 0, result.output
    assert "--target-date 2026-11-08" in result.output
    # Not where the shipped config reads: the user is told what to change.
    assert "set its data.path to" in " ".join(result.output.split())
    shipped = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
    config = tmp_path / "configs" / "synthetic.yaml"
    config.parent.mkdir()
    text = shipped.read_text().replace(
        "  format: parquet", f"  format: parquet\n  cache_dir: {tmp_path / 'cache'}"
    )
    config.write_text(text)
    result = invoke("prepare", "--config", config, "--target-date", "2026-11-08")
    assert result.exit_code == 0, result.output
    assert "21,000" in result.output and "Bayes AUC" in result.output
    result = invoke("generate", "--out", logs, "--days", 0)
    assert result.exit_code == 2 and "days" in result.output


def test_models_lists_the_zoo_and_counts_parameters(tmp_path, shared_data):
    listed = invoke("models")
    assert listed.exit_code == 0
    for name in ("lr", "wide_resnet", "ipnn", "opnn", "pnn", "deepfm", "dcn_v2"):
        assert name in listed.output
    config = frappe_config(tmp_path, shared_data)
    counted = invoke("models", "--config", config)
    assert counted.exit_code == 0, counted.output
    folder = invoke("prepare", "--config", config).output.splitlines()[-1]
    manifest = json.loads(
        invoke("info", folder.removeprefix("prepared: "), "--json").output
    )
    lr_row = next(line for line in counted.output.splitlines() if "│ lr " in line)
    # A weight per id of the five tables, and a bias.
    assert f"{sum(manifest['vocab_sizes'].values()) + 1:,}" in lr_row


def test_train_on_synthetic_prints_metrics_beside_bayes_auc(tmp_path):
    logs = tmp_path / "data" / "synthetic"
    assert (
        invoke(
            "generate",
            "--out",
            logs,
            "--days",
            4,
            "--rows-per-day",
            2000,
            "--users",
            200,
            "--items",
            300,
        ).exit_code
        == 0
    )
    shipped = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
    config = tmp_path / "configs" / "synthetic.yaml"
    config.parent.mkdir()
    text = shipped.read_text().replace(
        "  format: parquet", f"  format: parquet\n  cache_dir: {tmp_path / 'c'}"
    )
    config.write_text(text + "train: {batch_size: 256, epochs: 2, threads: 1}\n")
    result = invoke(
        "train",
        "--config",
        config,
        "--target-date",
        "2026-11-04",
        "--train-days",
        3,
        "--run",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    for heading in ("AUC", "Bayes AUC", "logloss", "GAUC", "samples/s"):
        assert heading in result.output
    row = next(line for line in result.output.splitlines() if "│ test" in line)
    auc, bayes = (float(cell) for cell in row.split("│")[2:4])
    assert 0.5 < auc <= bayes + 0.02
    missing = invoke("train", "--target-date", "2026-11-04")
    assert missing.exit_code == 2 and "--config" in missing.output
