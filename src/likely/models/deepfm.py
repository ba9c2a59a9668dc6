"""DeepFM."""

from __future__ import annotations

import torch

from likely.config import DeepFMConfig
from likely.models.heads import mlp_head
from likely.models.inputs import FeatureEmbedding, FeatureLayout, WideLinear
from likely.models.layers import FactorizationMachine
from likely.models.registry import CTRModel, register


class DeepFM(CTRModel):
    """FM and an MLP over the same embeddings, summed.

    Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
    Prediction", IJCAI 2017. The first-order part is the shared wide part (ids,
    dense values, and any crosses the config declares).
    """

    def __init__(self, layout: FeatureLayout, config: DeepFMConfig, *, sparse: bool):
        super().__init__()
        self.wide = WideLinear(layout, sparse=sparse)
        self.embedding = FeatureEmbedding(layout, sparse=sparse)
        self.fm = FactorizationMachine()
        self.deep = mlp_head(layout.flat_dim + layout.num_dense, config)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        fields = self.embedding(sparse, sequence)  # (B, F, D)
        deep_in = torch.cat([fields.flatten(1), dense], dim=1)  # (B, F*D + F_dense)
        deep = self.deep(deep_in).squeeze(-1)  # (B,)
        return self.wide(sparse, dense, sequence, cross) + self.fm(fields) + deep


@register("deepfm")
def _deepfm(config: DeepFMConfig, layout: FeatureLayout, *, sparse: bool) -> CTRModel:
    return DeepFM(layout, config, sparse=sparse)
