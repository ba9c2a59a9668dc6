"""Interaction layers of the model zoo: plain tensor modules, tensors in and out.

Models are thin compositions of these layers (embedding, interaction, tower,
head). Each layer's forward has a fixed structure, no Python branch on tensor
values and no per-call Python lists, so that whole models export with
`torch.export.export` or `torch.jit.script` for serving.

Shapes use one glossary for the whole models package:

- `B`: batch size.
- `F`: sparse fields (`num_fields`).
- `D`: embedding dim (`embedding_dim`).
- `P`: field pairs, `F * (F - 1) / 2`, ordered i < j row-major:
  (0, 1), (0, 2), ..., (0, F-1), (1, 2), ..., (F-2, F-1).
- `H`: hidden width of a dense layer; `H_in`, `H_out` tell widths apart.

Every layer but `FactorizationMachine` has an `output_dim` int attribute, the
width of its output's last dim. It is a plain attribute, not a property, because
a scripted module hands back a property as a bare `property` object.

Example:
    >>> import torch
    >>> from likely.models.layers import InnerProduct
    >>> embeddings = torch.ones(2, 3, 4)  # (B, F, D)
    >>> InnerProduct(num_fields=3)(embeddings)  # (B, P)
    tensor([[4., 4., 4.],
            [4., 4., 4.]])
"""

# No `from __future__ import annotations`: TorchScript needs the class-level
# buffer annotations as real types, not strings.
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "MLP",
    "CrossNetworkV2",
    "FactorizationMachine",
    "InnerProduct",
    "OuterProduct",
    "ResidualBlock",
    "SumPooledOuterProduct",
]

Activation = Literal["relu", "gelu", "silu", "tanh"]
Kernel = Literal["matrix", "vector", "number"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
_KERNELS = ("matrix", "vector", "number")


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise unless `value` is an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _make_activation(activation: str) -> nn.Module:
    if activation not in _ACTIVATIONS:
        choices = ", ".join(_ACTIVATIONS)
        raise ValueError(f"unknown activation {activation!r}; choose one of: {choices}")
    return _ACTIVATIONS[activation]()


def _init_linear(linear: nn.Linear, activation: str | None) -> None:
    """Kaiming for a layer that feeds a rectifier, Xavier otherwise; zero bias."""
    if activation in ("relu", "gelu", "silu"):
        # torch.nn.init has no gain for GELU or SiLU; both pass the positive half
        # like ReLU, which is the half that carries the signal.
        nn.init.kaiming_uniform_(linear.weight, nonlinearity="relu")
    else:
        gain = nn.init.calculate_gain("tanh") if activation == "tanh" else 1.0
        nn.init.xavier_uniform_(linear.weight, gain=gain)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _pair_indices(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right field of each pair i < j, row-major: two `(P,)` int64."""
    pairs = torch.triu_indices(num_fields, num_fields, offset=1)  # (2, P)
    return pairs[0].clone(), pairs[1].clone()


class FactorizationMachine(nn.Module):
    """Second-order FM term, sum over pairs i < j of <v_i, v_j>, in O(F * D).

    Uses the square-of-sum identity of Rendle, "Factorization Machines" (ICDM
    2010): sum_{i<j} <v_i, v_j> = 0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2).
    The embeddings are expected to carry the feature values already (v_f x_f).

    Shape:
        - Input: `(B, F, D)`.
        - Output: `(B,)`, a logit term with no bias and no first-order part.
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        square_of_sum = embeddings.sum(dim=1).pow(2)  # (B, D)
        sum_of_squares = embeddings.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)  # (B,)


