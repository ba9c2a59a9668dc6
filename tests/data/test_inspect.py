import datetime as dt

import numpy as np
import polars as pl
import pytest
import yaml

from likely.config import load_config
from likely.data.inspect import inspect_logs, render_config
from likely.data.prepare import prepare


def write_and_load(inspection, tmp_path):
    path = tmp_path / "configs" / "guessed.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(render_config(inspection, path))
    config = load_config(path)
    data = config.data.model_copy(update={"cache_dir": tmp_path / "cache"})
    return path, config.model_copy(update={"data": data})


def kinds(config):
    return {f.name: f.kind.value for f in config.features}


def test_frappe(tmp_path, shared_data):
    inspection = inspect_logs(shared_data / "frappe" / "valid.csv")
    path, config = write_and_load(inspection, tmp_path)
    assert config.data.label == "label" and config.data.user_column == "user"
    assert config.data.date_column is None and config.data.holdout_fraction == 0.1
    assert set(kinds(config).values()) == {"sparse"} and len(config.features) == 10
    text = path.read_text()
    assert "# label: named 'label' and holds only 0 and 1" in text
    # A small file with a holdout trains several epochs, the holdout picking one.
    assert config.train.epochs == 10 and config.train.early_stopping_patience == 2
    train = text[text.index("train:") : text.index("embedding_dim:")]
    assert "57,722 rows in all, too few for one pass" in " ".join(train.split())
    assert max(len(line) for line in train.splitlines()) <= 80
    # test.csv beside it has the same header: it becomes the test set.
    assert config.data.test_path.name == "test.csv"
    assert "# test_path: 'test.csv' lies beside it with the same columns" in text
    splits = prepare(config).manifest["splits"]
    assert splits["train"]["rows"] + splits["valid"]["rows"] == 57_722
    assert splits["test"]["rows"] == 28_860


def test_criteo_sample(tmp_path, shared_data):
    inspection = inspect_logs(shared_data / "samples" / "criteo_sample.txt")
    _, config = write_and_load(inspection, tmp_path)
    assert config.data.format.value == "criteo" and config.data.header
    found = kinds(config)
    assert found["I1"] == "dense" and found["C1"] == "sparse"
    assert {f.transform.value for f in config.dense_features} == {"log1p"}
    assert (
        prepare(config).manifest["splits"]["train"]["rows"]
        + prepare(config).manifest["splits"]["valid"]["rows"]
        == 200
    )


def test_avazu_sample(tmp_path, shared_data):
    inspection = inspect_logs(shared_data / "samples" / "avazu_sample.txt")
    _, config = write_and_load(inspection, tmp_path)
    assert config.data.format.value == "avazu"
    assert config.data.label == "click"
    # The sample holds one day: a day window could not train, so it holds out.
    assert config.data.date_column is None and config.data.holdout_fraction == 0.1
    names = {f.name for f in config.features}
    assert "id" not in names  # one value per impression: useless as a feature
    reasons = dict(reason.split(": ", 1) for reason in inspection.skipped)
    assert reasons["id"] == "a different value on every row (an impression id?)"
    assert reasons["day"] == "the same value on every sampled row"
    assert {"site_id", "app_id", "device_model"} <= names
    splits = prepare(config).manifest["splits"]
    assert splits["train"]["rows"] + splits["valid"]["rows"] == 100


def test_raw_criteo_tsv_and_libfm(tmp_path, shared_data):
    frame = pl.read_csv(shared_data / "samples" / "criteo_sample.txt")
    raw = tmp_path / "day_0"
    frame.write_csv(raw, separator="\t", include_header=False)
    inspection = inspect_logs(raw)
    assert inspection.format.value == "criteo"
    _, config = write_and_load(inspection, tmp_path)
    assert not config.data.header
    libfm = tmp_path / "train.libfm"
    libfm.write_text("1 0:1 5:1 9:0.5\n0 1:1 6:1 9:2.5\n1 0:1 7:1 9:1.5\n")
    inspection = inspect_logs(libfm)
    assert inspection.format.value == "libfm"
    _, config = write_and_load(inspection, tmp_path)
    assert kinds(config)["c0"] == "sparse"


