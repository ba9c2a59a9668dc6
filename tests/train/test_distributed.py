"""Two CPU processes under torchrun: shared weights, disjoint shards, falling loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import yaml

from likely.config import load_config
from likely.data.prepare import prepare
from likely.data.synthetic import generate
from likely.data.windows import parse_date

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from safetensors.torch import save_file
    from likely.config import load_config
    from likely.data.prepare import Prepared, load_manifest
    from likely.train.trainer import Trainer

    config = load_config(sys.argv[1])
    folder = Path(sys.argv[2])
    out = Path(sys.argv[3])
    trainer = Trainer(config, Prepared(folder, load_manifest(folder)), out / "run")
    result = trainer.fit()
    rank = trainer.world.rank
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    shard = trainer.batches
    (out / f"rank{rank}.json").write_text(json.dumps({
        "batches": len(shard),
        "rows": [int(i) for rows in shard._mine(0) for i in rows],
        "world": trainer.world.size,
    }))
    """
)


def test_two_processes_train_one_model(tmp_path):
    logs = tmp_path / "logs"
    generate(logs, days=4, rows_per_day=3000, num_users=200, num_items=400, seed=1)
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"] |= {
        "path": str(logs),
        "cache_dir": str(tmp_path / "cache"),
        "window_days": 3,
    }
    raw["model"] = {"name": "deepfm", "hidden_dims": [16]}
    raw["train"] = {
        "batch_size": 128,
        "epochs": 2,
        "threads": 1,
        "log_every": 5,
        "early_stopping_patience": None,
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    prepared = prepare(load_config(config_path), parse_date("2026-11-04"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(config_path),
        str(prepared.folder),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from safetensors.numpy import load_file

    a, b = (
        load_file(tmp_path / "rank0.safetensors"),
        load_file(tmp_path / "rank1.safetensors"),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"{key} differs across ranks"

    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert shards[0]["world"] == 2 and shards[0]["batches"] == shards[1]["batches"]
    rows = prepared.manifest["splits"]["train"]["rows"]
    assert shards[0]["batches"] * 2 * 128 <= rows + 2 * 128
    seen = [set(shard["rows"]) for shard in shards]
    assert not seen[0] & seen[1], "ranks must train on disjoint rows"
    assert len(seen[0] | seen[1]) >= rows - 2 * 128

    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) >= 6
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
