import doctest
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as functional
from torch import nn

from likely.models import layers
from likely.models.layers import (
    MLP,
    CrossNetworkV2,
    FactorizationMachine,
    InnerProduct,
    OuterProduct,
    ResidualBlock,
    SumPooledOuterProduct,
)

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": functional.gelu,
    "silu": functional.silu,
    "tanh": torch.tanh,
}


def num_pairs(num_fields: int) -> int:
    return num_fields * (num_fields - 1) // 2


def pairs(num_fields: int) -> list[tuple[int, int]]:
    """Pairs i < j in the documented row-major order, written out by hand."""
    return [(i, j) for i in range(num_fields) for j in range(i + 1, num_fields)]


@dataclass(frozen=True)
class Case:
    """One layer configuration, built for F fields of dim D."""

    build: Callable[[int, int], nn.Module]
    flat_input: bool  # takes (B, F*D) rather than (B, F, D)
    output_shape: Callable[[int, int, int], tuple[int, ...]]  # from (B, F, D)


CASES = {
    "fm": Case(lambda f, d: FactorizationMachine(), False, lambda b, f, d: (b,)),
    "inner_product": Case(
        lambda f, d: InnerProduct(f), False, lambda b, f, d: (b, num_pairs(f))
    ),
    "outer_matrix": Case(
        lambda f, d: OuterProduct(f, d, "matrix"),
        False,
        lambda b, f, d: (b, num_pairs(f)),
    ),
    "outer_vector_projected": Case(
        lambda f, d: OuterProduct(f, d, "vector", output_dim=5),
        False,
        lambda b, f, d: (b, 5),
    ),
    "outer_number": Case(
        lambda f, d: OuterProduct(f, d, "number"),
        False,
        lambda b, f, d: (b, num_pairs(f)),
    ),
    "sum_pooled": Case(
        lambda f, d: SumPooledOuterProduct(d, 5), False, lambda b, f, d: (b, 5)
    ),
    "mlp": Case(
        lambda f, d: MLP(f * d, [16, 8], batch_norm=True, dropout=0.1),
        True,
        lambda b, f, d: (b, 8),
    ),
    "mlp_tanh": Case(
        lambda f, d: MLP(f * d, [6], activation="tanh"), True, lambda b, f, d: (b, 6)
    ),
    "residual": Case(
        lambda f, d: ResidualBlock(f * d, 16, dropout=0.1),
        True,
        lambda b, f, d: (b, f * d),
    ),
    "residual_projection": Case(
        lambda f, d: ResidualBlock(f * d, 16, 6, activation="gelu", batch_norm=False),
        True,
        lambda b, f, d: (b, 6),
    ),
    "cross": Case(
        lambda f, d: CrossNetworkV2(f * d, 2), True, lambda b, f, d: (b, f * d)
    ),
    "cross_low_rank": Case(
        lambda f, d: CrossNetworkV2(f * d, 2, low_rank=3),
        True,
        lambda b, f, d: (b, f * d),
    ),
}
case_names = pytest.mark.parametrize("name", list(CASES))


