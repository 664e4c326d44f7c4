"""salign.attributions: any attribution method, boundary attributions, saliency quality (issue 18).

Oracles (docs/theory.md, "Attributions"): for a bias-free linear model IG from 0 is x ⊙ z, the
gradient's α is |Σ IG| / ‖z‖ = ρ, the path-averaged gradient's α equals the gradient's, the
boundary cosine is 1 and boundary IG is exact; on a ReLU net boundary IG is complete up to the
quadrature error, and the binarized wrapper is IG(Ψ^i) − IG(Ψ^j) by linearity.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

import salign  # noqa: E402
from salign.attributions import (  # noqa: E402
    attribute,
    attribution_alignment,
    boundary_attributions,
    saliency_quality,
)
from salign.errors import InputError, InputTypeError  # noqa: E402
from salign.models.simple import Linear, ReLUMLP  # noqa: E402
from salign.quantities import alignment, nearest_rival, saliency  # noqa: E402

F64 = torch.float64


def linear_model(k: int = 4) -> nn.Module:
    torch.manual_seed(1)
    return Linear((1, 6, 6), k, bias=False).double()


def relu_net() -> nn.Module:
    torch.manual_seed(2)
    return ReLUMLP((1, 8, 8), (16, 16), 5).double()


def inputs(n: int, side: int) -> torch.Tensor:
    torch.manual_seed(3)
    return 0.35 + 0.3 * torch.rand(n, 1, side, side, dtype=F64)  # boundary projections stay in the box


def linear_boundary(
    model: nn.Module, x: torch.Tensor, overshoot: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form nearest boundary point (T2) just across, and ρ."""
    nr = nearest_rival(model, x)
    unit = nr.gradient / nr.gradient_norm.view(-1, 1, 1, 1)
    x_b = x - ((1 + overshoot) * nr.distance).view(-1, 1, 1, 1) * unit
    assert bool(((x_b >= 0) & (x_b <= 1)).all())
    return x_b, nr.distance


def weight_difference(model: nn.Module, i: torch.Tensor, j: torch.Tensor | None) -> torch.Tensor:
    w = model.fc.weight.detach()
    z = w[i] if j is None else w[i] - w[j]
    return z.view(-1, 1, 6, 6)


# ------------------------------------------------------------------------------------------
# Oracles on the bias-free linear model
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["logit", "binarized"])
def test_integrated_gradients_of_bias_free_linear_model_is_input_times_weights(mode: str) -> None:
    model, x = linear_model(), inputs(6, 6)
    i = model(x).argmax(1)
    j = nearest_rival(model, x).rival if mode == "binarized" else None
    ig = attribute(model, x, "integrated_gradients", mode=mode, n_steps=8)  # exact for any steps
    expected = x * weight_difference(model, i, j)
    torch.testing.assert_close(ig, expected, rtol=1e-7, atol=0)  # captum's weights: float32 round-off
    torch.testing.assert_close(
        attribute(model, x, "input_x_gradient", mode=mode), expected, rtol=1e-12, atol=0
    )


def test_alignment_identities_of_integrated_gradients_on_linear_model() -> None:
    """What "IG's α equals the gradient's" can mean for Ψ = ⟨z, x⟩ (docs/theory.md, A1–A3)."""
    model, x = linear_model(), inputs(6, 6)
    _, rho = linear_boundary(model, x)
    alpha_grad = attribution_alignment(model, x, "gradient")  # α_bin of the nearest pair
    torch.testing.assert_close(alpha_grad, rho, rtol=1e-10, atol=0)  # T2
    ig = attribute(model, x, "integrated_gradients", n_steps=8)
    g = attribute(model, x, "gradient")
    # A1 completeness: the gradient's α is |Σ IG| / ‖∇f‖
    torch.testing.assert_close(
        ig.flatten(1).sum(1).abs() / g.flatten(1).norm(dim=1), alpha_grad, rtol=1e-7, atol=0
    )
    # A2 the path-averaged gradient (captum's multiply_by_inputs=False) has the gradient's α
    averaged = captum_attr.IntegratedGradients(model, multiply_by_inputs=False)
    torch.testing.assert_close(
        attribution_alignment(model, x, averaged, n_steps=8), alpha_grad, rtol=1e-7, atol=0
    )
    # A3 the IG map itself has Input×Gradient's α, which is NOT the gradient's in general
    alpha_ig = attribution_alignment(model, x, "integrated_gradients", n_steps=8)
    torch.testing.assert_close(
        alpha_ig, attribution_alignment(model, x, "input_x_gradient"), rtol=1e-8, atol=0
    )
    assert float(((alpha_ig - alpha_grad).abs() / alpha_grad).max()) > 0.1


