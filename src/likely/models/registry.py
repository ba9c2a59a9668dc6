"""Models by name: `build_model(config, layout)` for any name of the zoo.

Every model is a `CTRModel`: it takes the tensors of a `Batch` and returns
logits `(B,)`; the sigmoid belongs to prediction and serving.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from likely.config import MODEL_NAMES, ExperimentConfig
from likely.data.batches import Batch
from likely.models.inputs import FeatureLayout


class CTRModel(nn.Module):
    """Base of the zoo: `forward(sparse, dense, sequence, cross) -> (B,)` logits.

    The four tensors are those of `Batch` (`score` unpacks one), passed one by
    one so that `torch.export` can trace a model as it is.

    Two buffers hold a calibration of the logits, fitted after training on
    held-out rows (`train.calibrate`): `score` applies it, `forward` (which
    training optimises) does not. They start as the identity.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logit_scale", torch.ones(()))
        self.register_buffer("logit_bias", torch.zeros(()))

    def score(self, batch: Batch) -> torch.Tensor:
        """Calibrated logits `(B,)` of a batch."""
        logits = self(batch.sparse, batch.dense, batch.sequence, batch.cross)
        return logits * self.logit_scale + self.logit_bias

    @torch.no_grad()
    def set_calibration(self, scale: float, bias: float) -> None:
        self.logit_scale.fill_(scale)
        self.logit_bias.fill_(bias)


Builder = Callable[..., CTRModel]
_BUILDERS: dict[str, Builder] = {}


def register(*names: str) -> Callable[[Builder], Builder]:
    """Register a builder `(model_config, layout, sparse=...) -> CTRModel`."""

    def add(builder: Builder) -> Builder:
        for name in names:
            if name in _BUILDERS:
                raise ValueError(f"model '{name}' is registered twice")
            _BUILDERS[name] = builder
        return builder

    return add


def model_names() -> list[str]:
    _load_zoo()
    return list(_BUILDERS)


def _load_zoo() -> None:
    # Importing the model files registers them.
    from likely.models import dcn, deepfm, linear, pnn, wide_deep  # noqa: F401


def build_model(
    config: ExperimentConfig, layout: FeatureLayout, *, sparse: bool = False
) -> CTRModel:
    """The model named by `config.model`, sized for `layout`.

    Args:
        config: the experiment config; its `model` section picks and shapes it.
        layout: tables, fields and dense width of the prepared data.
        sparse: embedding tables produce sparse gradients (for SparseAdam).

    Example:
        >>> from likely.config import parse_config
        >>> config = parse_config({
        ...     "data": {"path": "x.csv", "format": "csv"},
        ...     "features": [{"name": "item", "kind": "sparse"}],
        ...     "model": {"name": "lr"},
        ... })
        >>> layout = FeatureLayout.from_config(config, {"item": 10})
        >>> model = build_model(config, layout)
        >>> count_parameters(model)  # a weight per item id, and a bias
        11
    """
    _load_zoo()
    name = config.model.name
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown model '{name}'; choose one of: {', '.join(MODEL_NAMES)}"
        )
    return _BUILDERS[name](config.model, layout, sparse=sparse)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