def make_input(
    case: Case, b: int, f: int, d: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    embeddings = torch.randn(b, f, d, dtype=dtype)  # (B, F, D)
    return embeddings.flatten(start_dim=1) if case.flat_input else embeddings


# Known answers ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 2, 1), (4, 3, 8), (3, 9, 4)])
def test_fm_equals_brute_force_sum_over_pairs(shape):
    torch.manual_seed(0)
    embeddings = torch.randn(*shape, dtype=torch.float64)
    expected = torch.zeros(shape[0], dtype=torch.float64)
    for i, j in pairs(shape[1]):
        expected += (embeddings[:, i] * embeddings[:, j]).sum(dim=1)

    actual = FactorizationMachine()(embeddings)

    assert actual.shape == (shape[0],)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_inner_product_pair_order_is_row_major():
    layer = InnerProduct(4)
    assert layer.left_index.tolist() == [0, 0, 0, 1, 1, 2]
    assert layer.right_index.tolist() == [1, 2, 3, 2, 3, 3]
    assert layer.output_dim == 6
    # Field f holds the constant f + 1, so the pair (i, j) gives D (i+1) (j+1).
    embeddings = torch.arange(1.0, 5.0).view(1, 4, 1).expand(2, 4, 3)  # (B, F, D)
    expected = torch.tensor([2.0, 3.0, 4.0, 6.0, 8.0, 12.0]) * 3
    torch.testing.assert_close(layer(embeddings), expected.expand(2, 6))


@pytest.mark.parametrize("num_fields", [2, 3, 6])
def test_inner_product_equals_loop_over_pairs(num_fields):
    torch.manual_seed(0)
    embeddings = torch.randn(4, num_fields, 5, dtype=torch.float64)
    expected = torch.stack(
        [
            (embeddings[:, i] * embeddings[:, j]).sum(dim=1)
            for i, j in pairs(num_fields)
        ],
        dim=1,
    )
    torch.testing.assert_close(InnerProduct(num_fields)(embeddings), expected)


def kernel_matrix(layer: OuterProduct, pair: int) -> torch.Tensor:
    """The D x D kernel W_ij of one pair, written out from the layer's weights."""
    weight = layer.kernel_weight[pair]
    dim = layer.embedding_dim
    if layer.kernel == "matrix":
        return weight
    if layer.kernel == "vector":
        return torch.diag(weight)
    return weight * torch.eye(dim, dtype=weight.dtype)


@pytest.mark.parametrize("kernel", ["matrix", "vector", "number"])
@pytest.mark.parametrize("output_dim", [None, 3])
def test_outer_product_equals_loop_over_pairs(kernel, output_dim):
    torch.manual_seed(0)
    layer = OuterProduct(4, 5, kernel, output_dim=output_dim).double()
    embeddings = torch.randn(3, 4, 5, dtype=torch.float64)
    expected = torch.zeros(3, 6, dtype=torch.float64)
    with torch.no_grad():
        for pair, (i, j) in enumerate(pairs(4)):
            kernel_ij = kernel_matrix(layer, pair)
            for row in range(3):
                expected[row, pair] = (
                    embeddings[row, i] @ kernel_ij @ embeddings[row, j]
                )
        if output_dim is not None:
            expected = expected @ layer.projection.weight.T

        actual = layer(embeddings)

    assert actual.shape == (3, output_dim or 6)
    assert layer.output_dim == (output_dim or 6)
    torch.testing.assert_close(actual, expected)


def test_outer_product_kernel_shapes():
    assert OuterProduct(4, 5, "matrix").kernel_weight.shape == (6, 5, 5)
    assert OuterProduct(4, 5, "vector").kernel_weight.shape == (6, 5)
    assert OuterProduct(4, 5, "number").kernel_weight.shape == (6, 1)


def test_sum_pooled_outer_product_equals_sum_of_all_outer_products():
    torch.manual_seed(0)
    layer = SumPooledOuterProduct(4, 3).double()
    embeddings = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for row in range(2):
            # sum_f e_f (sum_f e_f)^T is the sum over all ordered pairs, i == j too.
            outer = sum(
                torch.outer(embeddings[row, i], embeddings[row, j])
                for i in range(5)
                for j in range(5)
            )
            expected[row] = layer.projection.weight @ outer.flatten()

        actual = layer(embeddings)

    assert layer.projection.bias is None
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_equals_layer_by_layer_computation(batch_norm):
    torch.manual_seed(0)
    mlp = MLP(5, [4, 3], activation="tanh", batch_norm=batch_norm).double().eval()
    inputs = torch.randn(6, 5, dtype=torch.float64)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in mlp.modules() if isinstance(m, nn.BatchNorm1d)]
    # Running stats away from (0, 1) make the order Linear -> BN -> tanh show.
    for norm in norms:
        norm.running_mean.fill_(0.3)
        norm.running_var.fill_(2.0)
    expected = inputs
    with torch.no_grad():
        for linear in linears:
            expected = expected @ linear.weight.T + linear.bias  # (B, H)
            if batch_norm:
                expected = (expected - 0.3) / math.sqrt(2.0 + 1e-5)
            expected = torch.tanh(expected)

        actual = mlp(inputs)

    assert len(linears) == 2 and len(norms) == (2 if batch_norm else 0)
    assert mlp.output_dim == 3
    torch.testing.assert_close(actual, expected)


def test_mlp_modules_follow_the_switches():
    plain = MLP(8, [4, 2])
    full = MLP(8, [4, 2], batch_norm=True, dropout=0.5)
    assert [type(m) for m in plain.layers] == [nn.Linear, nn.ReLU] * 2
    assert [type(m) for m in full.layers] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Dropout,
    ] * 2


