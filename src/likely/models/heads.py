"""The deep tower with its output layer, shared by the deep models."""

from __future__ import annotations

from torch import nn

from likely.config import DeepTower
from likely.models.layers import MLP


def mlp_head(input_dim: int, tower: DeepTower) -> nn.Sequential:
    """MLP over `(B, input_dim)` then a linear map to one logit: `(B, 1)`."""
    mlp = MLP(
        input_dim,
        tower.hidden_dims,
        activation=tower.activation,
        dropout=tower.dropout,
        batch_norm=tower.batch_norm,
    )
    return nn.Sequential(mlp, nn.Linear(mlp.output_dim, 1))