class InnerProduct(nn.Module):
    """Inner products of every pair of field embeddings, i < j in row-major order.

    The pair indices are precomputed once as buffers, so the forward is two
    gathers and a product with no loop over pairs. They are not persistent: a
    state dict holds no index tensors, and they are rebuilt from `num_fields`.

    Args:
        num_fields: F, at least 2.

    Shape:
        - Input: `(B, F, D)`.
        - Output: `(B, P)`, column k for the k-th pair (0, 1), (0, 2), ...

    Raises:
        ValueError: in forward, when the input has other than F fields.
    """

    left_index: torch.Tensor
    right_index: torch.Tensor

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        _check_int("num_fields", num_fields, 2)
        self.num_fields = num_fields
        left_index, right_index = _pair_indices(num_fields)
        self.register_buffer("left_index", left_index, persistent=False)
        self.register_buffer("right_index", right_index, persistent=False)
        self.output_dim = left_index.numel()  # P

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # A check on a static dim, not on values: export sees F as a constant, and
        # without it extra fields would be dropped silently.
        if embeddings.size(1) != self.num_fields:
            raise ValueError(
                f"expected {self.num_fields} fields, got shape {embeddings.shape}"
            )
        left = embeddings.index_select(1, self.left_index)  # (B, P, D)
        right = embeddings.index_select(1, self.right_index)  # (B, P, D)
        return (left * right).sum(dim=2)  # (B, P)


class OuterProduct(nn.Module):
    """Kernel product of each field pair, p_ij = e_i^T W_ij e_j, one kernel a pair.

    The product layer of PNN (Qu et al., "Product-based Neural Networks for User
    Response Prediction", ICDM 2016) with the kernel types of its journal version
    (Qu et al., "Product-Based Neural Networks for User Response Prediction over
    Multi-Field Categorical Data", TOIS 2018):

    - `matrix`: W_ij is a full D x D matrix; costs O(P * D^2).
    - `vector`: W_ij = diag(w_ij), D values; a weighted inner product.
    - `number`: W_ij = w_ij * I, one scalar; a scaled inner product.

    e_i^T W_ij e_j is the sum of the outer product e_i e_j^T weighted elementwise
    by W_ij, which is what makes this PNN's outer product layer.

    Kernels start uniform in +-1/sqrt(D), the bound `nn.Linear` uses for a
    fan-in of D, since each kernel maps one D-wide embedding.

    Args:
        num_fields: F, at least 2.
        embedding_dim: D, at least 1.
        kernel: one of `matrix`, `vector`, `number`.
        output_dim: when set, the P products go through a bias-free linear map to
            this width (the W_p of PNN's product layer; the next layer's bias
            serves); when None the `(B, P)` products are returned as they are.

    Shape:
        - Input: `(B, F, D)`.
        - Output: `(B, P)`, or `(B, output_dim)` when `output_dim` is set.

    Raises:
        ValueError: in forward, when the input has other than F fields.
    """

    left_index: torch.Tensor
    right_index: torch.Tensor

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        kernel: Kernel,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("num_fields", num_fields, 2)
        _check_int("embedding_dim", embedding_dim, 1)
        if kernel not in _KERNELS:
            choices = ", ".join(_KERNELS)
            raise ValueError(f"unknown kernel {kernel!r}; choose one of: {choices}")
        if output_dim is not None:
            _check_int("output_dim", output_dim, 1)
        self.num_fields = num_fields
        self.embedding_dim = embedding_dim
        self.kernel = kernel
        left_index, right_index = _pair_indices(num_fields)
        self.register_buffer("left_index", left_index, persistent=False)
        self.register_buffer("right_index", right_index, persistent=False)

        num_pairs = left_index.numel()
        if kernel == "matrix":
            shape = (num_pairs, embedding_dim, embedding_dim)  # (P, D, D)
        elif kernel == "vector":
            shape = (num_pairs, embedding_dim)  # (P, D)
        else:
            shape = (num_pairs, 1)  # (P, 1), broadcasts over D like a vector
        self.kernel_weight = nn.Parameter(torch.empty(shape))
        bound = 1.0 / math.sqrt(embedding_dim)
        nn.init.uniform_(self.kernel_weight, -bound, bound)

        self.projection: nn.Module = nn.Identity()
        self.output_dim = num_pairs
        if output_dim is not None:
            projection = nn.Linear(num_pairs, output_dim, bias=False)
            _init_linear(projection, None)
            self.projection = projection
            self.output_dim = output_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # A check on a static dim, not on values: export sees F as a constant, and
        # without it extra fields would be dropped silently.
        if embeddings.size(1) != self.num_fields:
            raise ValueError(
                f"expected {self.num_fields} fields, got shape {embeddings.shape}"
            )
        left = embeddings.index_select(1, self.left_index)  # (B, P, D)
        right = embeddings.index_select(1, self.right_index)  # (B, P, D)
        if self.kernel == "matrix":
            # e_i^T W_ij for every pair at once: (B, P, D) x (P, D, D) -> (B, P, D)
            left = torch.einsum("bpd,pde->bpe", left, self.kernel_weight)
        else:
            left = left * self.kernel_weight  # (B, P, D)
        products = (left * right).sum(dim=2)  # (B, P)
        return self.projection(products)  # (B, P) or (B, output_dim)


