"""DCN-V2, the strongest modern baseline beside the mission's models."""

from __future__ import annotations

import torch
from torch import nn

from likely.config import DCNv2Config
from likely.models.inputs import FeatureEmbedding, FeatureLayout
from likely.models.layers import MLP, CrossNetworkV2
from likely.models.registry import CTRModel, register


class DCNv2(CTRModel):
    """Cross layers and an MLP over the embeddings and dense values.

    Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons
    for Web-scale Learning to Rank Systems", WWW 2021. `stacked` feeds the cross
    network's output to the MLP; `parallel` runs both on the input and
    concatenates their outputs before the logit.
    """

    def __init__(self, layout: FeatureLayout, config: DCNv2Config, *, sparse: bool):
        super().__init__()
        width = layout.flat_dim + layout.num_dense
        self.embedding = FeatureEmbedding(layout, sparse=sparse)
        self.cross = CrossNetworkV2(
            width, config.num_cross_layers, low_rank=config.low_rank
        )
        self.mlp = MLP(
            width,
            config.hidden_dims,
            activation=config.activation,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
        )
        self.stacked = config.structure == "stacked"
        head_in = self.mlp.output_dim + (0 if self.stacked else width)
        self.head = nn.Linear(head_in, 1)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        x0 = torch.cat([self.embedding.flat(sparse, sequence), dense], dim=1)
        crossed = self.cross(x0)  # (B, H)
        if self.stacked:
            out = self.mlp(crossed)  # (B, H_last)
        else:
            out = torch.cat([crossed, self.mlp(x0)], dim=1)  # (B, H + H_last)
        return self.head(out).squeeze(-1)


@register("dcn_v2")
def _dcn_v2(config: DCNv2Config, layout: FeatureLayout, *, sparse: bool) -> CTRModel:
    return DCNv2(layout, config, sparse=sparse)