def test_boundary_cosine_is_one_and_boundary_ig_exact_on_linear_model() -> None:
    model, x = linear_model(), inputs(6, 6)
    x_b, rho = linear_boundary(model, x)
    res = boundary_attributions(model, x, x_b)
    assert not bool(res.failed.any())
    torch.testing.assert_close(res.direction_cosine, torch.ones(6, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.boundary_alignment, rho, rtol=1e-10, atol=0)  # the map is constant
    # x_b overshoots the hyperplane through 0 by 1e-6 ρ: f(x_b) = −1e-6 f(x), α(x_b) = 1e-6 ρ
    torch.testing.assert_close(res.value_at_boundary, -1e-6 * res.value, rtol=1e-4, atol=0)
    torch.testing.assert_close(res.alignment_at_boundary, 1e-6 * rho, rtol=1e-4, atol=0)
    torch.testing.assert_close(res.completeness_gap, torch.zeros(6, dtype=F64), rtol=0, atol=1e-9)
    # boundary IG = (x − x_b) ⊙ z, and its map sums to f(x) − f(x_b)
    z = weight_difference(model, res.target, res.rival)
    torch.testing.assert_close(res.integrated_gradients, (x - x_b) * z, rtol=1e-8, atol=1e-13)


def test_boundary_cosine_from_an_attack_result_on_linear_model() -> None:
    model, x = linear_model(), inputs(4, 6)
    result = salign.attacks.deepfool(model, x)  # an AttackResult as robustness() returns; exact here
    assert bool(result.success.all())
    res = boundary_attributions(model, x, result)
    torch.testing.assert_close(res.direction_cosine, torch.ones(4, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.target, result.labels)
    torch.testing.assert_close(res.rival, result.adv_class)
    torch.testing.assert_close(
        attribute(model, x, "boundary_gradient", boundary=result), res.saliency, rtol=0, atol=0
    )


def test_boundary_ig_completeness_on_relu_net() -> None:
    """Σ BIG = f(x) − f(x_b) within 1% with 256 Gauss–Legendre steps (measured: 6e-4)."""
    model, x = relu_net(), torch.rand(6, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match="no verified adversarial point"):
        result = salign.attacks.deepfool(model, x)  # fails on 2 of the 6: NaN rows below
    ok = result.success
    assert int(ok.sum()) >= 3
    with pytest.warns(RuntimeWarning, match=f"{int((~ok).sum())} of 6 samples: the attack found no boundary"):
        res = boundary_attributions(model, x, result, n_steps=256, internal_batch_size=6 * 256)
    assert res.failed.tolist() == (~ok).tolist()
    # f by hand: the binarized logit of the pair x_b crosses
    i, j = result.labels[ok], result.adv_class[ok]
    with torch.no_grad():
        lx, lb = model(x[ok]), model(result.adv[ok])
    f_x = lx.gather(1, i[:, None])[:, 0] - lx.gather(1, j[:, None])[:, 0]
    f_b = lb.gather(1, i[:, None])[:, 0] - lb.gather(1, j[:, None])[:, 0]
    total = res.integrated_gradients[ok].flatten(1).sum(1)
    assert float(((total - (f_x - f_b)).abs() / (f_x - f_b).abs()).max()) < 1e-2
    torch.testing.assert_close(res.value[ok], f_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.value_at_boundary[ok], f_b, rtol=1e-12, atol=1e-12)
    assert bool(res.completeness_gap[~ok].isnan().all())
    with pytest.warns(RuntimeWarning, match="the attack found no boundary"):
        map_only = attribute(
            model,
            x,
            "boundary_integrated_gradients",
            boundary=result,
            n_steps=256,
            internal_batch_size=6 * 256,
        )
    torch.testing.assert_close(map_only, res.integrated_gradients, rtol=1e-12, atol=1e-14, equal_nan=True)


# ------------------------------------------------------------------------------------------
# Equal to captum, and the wrapper against hand computations
# ------------------------------------------------------------------------------------------


def test_gradient_and_input_x_gradient_equal_salign_and_captum() -> None:
    model, x = relu_net(), torch.rand(5, 1, 8, 8, dtype=F64)
    y = model(x).argmax(1)
    g = attribute(model, x, "gradient", mode="logit")
    xg = x.clone().requires_grad_()  # captum warns about inputs that do not require grad
    torch.testing.assert_close(
        g, captum_attr.Saliency(model).attribute(xg, target=y, abs=False), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(g, saliency(model, x, mode="logit"), rtol=0, atol=0)
    torch.testing.assert_close(attribute(model, x, "gradient"), saliency(model, x), rtol=0, atol=0)
    ixg = captum_attr.InputXGradient(model).attribute(xg, target=y).detach()
    torch.testing.assert_close(attribute(model, x, "input_x_gradient", mode="logit"), ixg, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rival", ["nearest", "runner_up"])
def test_binarized_integrated_gradients_is_difference_of_captum_igs(rival: str) -> None:
    """IG of Ψ^i − Ψ^j = IG of Ψ^i − IG of Ψ^j (linearity), both by captum on the raw model."""
    model, x = relu_net(), torch.rand(5, 1, 8, 8, dtype=F64)
    i = model(x).argmax(1)
    j = nearest_rival(model, x).rival if rival == "nearest" else model(x).topk(2, 1).indices[:, 1]
    ours = attribute(model, x, "integrated_gradients", rival=rival, n_steps=20)
    ig = captum_attr.IntegratedGradients(model)
    hand = ig.attribute(x, target=i, n_steps=20) - ig.attribute(x, target=j, n_steps=20)
    torch.testing.assert_close(ours, hand, rtol=1e-10, atol=1e-12)
    # plain logit mode: captum's IG on the model itself
    torch.testing.assert_close(
        attribute(model, x, "integrated_gradients", mode="logit", n_steps=20),
        ig.attribute(x, target=i, n_steps=20),
        rtol=1e-12,
        atol=1e-14,
    )


def test_smoothgrad_equals_captum_and_its_binarized_target_is_per_sample() -> None:
    model, x = relu_net(), torch.rand(4, 1, 8, 8, dtype=F64)
    y = model(x).argmax(1)
    torch.manual_seed(5)
    ours = attribute(model, x, "smoothgrad", mode="logit", nt_samples=8, stdevs=0.1)
    torch.manual_seed(5)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    theirs = nt.attribute(
        x, nt_type="smoothgrad", nt_samples=8, nt_samples_batch_size=1, stdevs=0.1, target=y, abs=False
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    # a user's captum object built on the model is rebound to f with its own options kept
    torch.manual_seed(5)
    user = attribute(model, x, nt, mode="logit", nt_samples=8, nt_samples_batch_size=1, stdevs=0.1, abs=False)
    torch.testing.assert_close(user, theirs, rtol=1e-12, atol=0)
    # a linear model's SmoothGrad is its gradient: per-sample pairs must follow their samples
    lin, xl = linear_model(k=6), inputs(6, 6)
    i, j = lin(xl).argmax(1), nearest_rival(lin, xl).rival
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) > 1
    sg = attribute(lin, xl, "smoothgrad", nt_samples=4)
    torch.testing.assert_close(sg, weight_difference(lin, i, j), rtol=1e-10, atol=1e-13)


class Shifted(nn.Module):
    """Ψ + c(x)·1: the same classifier, a different logit gradient (Srinivas & Fleuret 2021)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.c = nn.Linear(64, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 5 * torch.tanh(self.c(x.flatten(1)))


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_shift_invariant_modes_ignore_a_common_logit_shift(method: str) -> None:
    model, x = relu_net(), torch.rand(3, 1, 8, 8, dtype=F64)
    shifted = Shifted(model)
    opts = {"n_steps": 8} if method != "gradient" else {}
    for mode in ("binarized", "log_softmax", "margin"):
        torch.testing.assert_close(
            attribute(shifted, x, method, mode=mode, **opts), attribute(model, x, method, mode=mode, **opts)
        )
    logit_a, logit_b = (attribute(m, x, method, mode="logit", **opts) for m in (shifted, model))
    assert float((logit_a - logit_b).abs().max()) > 1e-3


def test_gradients_of_the_shift_invariant_targets() -> None:
    """∇ margin = ∇(Ψ^i − Ψ^{runner-up}); ∇ log softmax^i = −∇ CE(Ψ, i)."""
    model, x = relu_net(), torch.rand(5, 1, 8, 8, dtype=F64)
    torch.testing.assert_close(
        attribute(model, x, "gradient", mode="margin"),
        saliency(model, x, rival="runner_up"),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(
        attribute(model, x, "gradient", mode="log_softmax"),
        -saliency(model, x, mode="loss"),
        rtol=1e-10,
        atol=1e-15,
    )


def test_attribution_alignment_of_the_gradient_is_alignment() -> None:
    model, x = relu_net(), torch.rand(5, 1, 8, 8, dtype=F64)
    for mode in ("logit", "binarized"):
        torch.testing.assert_close(
            attribution_alignment(model, x, "gradient", mode=mode),
            alignment(model, x, mode=mode),
            rtol=1e-12,
            atol=0,
        )
    torch.testing.assert_close(
        attribution_alignment(model, x, "gradient", normalized=True, norm="inf"),
        alignment(model, x, normalized=True, norm="inf"),
        rtol=1e-12,
        atol=0,
    )


def test_chunks_mode_and_parameter_grads() -> None:
    """batch_size chunks give the same maps (per-sample baselines cut with x); the model's
    mode comes back, no parameter .grad appears."""
    model, x = relu_net(), torch.rand(5, 1, 8, 8, dtype=F64)
    model.train()
    base = torch.rand_like(x) * 0.1
    whole = attribute(model, x, "integrated_gradients", baselines=base, n_steps=8)
    parts = attribute(model, x, "integrated_gradients", baselines=base, n_steps=8, batch_size=2)
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)
    x_b = salign.attacks.deepfool(model, x)
    b1 = boundary_attributions(model, x, x_b, n_steps=8)
    b2 = boundary_attributions(model, x, x_b, n_steps=8, batch_size=3)
    for name in b1.columns():
        torch.testing.assert_close(getattr(b2, name), getattr(b1, name), equal_nan=True)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert set(b1.to_dict()) == set(b1.columns())


def test_failed_attacks_give_nan_rows_with_a_counted_warning() -> None:
    model, x = linear_model(), inputs(4, 6)
    result = salign.attacks.deepfool(model, x)
    failed = result.success.clone()
    failed[1] = False
    distance = result.distance.clone()
    distance[2] = math.inf
    broken = type(result)(**{**result.__dict__, "success": failed, "distance": distance})
    with pytest.warns(RuntimeWarning, match="2 of 4 samples: the attack found no boundary point"):
        res = boundary_attributions(model, x, broken)
    assert res.failed.tolist() == [False, True, True, False]
    for name in (
        "direction_cosine",
        "boundary_alignment",
        "completeness_gap",
        "integrated_gradients_alignment",
    ):
        col = getattr(res, name)
        assert bool(col[1:3].isnan().all()) and bool(col[[0, 3]].isfinite().all()), name
    assert bool(res.saliency[1:3].isnan().all())


# ------------------------------------------------------------------------------------------
# Saliency quality
# ------------------------------------------------------------------------------------------


def test_saliency_quality_oracles() -> None:
    torch.manual_seed(6)
    binary = (torch.rand(5, 1, 10, 10) > 0.7).float()
    q = saliency_quality(binary, binary)  # the map is the (binary) digit: the maximum
    area = binary.flatten(1).mean(1)
    torch.testing.assert_close(q.stroke_mass, torch.ones(5))
    torch.testing.assert_close(q.stroke_area, area)
    torch.testing.assert_close(q.stroke_lift, 1 / area)
    torch.testing.assert_close(q.rank_correlation, torch.ones(5))
    with pytest.warns(RuntimeWarning, match="5 of 5 samples: the saliency map or the image is constant"):
        u = saliency_quality(torch.full_like(binary, 0.3), binary)  # uniform: the chance level
    torch.testing.assert_close(u.stroke_mass, area)
    torch.testing.assert_close(u.stroke_lift, torch.ones(5))
    assert bool(u.rank_correlation.isnan().all())
    grey = torch.rand(5, 1, 10, 10, dtype=F64)
    g = saliency_quality(-2 * grey, grey)  # |map| = a monotone function of the image
    torch.testing.assert_close(g.rank_correlation, torch.ones(5, dtype=F64))
    rnd = saliency_quality(torch.randn(5, 1, 10, 10, dtype=F64), grey)
    assert bool((rnd.rank_correlation.abs() < 0.5).all()) and bool((rnd.stroke_mass < 1).all())
    assert set(q.to_dict()) == {"stroke_mass", "stroke_area", "stroke_lift", "rank_correlation"}


def test_saliency_quality_on_mnist() -> None:
    x, _ = salign.data.load("mnist", "test")
    x = x[:16]
    torch.manual_seed(7)
    model = salign.models.build("smallnet")
    gradient = attribute(model, x, "gradient", rival="runner_up")
    maps = {
        "gradient": gradient,
        "input_x_gradient": x * gradient,
        "image": x,
    }
    quality = {name: saliency_quality(m, x) for name, m in maps.items()}
    for q in quality.values():
        for name in q.columns():
            assert bool(getattr(q, name).isfinite().all()), name
        assert bool(((q.stroke_mass >= 0) & (q.stroke_mass <= 1)).all())
        assert bool(((q.rank_correlation >= -1) & (q.rank_correlation <= 1)).all())
        assert bool((q.stroke_lift <= 1 / q.stroke_area + 1e-5).all())
    # MNIST strokes cover 10–30% of the image; the image itself puts most of its mass there
    assert 0.05 < float(quality["image"].stroke_area.median()) < 0.35
    assert float(quality["image"].stroke_mass.min()) > 0.6
    assert float(quality["image"].rank_correlation.min()) > 0.99
    # x ⊙ ∇ vanishes off the digit, so it is at least as concentrated as the gradient
    assert bool((quality["input_x_gradient"].stroke_mass >= quality["gradient"].stroke_mass - 1e-6).all())


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_attribution_bad_inputs() -> None:
    model, x = relu_net(), torch.rand(3, 1, 8, 8, dtype=F64)
    cases = [
        (lambda: attribute(model, x, "gradcam"), InputError, "unknown attribution 'gradcam'"),
        (lambda: attribute(model, x, 3), InputTypeError, "attribution name"),
        (lambda: attribute(model, x, captum_attr.GradientShap), InputError, "GradientShap needs baselines"),
        (lambda: attribute(model, x, captum_attr.Occlusion), InputError, "needs sliding_window_shapes"),
        (
            lambda: attribute(model, x, captum_attr.LayerIntegratedGradients(model, model.net[1])),
            InputError,
            "LayerIntegratedGradients attributes a layer",
        ),
        (
            lambda: attribute(model, x, captum_attr.IntegratedGradients(relu_net())),
            InputError,
            "built on another function",
        ),
        (lambda: attribute(model, x, captum_attr.NoiseTunnel), InputError, "cannot be built from the model"),
        (lambda: attribute(model, x, "integrated_gradients", steps=4), InputError, "does not take steps"),
        (
            lambda: attribute(model, x, "integrated_gradients", target=None, return_convergence_delta=True),
            InputError,
            "set by salign",
        ),
        (lambda: attribute(model, x, "gradient", n_steps=4), InputError, "gradient takes no method options"),
        (lambda: attribute(model, x, "gradient", mode="softmax"), InputError, "mode must be one of"),
        (lambda: attribute(model, x, "gradient", rival="adversarial"), InputError, "needs a boundary method"),
        (lambda: attribute(model, x, "gradient", boundary=x), InputError, "only used by"),
        (lambda: attribute(model, x, "boundary_gradient"), InputError, "need boundary="),
        (
            lambda: attribute(model, x, "boundary_gradient", boundary=x[:2]),
            InputError,
            "boundary points must have",
        ),
        (
            lambda: attribute(model, x, "boundary_gradient", boundary=[1]),
            InputTypeError,
            "AttackResult or a tensor",
        ),
        (
            lambda: attribute(model, x, "boundary_integrated_gradients", boundary=x, baselines=x),
            InputError,
            "do not pass baselines",
        ),
        (lambda: attribute(model, x * 3, "gradient"), InputError, r"must be in \[0, 1\]"),
        (lambda: saliency_quality(x[:2], x), InputError, "saliency must have x's shape"),
        (lambda: saliency_quality(x, x, threshold=1.5), InputError, "threshold must be a number in"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    # a baseline-requiring method works once the baseline is given
    gs = attribute(model, x, captum_attr.GradientShap, baselines=torch.zeros(2, 1, 8, 8, dtype=F64))
    assert gs.shape == x.shape and bool(gs.isfinite().all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attributions_on_cuda_match_cpu() -> None:
    model, x = relu_net(), torch.rand(4, 1, 8, 8, dtype=F64)
    x_b = salign.attacks.deepfool(model, x, warn=False)
    cpu = {m: attribute(model, x, m, n_steps=8) for m in ("gradient", "integrated_gradients")}
    cpu_b = boundary_attributions(model, x, x_b.adv, n_steps=8)
    model_c, x_c = model.cuda(), x.cuda()
    for m, ref in cpu.items():
        out = attribute(model_c, x_c, m, n_steps=8)
        assert out.device == x_c.device
        torch.testing.assert_close(out.cpu(), ref)
    res = boundary_attributions(model_c, x_c, x_b.adv.cuda(), n_steps=8)
    torch.testing.assert_close(res.direction_cosine.cpu(), cpu_b.direction_cosine, equal_nan=True)
    q = saliency_quality(res.saliency.nan_to_num(), x_c)
    assert q.stroke_mass.device == x_c.device
