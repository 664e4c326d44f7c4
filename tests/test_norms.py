"""Other norms (issue 17): dual-norm alignment α_p, ρ̃_p and T4_p against closed forms and the
Lp attacks (docs/theory.md, "Other norms")."""

from __future__ import annotations

import math

import pytest
import torch

import salign
from _attacks_helpers import exact_linear_rho, near_tie_linear_problem
from salign.errors import InputError

NORMS = [1.0, 2.0, math.inf]


@pytest.mark.parametrize("p", NORMS)
def test_bias_free_linear_alignment_equals_rho_in_every_norm(p: float) -> None:
    """T2_p: α_p,bin = ρ̃_p = ρ_p = min_j |f_j| / ‖w_j‖_q (closed form, every minimiser inside
    the box) to 1e-6 in float64, and the ensemble in that norm agrees within 0.1%."""
    model, x, w = near_tie_linear_problem(seed=1, dtype=torch.float64)
    rho = exact_linear_rho(w, x, p)
    a = salign.analyze(model, x, norm=p)
    assert a.norm == p
    torch.testing.assert_close(a.alignment_binarized, rho, rtol=1e-6, atol=0)
    torch.testing.assert_close(a.linearized_robustness, rho, rtol=1e-6, atol=0)
    torch.testing.assert_close(salign.alignment(model, x, norm=p), rho, rtol=1e-6, atol=0)
    torch.testing.assert_close(salign.linearized_robustness(model, x, norm=p), rho, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        salign.quantities.nearest_rival(model, x, norm=p).distance, rho, rtol=1e-6, atol=0
    )
    attacked = salign.robustness(model, x, norm=p, quiet=True).distance
    assert float((attacked / rho - 1).abs().max()) < 1e-3


def test_the_nearest_rival_depends_on_the_norm() -> None:
    """Ψ0 = 0, Ψ1 = −x₁, Ψ2 = −(x₁ + x₂)/2 at x = (0.3, 0.2): the boundary with class 1 is at
    distance x₁ = 0.3 in every norm, the one with class 2 at (x₁ + x₂)/‖(1, 1)‖_q: 0.354 in L2,
    0.25 in L∞, 0.5 in L1. So j* is 1 in L2 and L1 but 2 in L∞, with those distances."""
    model = torch.nn.Linear(2, 3, bias=False).double()
    model.weight.data = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [-0.5, -0.5]], dtype=torch.float64)
    x = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    expected = {2.0: (1, 0.3), math.inf: (2, 0.25), 1.0: (1, 0.3)}
    for p, (rival, distance) in expected.items():
        res = salign.quantities.nearest_rival(model, x, norm=p)
        assert int(res.rival) == rival, p
        assert float(res.distance) == pytest.approx(distance, rel=1e-12), p
        assert float(salign.alignment(model, x, norm=p)) == pytest.approx(distance, rel=1e-12), p


@pytest.mark.parametrize("p", [1.0, math.inf])
def test_t4_bound_holds_in_every_norm(p: float) -> None:
    """T4_p: |α_p,bin − ρ̃_p| ≤ |β| / ‖g‖_q on every sample of ReLU nets with biases; equality
    α = ρ̃ for a bias-free one."""
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8, dtype=torch.float64)
    biased = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[32, 32], num_classes=5).double()
    a = salign.analyze(biased, x, norm=p)
    torch.testing.assert_close(salign.effective_bias(biased, x, norm=p), a.effective_bias)
    torch.testing.assert_close(salign.linearized_robustness(biased, x, norm=p), a.linearized_robustness)
    excess = (a.alignment_binarized - a.linearized_robustness).abs() - a.bias_distance
    assert float(excess.max()) <= 1e-12
    assert float(a.bias_distance.max()) > 1e-3  # the bound is not vacuous here
    free = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[32, 32], num_classes=5, bias=False)
    a0 = salign.analyze(free.double(), x, norm=p)
    torch.testing.assert_close(a0.alignment_binarized, a0.linearized_robustness, rtol=1e-9, atol=1e-12)


def test_l2_is_the_default_and_bad_norms_are_named() -> None:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 6, 6], hidden=[16], num_classes=4).double()
    x = torch.rand(8, 1, 6, 6, dtype=torch.float64)
    default, two = salign.analyze(model, x), salign.analyze(model, x, norm="2")
    for name in salign.Analysis.columns():
        torch.testing.assert_close(getattr(default, name), getattr(two, name), rtol=0, atol=0, equal_nan=True)
    assert "norm" not in salign.Analysis.columns() and default.norm == 2
    for bad in (3, "l3", True, None):
        with pytest.raises(InputError, match="norm must be 1, 2 or inf"):
            salign.alignment(model, x, norm=bad)  # type: ignore[arg-type]
