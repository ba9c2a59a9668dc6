"""The model zoo: shapes, gradients, determinism, learning and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from likely.config import MODEL_NAMES, ConfigError, parse_config
from likely.models.inputs import FeatureLayout
from likely.models.registry import build_model, count_parameters, model_names
from likely.train.metrics import roc_auc

SPECS = {
    "sparse_only": {"dense": 0, "sequence": False, "crosses": False},
    "with_dense": {"dense": 3, "sequence": False, "crosses": False},
    "with_sequence": {"dense": 0, "sequence": True, "crosses": False},
    "everything": {"dense": 2, "sequence": True, "crosses": True},
}


def make_config(model: dict, dense=0, sequence=False, crosses=False, dim=8):
    features = [
        {"name": "user", "kind": "sparse", "side": "user"},
        {"name": "item", "kind": "sparse", "side": "item", "embedding_group": "item"},
        {"name": "hour", "kind": "sparse"},
    ]
    features += [{"name": f"x{i}", "kind": "dense"} for i in range(dense)]
    if sequence:
        features.append(
            {
                "name": "recent",
                "kind": "sequence",
                "max_length": 4,
                "embedding_group": "item",
            }
        )
    raw = {
        "data": {"path": "x.parquet", "format": "parquet"},
        "features": features,
        "embedding_dim": dim,
        "model": model,
    }
    if crosses:
        raw["crosses"] = [{"fields": ["user", "item"], "hash_buckets": 31}]
    return parse_config(raw)


SIZES = {"user": 20, "item": 30, "hour": 27}


def build(model: dict, seed: int = 0, **spec):
    config = make_config(model, **spec)
    crosses = [3 + 31] if spec.get("crosses") else []
    layout = FeatureLayout.from_config(config, SIZES, crosses)
    torch.manual_seed(seed)
    return build_model(config, layout), layout


def inputs(layout: FeatureLayout, batch: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sizes = [layout.table(t).num_embeddings for t in layout.sparse_tables]
    sparse = torch.stack([torch.randint(1, n, (batch,), generator=g) for n in sizes], 1)
    dense = torch.randn(batch, layout.num_dense, generator=g)
    items = layout.table("item").num_embeddings
    sequence = torch.randint(
        0, items, (batch, len(layout.sequence_tables), 4), generator=g
    )
    cross = torch.randint(3, 34, (batch, len(layout.cross_sizes)), generator=g)
    return sparse, dense, sequence, cross


def test_every_name_is_registered():
    assert sorted(model_names()) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_shape_gradients_and_determinism(name, spec):
    model, layout = build({"name": name}, **SPECS[spec])
    args = inputs(layout)
    logits = model(*args)
    assert logits.shape == (16,) and logits.dtype == torch.float32
    (logits - 1.0).square().sum().backward()  # non-zero even at zero logits
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name
    again, _ = build({"name": name}, **SPECS[spec])
    assert torch.equal(again(*args), model(*args))
    other, _ = build({"name": name}, seed=5, **SPECS[spec])
    if name != "lr":  # LR starts at zero whatever the seed
        assert not torch.equal(other(*args), model(*args))


def test_mixed_widths_work_for_flat_models_and_fail_for_products():
    raw = make_config({"name": "wide_deep"}, dense=1).model_dump(mode="json")
    raw["features"][2]["embedding_dim"] = 4
    config = parse_config(raw)
    layout = FeatureLayout.from_config(config, SIZES)
    assert layout.equal_dims is None and layout.flat_dim == 8 + 8 + 4
    model = build_model(config, layout)
    assert model(*inputs(layout)).shape == (16,)
    raw["model"] = {"name": "ipnn"}
    with pytest.raises(
        ConfigError, match="same embedding_dim; got user 8, item 8, hour 4"
    ):
        parse_config(raw)


def test_sparse_gradients_touch_only_the_batch_rows():
    config = make_config({"name": "deepfm"}, sequence=True)
    layout = FeatureLayout.from_config(config, SIZES)
    model = build_model(config, layout, sparse=True)
    model(*inputs(layout)).sum().backward()
    grads = [
        p.grad for p in model.parameters() if p.grad is not None and p.grad.is_sparse
    ]
    assert grads, "embedding tables should have sparse gradients"


def test_layout_needs_every_table_size():
    config = make_config({"name": "lr"})
    with pytest.raises(ValueError, match="no vocabulary size for table 'hour'"):
        FeatureLayout.from_config(config, {"user": 3, "item": 3})


def test_wide_resnet_batch_norm_is_a_real_switch():
    with_bn, _ = build({"name": "wide_resnet", "batch_norm": True})
    without, _ = build({"name": "wide_resnet", "batch_norm": False})
    norms = [m for m in with_bn.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in without.modules())
    assert count_parameters(with_bn) == count_parameters(without) + 3 * 2 * 256


def xor_data(rows: int, seed: int):
    """Label = parity of two fields (plus noise fields): no linear model fits it."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 10, rows)
    item = rng.integers(0, 10, rows)
    hour = rng.integers(0, 24, rows)
    label = ((user + item) % 2 == 0).astype(np.float32)
    flip = rng.random(rows) < 0.05
    label[flip] = 1 - label[flip]
    sparse = torch.from_numpy(np.stack([user, item, hour], 1) + 3)
    return sparse, torch.from_numpy(label)


LEARNERS = {"fm": 0.9, "deepfm": 0.9, "pnn": 0.9, "wide_deep": 0.9, "wide_resnet": 0.9}


@pytest.mark.parametrize("name", [*LEARNERS, "lr"])
def test_interaction_is_learned_by_all_but_lr(name):
    config = make_config(
        {"name": name, "hidden_dims": [64, 64]}
        if name in ("deepfm", "pnn", "wide_deep")
        else {"name": name}
        | ({"width": 64, "num_blocks": 2} if name == "wide_resnet" else {})
    )
    layout = FeatureLayout.from_config(config, SIZES)
    torch.manual_seed(0)
    model = build_model(config, layout)
    sparse, label = xor_data(4000, seed=0)
    empty_dense = torch.zeros(len(label), 0)
    empty_seq = torch.zeros(len(label), 0, 4, dtype=torch.long)
    empty_cross = torch.zeros(len(label), 0, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _epoch in range(8):
        for start in range(0, len(label), 256):
            rows = slice(start, start + 256)
            logits = model(
                sparse[rows], empty_dense[rows], empty_seq[rows], empty_cross[rows]
            )
            loss = loss_fn(logits, label[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_sparse, test_label = xor_data(2000, seed=1)
    n = len(test_label)
    with torch.no_grad():
        scores = model(
            test_sparse,
            torch.zeros(n, 0),
            torch.zeros(n, 0, 4).long(),
            torch.zeros(n, 0).long(),
        )
    auc = roc_auc(test_label.numpy(), scores.numpy())
    if name == "lr":
        assert auc < 0.6
    else:
        assert auc > LEARNERS[name], auc


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_gives_the_same_logits(name):
    model, layout = build({"name": name}, **SPECS["everything"])
    model.eval()
    args = inputs(layout, batch=8)
    exported = torch.export.export(model, args)
    with torch.no_grad():
        expected = model(*args)
        got = exported.module()(*args)
        other = inputs(layout, batch=8, seed=9)
        assert torch.allclose(exported.module()(*other), model(*other), atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)
