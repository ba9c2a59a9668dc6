"""Product-based neural networks: IPNN, OPNN and PNN* (both products)."""

from __future__ import annotations

import torch
from torch import nn

from likely.config import PNNConfig
from likely.models.heads import mlp_head
from likely.models.inputs import FeatureEmbedding, FeatureLayout
from likely.models.layers import InnerProduct, OuterProduct, SumPooledOuterProduct
from likely.models.registry import CTRModel, register


class PNN(CTRModel):
    """Field embeddings, their pairwise products and the dense values feed an MLP.

    Qu et al., "Product-based Neural Networks for User Response Prediction",
    ICDM 2016. The product layer's linear signal is the flattened embeddings;
    its quadratic signal is the inner products `(B, P)` (IPNN), the outer
    products with a per-pair kernel `(B, P)` or their sum-pooled approximation
    `(B, outer_dim)` (OPNN), or both (PNN*).
    """

    def __init__(self, layout: FeatureLayout, config: PNNConfig, *, sparse: bool):
        super().__init__()
        dim = layout.equal_dims
        if dim is None or layout.num_fields < 2:
            raise ValueError(
                f"'{config.name}' needs at least two fields of one width; got widths "
                f"{list(layout.field_dims)}"
            )
        fields = layout.num_fields
        self.embedding = FeatureEmbedding(layout, sparse=sparse)
        self.products = nn.ModuleList()
        width = fields * dim + layout.num_dense
        pairs = fields * (fields - 1) // 2
        if config.name in ("ipnn", "pnn"):
            self.products.append(InnerProduct(fields))
            width += pairs
        if config.name in ("opnn", "pnn"):
            if config.outer_sum_pooled:
                self.products.append(SumPooledOuterProduct(dim, config.outer_dim))
                width += config.outer_dim
            else:
                self.products.append(OuterProduct(fields, dim, config.kernel))
                width += pairs
        self.deep = mlp_head(width, config)

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        cross: torch.Tensor,
    ) -> torch.Tensor:
        fields = self.embedding(sparse, sequence)  # (B, F, D)
        signals = [fields.flatten(1), dense]  # (B, F*D), (B, F_dense)
        signals += [product(fields) for product in self.products]  # (B, P) each
        return self.deep(torch.cat(signals, dim=1)).squeeze(-1)


@register("ipnn", "opnn", "pnn")
def _pnn(config: PNNConfig, layout: FeatureLayout, *, sparse: bool) -> CTRModel:
    return PNN(layout, config, sparse=sparse)