def zero_branch(block: ResidualBlock) -> None:
    with torch.no_grad():
        for linear in (block.linear1, block.linear2):
            linear.weight.zero_()
            linear.bias.zero_()


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh"])
def test_residual_block_with_zeroed_branch_is_activation_of_input(activation):
    torch.manual_seed(0)
    block = ResidualBlock(6, 4, activation=activation, batch_norm=False).double()
    zero_branch(block)
    inputs = torch.randn(5, 6, dtype=torch.float64)

    expected = ACTIVATIONS[activation](inputs)

    torch.testing.assert_close(block(inputs), expected)
    assert isinstance(block.skip, nn.Identity)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in block.modules())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_residual_block_batch_norm_comes_after_the_addition(activation):
    torch.manual_seed(0)
    block = ResidualBlock(6, 4, activation=activation, batch_norm=True)
    block = block.double().eval()
    zero_branch(block)
    inputs = torch.randn(5, 6, dtype=torch.float64)
    act = ACTIVATIONS[activation]

    # Fresh running stats (mean 0, var 1): the identity before BN is scaled.
    fresh = act(inputs / math.sqrt(1 + block.norm.eps))
    torch.testing.assert_close(block(inputs), fresh)

    # Moved stats tell BN-then-activation from activation-then-BN for ReLU too.
    block.norm.running_mean.fill_(0.5)
    block.norm.running_var.fill_(4.0)
    moved = act((inputs - 0.5) / math.sqrt(4 + block.norm.eps))
    torch.testing.assert_close(block(inputs), moved)


def test_residual_block_batch_norm_switch_changes_training_output():
    torch.manual_seed(0)
    with_norm = ResidualBlock(6, 4, batch_norm=True)
    torch.manual_seed(0)
    without_norm = ResidualBlock(6, 4, batch_norm=False)
    inputs = torch.randn(8, 6) * 3 + 2

    assert sum(isinstance(m, nn.BatchNorm1d) for m in with_norm.modules()) == 1
    assert not torch.allclose(with_norm(inputs), without_norm(inputs))
    # Batch statistics make every feature zero-mean before the last ReLU.
    before_activation = with_norm.norm(
        with_norm.linear2(torch.relu(with_norm.linear1(inputs))) + inputs
    )
    torch.testing.assert_close(
        before_activation.mean(dim=0), torch.zeros(6), atol=1e-6, rtol=0
    )


def test_residual_block_projection_skip():
    torch.manual_seed(0)
    block = ResidualBlock(6, 4, 3, batch_norm=False).double()
    zero_branch(block)
    inputs = torch.randn(5, 6, dtype=torch.float64)

    outputs = block(inputs)

    assert block.output_dim == 3 and outputs.shape == (5, 3)
    assert isinstance(block.skip, nn.Linear) and block.skip.bias is None
    assert block.skip.weight.shape == (3, 6)
    with torch.no_grad():
        torch.testing.assert_close(outputs, torch.relu(inputs @ block.skip.weight.T))


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_network_with_zeroed_weights_returns_input(low_rank):
    torch.manual_seed(0)
    cross = CrossNetworkV2(5, 3, low_rank=low_rank).double()
    with torch.no_grad():
        for parameter in cross.parameters():
            parameter.zero_()
    inputs = torch.randn(4, 5, dtype=torch.float64)

    assert torch.equal(cross(inputs), inputs)


def cross_weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W_l (H, H) and b_l (H,) of a full-rank or low-rank cross layer."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    down, up = layer
    return up.weight @ down.weight, up.bias  # U V^T: (H, r) (r, H)


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_network_matches_formula_by_hand(low_rank):
    torch.manual_seed(0)
    cross = CrossNetworkV2(5, 2, low_rank=low_rank).double()
    x0 = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        w0, b0 = cross_weight_and_bias(cross.layers[0])
        w1, b1 = cross_weight_and_bias(cross.layers[1])
        x1 = x0 * (x0 @ w0.T + b0) + x0
        x2 = x0 * (x1 @ w1.T + b1) + x1  # x_0, not x_1, multiplies every layer

        actual = cross(x0)

    if low_rank is not None:
        assert cross.layers[0][0].weight.shape == (2, 5)
    torch.testing.assert_close(actual, x2)


# Shapes, gradients, seeds ----------------------------------------------------