class SumPooledOuterProduct(nn.Module):
    """PNN's sum-pooled outer product, then a learned linear map to `output_dim`.

    Qu et al. 2016 (PNN) cut the cost of the outer product layer by sharing one
    weight across pairs, so that the pairs' outer products pool into one:
    sum_{i,j} e_i e_j^T = f_sum f_sum^T with f_sum = sum_f e_f (all ordered
    pairs, i == j included). The `(D, D)` matrix is flattened to D * D values and
    mapped to `output_dim` by a bias-free linear layer (PNN's W_p; the next
    layer's bias serves). This costs O(F * D + D^2) a row before the map, where
    the per-pair kernels of `OuterProduct` cost O(P * D^2).

    Args:
        embedding_dim: D, at least 1.
        output_dim: width of the output, at least 1.

    Shape:
        - Input: `(B, F, D)`.
        - Output: `(B, output_dim)`.
    """

    def __init__(self, embedding_dim: int, output_dim: int) -> None:
        super().__init__()
        _check_int("embedding_dim", embedding_dim, 1)
        _check_int("output_dim", output_dim, 1)
        self.embedding_dim = embedding_dim
        self.output_dim = output_dim
        self.projection = nn.Linear(
            embedding_dim * embedding_dim, output_dim, bias=False
        )
        _init_linear(self.projection, None)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        pooled = embeddings.sum(dim=1)  # (B, D)
        outer = pooled.unsqueeze(2) * pooled.unsqueeze(1)  # (B, D, D)
        return self.projection(outer.flatten(start_dim=1))  # (B, D*D) -> (B, out)