def test_dated_parquet_with_sequences_and_skewed_floats(tmp_path):
    rng = np.random.default_rng(0)
    rows = 3000
    for k in range(3):
        day = dt.date(2026, 11, 1) + dt.timedelta(days=k)
        folder = tmp_path / "logs" / f"day={day}"
        folder.mkdir(parents=True)
        item = rng.integers(0, 200, rows)
        pl.DataFrame(
            {
                "impression_id": np.arange(rows) + k * rows,
                "user_id": rng.integers(0, 300, rows),
                "item_id": item,
                "recent_clicks": [list(rng.integers(0, 200, 4)) for _ in range(rows)],
                "price": rng.lognormal(2.0, 1.5, rows),
                "score": rng.normal(0, 1, rows),
                "clicked": (rng.random(rows) < 0.1).astype(np.int8),
            }
        ).write_parquet(folder / "part-0.parquet")
    inspection = inspect_logs(tmp_path / "logs")
    path, config = write_and_load(inspection, tmp_path)
    assert config.data.label == "clicked" and config.data.date_column == "day"
    # Day windows have no holdout to pick an epoch with: the default one pass.
    assert config.train.epochs == 1 and "train:" not in path.read_text()
    assert config.data.user_column == "user_id"
    by_name = {f.name: f for f in config.features}
    assert "impression_id" not in by_name
    assert by_name["price"].transform.value == "log1p"
    assert by_name["score"].transform.value == "standardize"
    sequence = by_name["recent_clicks"]
    assert sequence.kind.value == "sequence" and sequence.max_length == 4
    assert sequence.group == by_name["item_id"].group == "item_id"
    assert by_name["item_id"].side.value == "item"
    prepared = prepare(config, dt.date(2026, 11, 3), allow_missing_days=True)
    assert prepared.manifest["splits"]["test"]["rows"] == rows
    assert yaml.safe_load(path.read_text())["data"]["window_days"] == 7


@pytest.mark.parametrize(
    ("siblings", "found"),
    [
        ({"test.csv": "label,a,b\n1,x,3\n"}, "test.csv"),
        ({"test.csv": "label,a,c\n1,x,3\n"}, None),  # other columns
        ({"test.csv": "label,a,b\n", "test_2.csv": "label,a,b\n"}, None),  # which?
        ({"test.tsv": "label\ta\tb\n"}, None),  # another format
        ({}, None),
    ],
)
def test_a_test_file_beside_the_logs_becomes_test_path(tmp_path, siblings, found):
    rows = "".join(f"{k % 2},{'xyz'[k % 3]},{k}\n" for k in range(60))
    (tmp_path / "train.csv").write_text("label,a,b\n" + rows)
    for name, text in siblings.items():
        (tmp_path / name).write_text(text)
    inspection = inspect_logs(tmp_path / "train.csv")
    assert (inspection.test_path and inspection.test_path.name) == found


def test_no_label_is_a_clear_error(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text("a,b\n1,x\n2,y\n3,z\n")
    with pytest.raises(ValueError, match="no label column found"):
        inspect_logs(path)


def test_empty_file(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        inspect_logs(path)


def test_synthetic_logs(tmp_path):
    from likely.data.synthetic import generate

    generate(tmp_path / "logs", days=3, rows_per_day=4000, num_users=400, num_items=800)
    inspection = inspect_logs(tmp_path / "logs")
    _, config = write_and_load(inspection, tmp_path)
    data = config.data
    assert (data.label, data.date_column, data.user_column) == (
        "label",
        "day",
        "user_id",
    )
    assert data.probability_column == "probability"
    by_name = {f.name: f for f in config.features}
    assert by_name["recent_clicks"].kind.value == "sequence"
    assert by_name["recent_clicks"].group == by_name["item_id"].group
    assert by_name["price"].kind.value == "dense"
    assert by_name["user_type"].kind.value == "sparse"
    assert by_name["user_id"].side.value == "user"
    assert by_name["brand"].side.value == "item"
    prepared = prepare(config, dt.date(2026, 11, 3), allow_missing_days=True)
    assert prepared.manifest["splits"]["test"]["rows"] == 4000
