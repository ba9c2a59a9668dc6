"""The ranking latency benchmark's passes and table, on the test world's ranker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from likely.recall.artifact import Recaller
from likely.serve.ranker import Ranker

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rank_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rank_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_times_both_precisions_and_restores_the_rankers(bench, served_world):
    recaller = Recaller.load(served_world["recall"], with_index=False)
    ranker = Ranker.load(
        served_world["ranking"], recaller.items, recaller.rows.template
    )
    serving = ranker.bf16
    users = recaller.users.head(bench.WARM_UP + 3 * 4).to_dicts()
    results = bench.measure(ranker, users, requests=4, candidates=50)
    assert ranker.bf16 == serving
    for precision in ("fp32", "bf16"):
        for kind in ("new_users", "same_users_again"):
            timing = results[f"end_to_end_{kind}_{precision}"]
            assert 0 < timing["p50_ms"] <= timing["p99_ms"]
    bf16 = results["model_forward_bf16"]
    assert 0.9 <= bf16["mean_top_overlap"] <= 1.0
    assert bf16["max_abs_logit_difference"] < 0.5
    table = bench.table(results)
    assert "new users, bf16" in table and "the top 60% agree" in table
    with pytest.raises(ValueError, match="are needed for 4 requests"):
        bench.measure(ranker, users[:10], requests=4, candidates=50)
