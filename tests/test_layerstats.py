"""layerstats.activation_stat_matrix (stacked per-shape reductions) against a float64 numpy
computation of each layer on its own: mean, population std, dead-unit and saturated fractions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from techbench.engine.layerstats import activation_stat_matrix, activation_stats

RELU = {"dead_below": 0.0, "saturation": None}
TANH = {"dead_below": None, "saturation": (-0.99, 0.99)}
SIGMOID = {"dead_below": None, "saturation": (0.01, 0.99)}
ELU = {"dead_below": None, "saturation": (-0.99, math.inf)}
BOTH = {"dead_below": 0.0, "saturation": (0.01, 0.99)}


def _expected(y: torch.Tensor, props: dict) -> list[float]:
    a = y.detach().double().numpy()
    units = (
        a.reshape(a.shape[0], -1) if a.ndim <= 2 else np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])
    )
    dead = math.nan
    if props["dead_below"] is not None:
        dead = float(np.mean(np.all(units <= props["dead_below"], axis=0)))
    sat = math.nan
    if props["saturation"] is not None:
        lo, hi = props["saturation"]
        sat = float(np.mean((a <= lo) | (a >= hi)))
    return [float(a.mean()), float(a.std()), dead, sat]


def _outputs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = [torch.randn(64, 16, generator=g) * (1 + i) for i in range(3)]  # one shape: stacked
    dense[1][:, :5] = -1.0  # five dead units
    other = torch.randn(64, 8, generator=g)
    conv = torch.randn(4, 3, 5, 5, generator=g)
    conv[:, 0] = -2.0  # a dead channel
    return [dense[0], other, dense[1], conv, dense[2]]


@pytest.mark.parametrize("props", [RELU, TANH, SIGMOID, ELU, BOTH], ids=str)
def test_matrix_rows_match_each_layer_in_float64(props: dict) -> None:
    ys = [torch.tanh(y) if props is not RELU else torch.relu(y) for y in _outputs()]
    matrix, order = activation_stat_matrix(ys, props)
    assert sorted(order) == list(range(len(ys))) and matrix.shape == (len(ys), 4)
    for row, index in enumerate(order):
        np.testing.assert_allclose(
            matrix[row].tolist(), _expected(ys[index], props), rtol=2e-6, atol=1e-7
        )
    if props is RELU:
        dead = {index: matrix[row, 2].item() for row, index in enumerate(order)}
        assert dead[2] == pytest.approx(5 / 16) and dead[3] == pytest.approx(1 / 3)


def test_one_layer_helper_equals_the_matrix_row() -> None:
    y = torch.relu(_outputs()[3])
    torch.testing.assert_close(
        activation_stats(y, RELU), activation_stat_matrix([y], RELU)[0][0], equal_nan=True
    )


def test_saturation_counts_boundaries_infinities_but_not_nan() -> None:
    y = torch.tensor([[-0.99, 0.99, 0.5, -math.inf], [math.inf, math.nan, 0.98, -0.995]])
    for props in (TANH, SIGMOID, ELU):
        got = activation_stat_matrix([y], props)[0][0, 3].item()
        lo, hi = props["saturation"]
        a = y.double().numpy()
        assert got == pytest.approx(float(np.mean((a <= lo) | (a >= hi))))


def test_low_precision_outputs_are_reduced_in_float32() -> None:
    y = torch.relu(_outputs()[0]).to(torch.bfloat16)
    matrix, _ = activation_stat_matrix([y, y], RELU)
    assert matrix.dtype == torch.float32
    np.testing.assert_allclose(matrix[0].tolist(), _expected(y.float(), RELU), rtol=1e-5)


def test_no_outputs() -> None:
    matrix, order = activation_stat_matrix([], RELU)
    assert matrix.shape == (0, 4) and order == []
