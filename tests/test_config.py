from pathlib import Path

import pytest

from likely.config import (
    ConfigError,
    DenseTransform,
    ExperimentConfig,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[1]


def minimal(**overrides):
    raw = {
        "data": {"path": "logs.csv", "format": "csv"},
        "features": [
            {"name": "user_id", "kind": "sparse", "side": "user"},
            {
                "name": "item_id",
                "kind": "sparse",
                "side": "item",
                "embedding_group": "item",
            },
            {
                "name": "recent",
                "kind": "sequence",
                "side": "user",
                "max_length": 5,
                "embedding_group": "item",
            },
            {
                "name": "price",
                "kind": "dense",
                "side": "item",
                "transform": "quantile",
                "num_buckets": 8,
            },
            {"name": "age", "kind": "dense", "transform": "standardize"},
        ],
    }
    raw.update(overrides)
    return raw


def test_feature_groups_and_orders():
    config = parse_config(minimal())
    assert [f.name for f in config.sparse_features] == ["user_id", "item_id", "price"]
    assert [f.name for f in config.dense_features] == ["age"]
    assert [f.name for f in config.sequence_features] == ["recent"]
    assert config.features[3].transform == DenseTransform.QUANTILE
    assert {f.group for f in config.categorical_features} == {
        "user_id",
        "item",
        "price",
    }


@pytest.mark.parametrize(
    ("change", "where", "what"),
    [
        ({"data": {"path": "x", "format": "xls"}}, "data.format", "csv"),
        ({"data": {"format": "csv"}}, "data.path", "Field required"),
        (
            {"data": {"path": "x", "format": "csv", "window_days": 0}},
            "data.window_days",
            "greater than or equal to 1",
        ),
        (
            {"data": {"path": "x", "format": "csv", "separator": "ab"}},
            "data.separator",
            "one character",
        ),
        (
            {"data": {"path": "x", "format": "csv", "colour": "red"}},
            "data.colour",
            "Extra inputs",
        ),
        (
            {
                "data": {
                    "path": "x",
                    "format": "csv",
                    "date_column": "d",
                    "test_path": "t",
                }
            },
            "data",
            "not both",
        ),
        ({"features": []}, "features", "at least 1"),
        (
            {"features": [{"name": "a", "kind": "sparse", "side": "shop"}]},
            "features.0.side",
            "'user', 'item' or 'context'",
        ),
        (
            {"features": [{"name": "s", "kind": "sequence"}]},
            "features.0",
            "needs max_length",
        ),
        (
            {"features": [{"name": "a", "kind": "sparse", "transform": "log1p"}]},
            "features.0",
            "transform applies to dense",
        ),
        (
            {"features": [{"name": "bad name", "kind": "sparse"}]},
            "features.0.name",
            "pattern",
        ),
        (
            {
                "features": [
                    {"name": "a", "kind": "sparse"},
                    {"name": "a", "kind": "dense"},
                ]
            },
            "(top level)",
            "repeated: ['a']",
        ),
        (
            {"features": [{"name": "label", "kind": "sparse"}]},
            "(top level)",
            "cannot also be features",
        ),
        (
            {
                "features": [{"name": "a", "kind": "sparse"}],
                "crosses": [{"fields": ["a", "zz"]}],
            },
            "(top level)",
            "names ['zz']",
        ),
        (
            {
                "features": [
                    {
                        "name": "a",
                        "kind": "sparse",
                        "embedding_group": "g",
                        "embedding_dim": 8,
                    },
                    {
                        "name": "b",
                        "kind": "sparse",
                        "embedding_group": "g",
                        "embedding_dim": 16,
                    },
                ]
            },
            "(top level)",
            "different embedding_dim [8, 16]",
        ),
        (
            {
                "features": [
                    {"name": "a", "kind": "sparse", "embedding_group": "g"},
                    {
                        "name": "b",
                        "kind": "sparse",
                        "embedding_group": "g",
                        "vocabulary": {"min_count": 5},
                    },
                ]
            },
            "(top level)",
            "different vocabulary settings",
        ),
    ],
)
def test_invalid_config_names_field_and_expectation(change, where, what):
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(**change), origin="exp.yaml")
    message = str(caught.value)
    assert message.startswith("exp.yaml is invalid")
    line = next(line for line in message.splitlines() if where in line)
    assert what in line, message