@case_names
@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 4, 8), (8, 7, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_and_dtype(name, shape, dtype):
    case = CASES[name]
    torch.manual_seed(0)
    layer = case.build(shape[1], shape[2]).to(dtype).eval()
    inputs = make_input(case, *shape, dtype=dtype)

    outputs = layer(inputs)

    assert outputs.shape == case.output_shape(*shape)
    assert outputs.dtype == dtype
    assert torch.isfinite(outputs).all()
    if name != "fm":
        assert layer.output_dim == outputs.shape[-1]


@case_names
def test_gradients_reach_every_parameter_and_the_input(name):
    case = CASES[name]
    torch.manual_seed(0)
    layer = case.build(4, 3).train()
    inputs = make_input(case, 8, 4, 3).requires_grad_()

    layer(inputs).sum().backward()

    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    for parameter_name, parameter in layer.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


@case_names
def test_same_seed_gives_same_layer_and_output(name):
    case = CASES[name]
    inputs = make_input(case, 4, 3, 5)
    built = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        built.append(case.build(3, 5).eval())
    first, again, other = built

    assert torch.equal(first(inputs), again(inputs))
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    if list(first.parameters()):
        assert not torch.equal(first(inputs), other(inputs))


def test_pair_indices_are_not_saved():
    assert InnerProduct(4).state_dict() == {}
    assert set(OuterProduct(4, 3, "vector").state_dict()) == {"kernel_weight"}


# Bad arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: OuterProduct(3, 4, "cube"), "'cube'; choose one of: matrix, vector"),
        (lambda: InnerProduct(1), "num_fields must be an integer >= 2, got 1"),
        (lambda: OuterProduct(1, 4, "vector"), "num_fields must be an integer >= 2"),
        (lambda: OuterProduct(3, 0, "matrix"), "embedding_dim must be an integer >= 1"),
        (lambda: OuterProduct(3, 4, "number", output_dim=0), "output_dim .* got 0"),
        (lambda: SumPooledOuterProduct(0, 4), "embedding_dim .* got 0"),
        (lambda: SumPooledOuterProduct(4, -2), "output_dim .* got -2"),
        (lambda: MLP(8, []), "hidden_dims must name at least one layer"),
        (lambda: MLP(8, [4, 0]), r"hidden_dims\[1\] must be an integer >= 1, got 0"),
        (lambda: MLP(0, [4]), "input_dim .* got 0"),
        (lambda: MLP(8, [4], dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: MLP(8, [4], dropout=-0.1), "dropout .* got -0.1"),
        (lambda: MLP(8, [4], activation="swish"), "'swish'; choose one of: relu"),
        (lambda: ResidualBlock(8, 0), "hidden_dim .* got 0"),
        (lambda: ResidualBlock(8, 4, 0), "output_dim .* got 0"),
        (lambda: ResidualBlock(8, 4, dropout=1.5), "dropout .* got 1.5"),
        (lambda: ResidualBlock(8, 4, activation="elu"), "'elu'; choose one of"),
        (lambda: CrossNetworkV2(0), "input_dim .* got 0"),
        (lambda: CrossNetworkV2(8, 0), "num_layers must be an integer >= 1, got 0"),
        (lambda: CrossNetworkV2(8, low_rank=0), "low_rank must be .* >= 1, got 0"),
        (lambda: CrossNetworkV2(8, 2.5), "num_layers .* got 2.5"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "layer", [InnerProduct(3), OuterProduct(3, 5, "matrix")], ids=type
)
def test_wrong_number_of_fields_raises(layer):
    with pytest.raises(ValueError, match="expected 3 fields, got shape"):
        layer(torch.randn(2, 4, 5))


# Export ----------------------------------------------------------------------


@case_names
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_jit_script_matches_eager(name):
    case = CASES[name]
    torch.manual_seed(0)
    layer = case.build(4, 3).eval()
    inputs = make_input(case, 5, 4, 3)

    scripted = torch.jit.script(layer)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)

    expected = layer(inputs)
    torch.testing.assert_close(scripted(inputs), expected)
    torch.testing.assert_close(loaded(inputs), expected)
    if name != "fm":
        assert scripted.output_dim == layer.output_dim


@case_names
def test_torch_export_with_dynamic_batch_matches_eager(name):
    case = CASES[name]
    torch.manual_seed(0)
    layer = case.build(4, 3).eval()
    batch = torch.export.Dim("batch")

    program = torch.export.export(
        layer, (make_input(case, 5, 4, 3),), dynamic_shapes=({0: batch},)
    )

    for batch_size in (1, 2, 7):
        inputs = make_input(case, batch_size, 4, 3)
        torch.testing.assert_close(program.module()(inputs), layer(inputs))


def test_docstring_examples_run():
    results = doctest.testmod(layers)
    assert results.attempted > 0 and results.failed == 0
