"""Logistic regression and the factorization machine."""

from __future__ import annotations

import torch

from likely.config import FMConfig, LRConfig
from likely.models.inputs import FeatureEmbedding, FeatureLayout, WideLinear
from likely.models.layers import FactorizationMachine
from likely.models.registry import CTRModel, register


class LogisticRegression(CTRModel):
    """The wide part alone: a weight per id, per crossed id and per dense value."""

    def __init__(self, layout: FeatureLayout, *, sparse: bool = False):
        super().__init__()
        self.wide = WideLinear(layout, sparse=sparse)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        return self.wide(sparse, dense, sequence, cross)  # (B,)


class FM(CTRModel):
    """Factorization machine (Rendle, "Factorization Machines", ICDM 2010).

    Logits are the wide part plus sum over field pairs of <v_i, v_j>, computed
    in O(F D).
    """

    def __init__(self, layout: FeatureLayout, *, sparse: bool = False):
        super().__init__()
        self.wide = WideLinear(layout, sparse=sparse)
        self.embedding = FeatureEmbedding(layout, sparse=sparse)
        self.fm = FactorizationMachine()

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        fields = self.embedding(sparse, sequence)  # (B, F, D)
        return self.wide(sparse, dense, sequence, cross) + self.fm(fields)


@register("lr")
def _lr(config: LRConfig, layout: FeatureLayout, *, sparse: bool) -> CTRModel:
    return LogisticRegression(layout, sparse=sparse)


@register("fm")
def _fm(config: FMConfig, layout: FeatureLayout, *, sparse: bool) -> CTRModel:
    return FM(layout, sparse=sparse)