class MLP(nn.Module):
    """A tower of Linear -> BatchNorm1d (optional) -> activation -> Dropout.

    Every hidden layer, the last included, ends in the activation: the tower
    yields features, and the model's head turns them into logits.

    Args:
        input_dim: H_in, at least 1.
        hidden_dims: widths of the layers in order, at least one, each >= 1.
        activation: one of `relu`, `gelu`, `silu`, `tanh`.
        dropout: drop probability after each activation, in [0, 1); 0 adds no
            dropout module.
        batch_norm: whether each Linear is followed by BatchNorm1d.

    Shape:
        - Input: `(B, H_in)`.
        - Output: `(B, H_last)`, H_last = `hidden_dims[-1]` = `output_dim`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        *,
        activation: Activation = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_int("input_dim", input_dim, 1)
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("hidden_dims must name at least one layer, got []")
        for index, width in enumerate(hidden_dims):
            _check_int(f"hidden_dims[{index}]", width, 1)
        _check_dropout(dropout)
        _make_activation(activation)  # validates before any layer is built

        modules: list[nn.Module] = []
        width_in = input_dim
        for width in hidden_dims:
            linear = nn.Linear(width_in, width)
            _init_linear(linear, activation)
            modules.append(linear)
            if batch_norm:
                modules.append(nn.BatchNorm1d(width))
            modules.append(_make_activation(activation))
            if dropout > 0.0:
                modules.append(nn.Dropout(dropout))
            width_in = width
        self.layers = nn.Sequential(*modules)
        self.output_dim = width_in

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)  # (B, H_in) -> (B, H_last)


class ResidualBlock(nn.Module):
    """Residual block of the Wide-ResNet tower: act(BN(f(x) + skip(x))).

    f(x) = act(x W1 + b1) W2 + b2, and skip is the identity when the widths
    match, else a bias-free linear projection, as in He et al., "Deep Residual
    Learning for Image Recognition" (CVPR 2016). BatchNorm1d sits after the
    addition and before the last activation; `batch_norm=False` removes it
    entirely, so blocks with and without it can be compared.

    Args:
        input_dim: H_in, at least 1.
        hidden_dim: width inside the residual branch, at least 1.
        output_dim: H_out, at least 1; None keeps H_in (identity skip).
        activation: one of `relu`, `gelu`, `silu`, `tanh`, used inside the
            branch and after the addition.
        dropout: drop probability on the branch's hidden activations, in [0, 1).
        batch_norm: whether BatchNorm1d follows the addition.

    Shape:
        - Input: `(B, H_in)`.
        - Output: `(B, H_out)`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int | None = None,
        *,
        activation: Activation = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _check_int("input_dim", input_dim, 1)
        _check_int("hidden_dim", hidden_dim, 1)
        if output_dim is None:
            output_dim = input_dim
        _check_int("output_dim", output_dim, 1)
        _check_dropout(dropout)

        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.inner_activation = _make_activation(activation)
        self.dropout: nn.Module = (
            nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        )
        self.linear2 = nn.Linear(hidden_dim, output_dim)
        self.skip: nn.Module = nn.Identity()
        if output_dim != input_dim:
            skip = nn.Linear(input_dim, output_dim, bias=False)
            _init_linear(skip, None)
            self.skip = skip
        self.norm: nn.Module = (
            nn.BatchNorm1d(output_dim) if batch_norm else nn.Identity()
        )
        self.outer_activation = _make_activation(activation)
        _init_linear(self.linear1, activation)
        _init_linear(self.linear2, None)
        self.output_dim = output_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.inner_activation(self.linear1(inputs)))  # (B, H)
        outputs = self.linear2(hidden) + self.skip(inputs)  # (B, H_out)
        return self.outer_activation(self.norm(outputs))  # (B, H_out)


class CrossNetworkV2(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, elementwise.

    From Wang et al., "DCN V2: Improved Deep & Cross Network and Practical
    Lessons for Web-scale Learning to Rank Systems" (WWW 2021). W_l is a full
    H x H matrix, or U_l V_l^T of rank `low_rank` (the paper's cheaper form,
    O(H * r) a layer instead of O(H^2)). Weights start Xavier-uniform, biases 0.

    Args:
        input_dim: H, at least 1.
        num_layers: number of cross layers, at least 1.
        low_rank: r; None for full-rank W, else at least 1.

    Shape:
        - Input: `(B, H)`, usually embeddings flattened with dense features.
        - Output: `(B, H)`.
    """

    def __init__(
        self, input_dim: int, num_layers: int = 3, *, low_rank: int | None = None
    ) -> None:
        super().__init__()
        _check_int("input_dim", input_dim, 1)
        _check_int("num_layers", num_layers, 1)
        if low_rank is not None:
            _check_int("low_rank", low_rank, 1)
        self.input_dim = input_dim
        self.output_dim = input_dim
        self.low_rank = low_rank

        layers: list[nn.Module] = []
        for _ in range(num_layers):
            if low_rank is None:
                layer: nn.Module = nn.Linear(input_dim, input_dim)  # W_l, b_l
                _init_linear(layer, None)
            else:
                down = nn.Linear(input_dim, low_rank, bias=False)  # V_l^T
                up = nn.Linear(low_rank, input_dim)  # U_l, b_l
                _init_linear(down, None)
                _init_linear(up, None)
                layer = nn.Sequential(down, up)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = inputs  # (B, H)
        for layer in self.layers:
            outputs = inputs * layer(outputs) + outputs  # (B, H)
        return outputs
