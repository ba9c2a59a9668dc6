"""The preprocessing benchmark end to end, on a few thousand rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prepare_speed.py"


def test_prepare_speed_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "prepare_speed.json"
    command = [sys.executable, str(SCRIPT), "--rows", "8000", "--repeats", "2"]
    command += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "8,000 rows" in done.stdout

    report = json.loads(out.read_text())
    (row,) = report["results"]
    for kind in ("likely_synthetic", "likely_criteo", "pandas_criteo"):
        result = row[kind]
        assert len(result["runs_seconds"]) == 2
        assert round(result["seconds"], 3) == min(result["runs_seconds"])
        assert result["rows_per_s"] == result["rows"] / result["seconds"]
        assert result["peak_rss_mb"] > 0
    assert row["likely_criteo"]["rows"] == row["pandas_criteo"]["rows"] == 8000
    assert row["likely_criteo"]["encoded_bytes"] > 8000 * 4 * 39
    assert row["speedup_vs_pandas"] > 0


def test_prepare_speed_refuses_zero_repeats(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--rows", "100", "--repeats", "0"]
    command += ["--workdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--repeats must be at least 1, got 0" in done.stderr
    assert not list(tmp_path.iterdir())  # refused before writing any data