def test_config_is_frozen():
    config = parse_config(minimal())
    with pytest.raises(ValueError):
        config.embedding_dim = 4


def test_load_resolves_log_paths_against_the_config(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "exp.yaml").write_text(
        "data: {path: ../logs/a.csv, format: csv}\n"
        "features: [{name: a, kind: sparse}]\n"
    )
    config = load_config(folder / "exp.yaml")
    assert config.data.path == (tmp_path / "logs" / "a.csv").resolve()
    assert not config.data.cache_dir.is_absolute()


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("data: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("data: {path: x, format: csv}\n", "features: Field required"),
    ],
)
def test_load_rejects_bad_files(tmp_path, text, what):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=what):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_ignores_cache_dir_and_tracks_features():
    a = parse_config(minimal())
    raw = minimal()
    raw["data"] = {**raw["data"], "cache_dir": "elsewhere"}
    assert parse_config(raw).fingerprint() == a.fingerprint()
    raw["features"] = raw["features"][:-1]
    assert parse_config(raw).fingerprint() != a.fingerprint()


@pytest.mark.parametrize("name", ["frappe.yaml", "criteo_sample.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert isinstance(config, ExperimentConfig)


def test_model_section_choices_and_errors():
    config = parse_config(minimal(model={"name": "opnn", "kernel": "matrix"}))
    assert config.model.name == "opnn" and config.model.kernel == "matrix"
    assert parse_config(minimal()).model.name == "wide_resnet"
    with pytest.raises(ConfigError, match="'deepfn' .* 'lr', 'fm', 'wide_deep'"):
        parse_config(minimal(model={"name": "deepfn"}))
    with pytest.raises(ConfigError, match=r"model.wide_resnet.num_blocks"):
        parse_config(minimal(model={"name": "wide_resnet", "num_blocks": 0}))
    with pytest.raises(ConfigError, match=r"model.deepfm.hidden_dims"):
        parse_config(minimal(model={"name": "deepfm", "hidden_dims": []}))


def test_product_models_need_one_embedding_width():
    raw = minimal(model={"name": "deepfm"})
    raw["features"][0] = {**raw["features"][0], "embedding_dim": 8}
    with pytest.raises(
        ConfigError, match="same embedding_dim; got user_id 8, item_id 16"
    ):
        parse_config(raw)
    raw["model"] = {"name": "wide_deep"}
    assert parse_config(raw).dim_of(parse_config(raw).features[0]) == 8


def test_fingerprint_ignores_the_model():
    a = parse_config(minimal(model={"name": "lr"}))
    b = parse_config(minimal(model={"name": "dcn_v2", "num_cross_layers": 2}))
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize(
    ("train", "where", "what"),
    [
        ({"batch_size": 0}, "train.batch_size", "greater than or equal to 1"),
        ({"embedding_optimizer": "sgd"}, "train.embedding_optimizer", "'sparse_adam'"),
        ({"schedule": "step"}, "train.schedule", "'cosine'"),
        ({"learning_rate": 0}, "train.learning_rate", "greater than 0"),
        ({"device": "tpu"}, "train.device", "'cuda'"),
        ({"batch_norm_refresh": -1}, "train.batch_norm_refresh", "greater than or"),
        ({"batch_norm_refresh": "all"}, "train.batch_norm_refresh", "integer"),
        ({"epoch": 3}, "train.epoch", "Extra inputs"),
    ],
)
def test_invalid_train_section(train, where, what):
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(train=train))
    line = next(line for line in str(caught.value).splitlines() if where in line)
    assert what in line


def test_train_defaults():
    train = parse_config(minimal()).train
    assert (train.epochs, train.batch_size, train.embedding_optimizer) == (
        1,
        4096,
        "sparse_adam",
    )


def test_serve_section_names_bad_values():
    good = parse_config(minimal(serve={"context_defaults": {"age": 30}}))
    assert good.serve.context_defaults == {"age": 30}
    assert good.serve.precision == "fp32"
    with pytest.raises(ConfigError, match=r"'user_id', which is not the column of"):
        parse_config(minimal(serve={"context_defaults": {"user_id": 1}}))
    with pytest.raises(ConfigError, match=r"serve\.precision"):
        parse_config(minimal(serve={"precision": "fp8"}))
    assert good.serve.device == "auto"
    with pytest.raises(ConfigError, match=r"serve\.device"):
        parse_config(minimal(serve={"device": "tpu"}))
