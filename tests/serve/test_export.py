"""A day of events exported as a day of logs: labels, schema, layout, CLI."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from likely.cli import app
from likely.config import parse_config
from likely.data.encoders import FeatureEncoders
from likely.data.prepare import bayes_auc, prepare
from likely.data.readers import ColumnRoles, read_logs
from likely.data.synthetic import generate
from likely.serve.export import ExportError, export_day, label_day
from likely.serve.store import Event, open_store

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 11, 2)
MIDNIGHT = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()
runner = CliRunner()


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """Two tiny days of synthetic logs."""
    folder = tmp_path_factory.mktemp("logs") / "synthetic"
    generate(folder, days=2, rows_per_day=400, num_users=30, num_items=60, seed=3)
    return folder


def day_file(logs: Path, day: dt.date) -> Path:
    return logs / f"day={day}" / "part-0.parquet"


def load_world(store, logs: Path, template: pl.DataFrame | None = None) -> None:
    """Profiles from the first day's latest rows; the raw file's schema."""
    first = pl.read_parquet(day_file(logs, DAY - dt.timedelta(days=1)))
    users = first.select(
        "user_id", "user_type", "is_seller", "region", "membership",
        "purchasing_power", "recent_clicks",
    ).unique("user_id", keep="last", maintain_order=True)  # fmt: skip
    items = first.select(
        "item_id", "category", "category_l1", "brand", "seller_id", "price",
        "price_band", "min_order_qty",
    ).unique("item_id", keep="last", maintain_order=True)  # fmt: skip
    store.load_profiles(
        users,
        items,
        user_column="user_id",
        item_column="item_id",
        behaviour_column="recent_clicks",
        history_length=20,
        template=first.clear() if template is None else template,
        date_column="day",
    )


def replay_day(store, logs: Path) -> pl.DataFrame:
    """The second day's rows as the service would have recorded them: each
    row an impression with its raw values, each click a click after it."""
    rows = pl.read_parquet(day_file(logs, DAY))
    events = []
    for index, row in enumerate(rows.iter_rows(named=True)):
        at = MIDNIGHT + row["hour"] * 3600 + index * 1e-3
        request = f"r{index}"
        features = {k: v for k, v in row.items() if k not in ("label", "probability")}
        events.append(
            Event(
                "impression",
                row["user_id"],
                row["item_id"],
                at,
                request,
                row["position"],
                features,
            )  # fmt: skip
        )
        if row["label"]:
            events.append(
                Event("click", row["user_id"], row["item_id"], at + 1e-4, request)
            )
    store.append_events(events)
    return rows


@pytest.fixture
def world(store, logs):
    load_world(store, logs)
    return replay_day(store, logs)


def synthetic_config(path: Path, cache: Path):
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["data"]["path"] = str(path)
    raw["data"]["cache_dir"] = str(cache)
    return parse_config(raw, origin="synthetic.yaml")


# -------------------------------------------------------------------- labels


def at(seconds: float) -> float:
    return MIDNIGHT + seconds


def labels(store, events) -> tuple[list[tuple], int]:
    """(user, item, label) per exported row, and the clicks left out."""
    store.append_events(events)
    day = label_day(store, DAY)
    rows = day.rows.select("user_id", "item_id", "label").rows()
    return rows, day.unmatched_clicks


@pytest.fixture
def loaded(store, logs):
    load_world(store, logs)
    return store


def test_a_click_after_an_impression_labels_it(loaded):
    rows, unmatched = labels(
        loaded,
        [
            Event("impression", 1, 10, at(100)),
            Event("impression", 1, 11, at(100)),
            Event("click", 1, 10, at(150)),
        ],
    )
    assert rows == [(1, 10, 1), (1, 11, 0)]
    assert unmatched == 0


def test_a_click_before_the_impression_does_not_count(loaded):
    rows, unmatched = labels(
        loaded,
        [Event("click", 2, 10, at(50)), Event("impression", 2, 10, at(100))],
    )
    assert rows == [(2, 10, 0)]
    assert unmatched == 1


def test_a_click_labels_only_the_latest_impression_before_it(loaded):
    rows, unmatched = labels(
        loaded,
        [
            Event("impression", 4, 10, at(100)),
            Event("impression", 4, 10, at(120)),
            Event("click", 4, 10, at(150)),
            Event("click", 4, 10, at(160)),
            Event("impression", 4, 10, at(200)),
            # Two impressions at one instant: the later to arrive is the latest.
            Event("impression", 5, 10, at(300)),
            Event("impression", 5, 10, at(300)),
            Event("click", 5, 10, at(300)),
        ],
    )
    assert [label for *_, label in rows] == [0, 1, 0, 0, 1]
    assert unmatched == 0


def test_request_ids_must_match_when_both_have_one(loaded):
    rows, unmatched = labels(
        loaded,
        [
            Event("impression", 3, 10, at(100), request_id="a"),
            Event("impression", 3, 10, at(120), request_id="b"),
            Event("click", 3, 10, at(150), request_id="a"),
            Event("impression", 6, 10, at(100), request_id="a"),
            Event("click", 6, 10, at(150), request_id="z"),
            # An impression without a request id matches any click.
            Event("impression", 7, 10, at(100)),
            Event("click", 7, 10, at(150), request_id="q"),
        ],
    )
    assert [label for *_, label in rows] == [1, 0, 0, 1]
    assert unmatched == 1


def test_a_click_the_next_day_does_not_label(loaded):
    rows, unmatched = labels(
        loaded,
        [
            Event("impression", 1, 10, at(86_399)),
            Event("click", 1, 10, at(86_401)),
        ],
    )
    assert rows == [(1, 10, 0)]
    assert unmatched == 0  # the click is the next day's, unmatched there


def test_missing_features_are_null_but_ids_come_from_the_event(loaded):
    loaded.append_events([Event("impression", "9", "12", at(5), features={"hour": 3})])
    row = label_day(loaded, DAY).rows.row(0, named=True)
    filled = {"user_id": 9, "item_id": 12, "hour": 3, "label": 0}
    assert {k: v for k, v in row.items() if v is not None} == filled


def test_features_of_the_wrong_type_become_null(loaded, caplog):
    features = {"hour": 300, "platform": "app", "price": "cheap"}
    loaded.append_events([Event("impression", 1, 10, at(5), features=features)])
    row = label_day(loaded, DAY).rows.row(0, named=True)
    assert (row["hour"], row["platform"], row["price"]) == (None, "app", None)
    assert "column 'hour': 1 value(s)" in caplog.text


# -------------------------------------------------------------------- files


def test_the_exported_day_is_the_logged_day(world, store, logs, tmp_path):
    path = export_day(store, DAY, tmp_path / "events")
    assert path == tmp_path / "events" / "day=2026-11-02" / "part-0.parquet"
    exported = pl.read_parquet(path, hive_partitioning=False)
    assert exported.schema == pl.read_parquet(day_file(logs, DAY)).schema
    assert exported["probability"].null_count() == exported.height
    assert exported.drop("probability").equals(world.drop("probability"))


def test_exporting_again_replaces_the_day(world, store, tmp_path):
    out = tmp_path / "events"
    first = pl.read_parquet(export_day(store, DAY, out))
    store.append_events([Event("impression", 1, 10, at(7), features={"hour": 0})])
    path = export_day(store, DAY, out)
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]
    again = pl.read_parquet(path)
    assert again.height == first.height + 1
    assert again.head(first.height).equals(first)


def test_a_readers_template_keeps_its_order_and_types_less_the_day(
    store, logs, tmp_path
):
    config = synthetic_config(logs, tmp_path / "cache")
    template = read_logs(config.data, ColumnRoles.from_config(config)).frame.clear()
    assert "day" in template.columns
    load_world(store, logs, template=template)
    replay_day(store, logs)
    exported = pl.read_parquet(export_day(store, DAY, tmp_path / "events"))
    assert exported.schema == template.drop("day").schema


def test_an_export_is_read_and_encoded_like_the_logs(world, store, tmp_path):
    out = tmp_path / "events"
    export_day(store, DAY, out)
    config = synthetic_config(out, tmp_path / "cache")
    frame = read_logs(config.data, ColumnRoles.from_config(config)).frame
    assert frame["day"].unique().to_list() == [DAY]
    assert frame["label"].to_list() == world["label"].to_list()
    encoded = FeatureEncoders(config).fit(frame).transform(frame)
    assert encoded.sparse.shape[0] == world.height
    assert int(encoded.label.sum()) == int(world["label"].sum())
    assert np.isnan(encoded.probability).all()


def test_prepare_trains_on_logs_and_evaluates_on_an_export(
    world, store, logs, tmp_path
):
    out = tmp_path / "events"
    export_day(store, DAY, out)
    first = f"day={DAY - dt.timedelta(days=1)}"
    shutil.copytree(logs / first, out / first)
    config = synthetic_config(out, tmp_path / "cache")
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"window_days": 1})}
    )
    prepared = prepare(config, DAY)
    assert prepared.manifest["splits"]["test"]["rows"] == world.height
    # The export has no true probability, so no Bayes AUC; the logs still do.
    assert bayes_auc(prepared.folder / "test") is None
    assert bayes_auc(prepared.folder / "train") is not None


def test_a_store_without_profiles_or_impressions_cannot_export(store, logs, tmp_path):
    with pytest.raises(ExportError, match="no profiles loaded"):
        export_day(store, DAY, tmp_path / "events")
    load_world(store, logs)
    store.append_events([Event("click", 1, 10, at(5))])
    with pytest.raises(ExportError, match="no impressions on 2026-11-02"):
        export_day(store, DAY, tmp_path / "events")
    assert not (tmp_path / "events").exists()


# ---------------------------------------------------------------------- CLI


def invoke(*args):
    return runner.invoke(app, ["events", "export", *map(str, args)])


def test_cli_exports_a_day(logs, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as store:
        load_world(store, logs)
        rows = replay_day(store, logs)
    result = invoke("--store", url, "--day", DAY, "--out", tmp_path / "events")
    assert result.exit_code == 0, result.output
    clicks = int(rows["label"].sum())
    assert f"{rows.height:,} impressions written, {clicks:,} clicked" in result.output
    path = tmp_path / "events" / "day=2026-11-02" / "part-0.parquet"
    assert f"written: {path}" in result.output.replace("\n", "")
    assert pl.read_parquet(path).height == rows.height


@pytest.mark.parametrize(
    ("url", "day", "message"),
    [
        ("{db}", "2026-13-01", "day '2026-13-01' is not a date"),
        ("mysql://db/x", "2026-11-02", "unknown feature store URL 'mysql://db/x'"),
        ("{tmp}/missing.db", "2026-11-02", "no feature store at"),
        ("{db}", "2026-11-02", "no profiles loaded"),
    ],
)
def test_cli_names_bad_input_without_a_traceback(tmp_path, url, day, message):
    db = tmp_path / "empty.db"
    open_store(db).close()
    url = url.format(db=db, tmp=tmp_path)
    result = invoke("--store", url, "--day", day, "--out", tmp_path / "events")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "missing.db").exists()


def test_event_features_stay_json(loaded):
    loaded.append_events(
        [Event("impression", 1, 10, at(1), features={"recent_clicks": [3, 4]})]
    )
    stored = loaded.events(DAY)["features"][0]
    assert json.loads(stored) == {"recent_clicks": [3, 4]}
    assert label_day(loaded, DAY).rows["recent_clicks"].to_list() == [[3, 4]]
