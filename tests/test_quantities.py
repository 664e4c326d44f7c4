"""Core quantities: theory oracles (paper T1–T4), cross-checks with Captum and plain loops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salign
from salign.errors import InputError, InputTypeError
from salign.quantities import (
    STRATEGIES,
    Analysis,
    class_gradients,
    nearest_rival,
)

REL = 1e-6
HYP = settings(max_examples=10, deadline=None, derandomize=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def linear_model(d: int, k: int, *, bias: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = salign.models.build("linear", input_shape=[d], num_classes=k, bias=bias).double()
    if bias:
        with torch.no_grad():
            model.fc.bias.uniform_(-0.5, 0.5)
    return model


def exact_linear_distance(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form L2 distance to the decision boundary of argmax(W x + b) (paper T2a), and j*.

    The predicted class's region is the intersection of the half-spaces {Ψ^i ≥ Ψ^j}; the
    distance to the union of their complements is the minimum of the half-space distances.
    Computed in numpy from the weights, independently of autograd.
    """
    logits = x @ w.T + b
    pred = logits.argmax(1)
    dist = np.empty(len(x))
    jstar = np.empty(len(x), dtype=np.int64)
    for n in range(len(x)):
        i = pred[n]
        best = math.inf
        for j in range(w.shape[0]):
            if j == i:
                continue
            d = (logits[n, i] - logits[n, j]) / np.linalg.norm(w[i] - w[j])
            if d < best:
                best, jstar[n] = d, j
        dist[n] = best
    return dist, jstar


# ----------------------------------------------------------------------------- T1 / T2: linear


@HYP
@given(d=st.integers(2, 40), k=st.integers(2, 12), n=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_bias_free_linear_alignment_equals_exact_distance(d: int, k: int, n: int, seed: int) -> None:
    model = linear_model(d, k, bias=False, seed=seed)
    x = torch.rand(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    w = model.fc.weight.detach().numpy()
    rho, jstar = exact_linear_distance(w, np.zeros(k), x.numpy())
    rho_t = torch.from_numpy(rho)

    alpha_bin = salign.alignment(model, x, mode="binarized", rival="nearest")
    rho_tilde = salign.linearized_robustness(model, x)
    assert rel_err(alpha_bin, rho_t) <= REL  # T2(b): α_bin(j*) = ρ
    assert rel_err(rho_tilde, rho_t) <= REL  # linearisation of a linear model is exact
    assert torch.equal(nearest_rival(model, x).rival, torch.from_numpy(jstar))

    # the closed-form boundary point really lies on the decision boundary
    g = salign.saliency(model, x, mode="binarized", rival="nearest")
    x_b = x - rho_t[:, None] * g / g.norm(dim=1, keepdim=True)
    logits_b = model(x_b).detach()
    top2 = logits_b.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).abs().max()) <= 1e-9

    # T2(c): α = |ρ‖z_i − z_j*‖ + Ψ^{j*}| / ‖z_i‖ for the predicted-logit saliency map
    pred = model(x).argmax(1)
    wt = model.fc.weight.detach()
    zi, zj = wt[pred], wt[torch.from_numpy(jstar)]
    psi_j = model(x).detach().gather(1, torch.from_numpy(jstar)[:, None])[:, 0]
    expected = (rho_t * (zi - zj).norm(dim=1) + psi_j).abs() / zi.norm(dim=1)
    assert rel_err(salign.alignment(model, x, mode="logit"), expected) <= REL


@HYP
@given(d=st.integers(2, 30), k=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_linear_with_bias_bound(d: int, k: int, seed: int) -> None:
    """T1'/T2 with biases: ρ̃ = ρ exactly and |α_bin − ρ| ≤ |b_i − b_j*| / ‖z_i − z_j*‖."""
    model = linear_model(d, k, bias=True, seed=seed)
    x = torch.rand(8, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    w, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    rho, jstar = exact_linear_distance(w, b, x.numpy())
    rho_t = torch.from_numpy(rho)
    pred = model(x).argmax(1).numpy()
    bound = torch.from_numpy(np.abs(b[pred] - b[jstar]) / np.linalg.norm(w[pred] - w[jstar], axis=1))

    a = salign.analyze(model, x)
    assert rel_err(a.linearized_robustness, rho_t) <= REL
    assert torch.equal(a.rival_nearest, torch.from_numpy(jstar))
    assert bool(((a.alignment_binarized - rho_t).abs() <= bound * (1 + 1e-9) + 1e-12).all())
    # the effective bias of a linear model is exactly its bias difference
    assert rel_err(a.effective_bias, torch.from_numpy(b[pred] - b[jstar])) <= REL
    assert rel_err(a.bias_distance, bound) <= REL


def test_binary_linear_bias_bound_is_tight_somewhere() -> None:
    """T1': two classes, z = w_0 − w_1: |α − ρ| ≤ |b|/‖z‖, with equality off the bias side."""
    model = linear_model(5, 2, bias=True, seed=3)
    x = torch.rand(64, 5, dtype=torch.float64)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    z, bb = w[0] - w[1], b[0] - b[1]
    rho = (x @ z + bb).abs() / z.norm()
    alpha = salign.alignment(model, x)
    gap = (alpha - rho).abs()
    assert bool((gap <= bb.abs() / z.norm() + 1e-12).all())
    assert float(gap.max()) >= 0.5 * float(bb.abs() / z.norm())  # the bound is not vacuous


# ----------------------------------------------------------------------------- T3: homogeneity


def bias_free_mlp(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return salign.models.build(
        "relu_mlp", input_shape=[1, 6, 6], hidden=[width, width], num_classes=7, bias=False
    ).double()


def bias_free_cnn(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return salign.models.build(
        "relu_cnn", in_channels=2, channels=[width, 2 * width], num_classes=5, input_size=8, bias=False
    ).double()


@HYP
@given(seed=st.integers(0, 10_000), width=st.integers(8, 24), cnn=st.booleans())
def test_bias_free_relu_nets_are_homogeneous(seed: int, width: int, cnn: bool) -> None:
    model = bias_free_cnn(seed, width) if cnn else bias_free_mlp(seed, width)
    shape = (6, 2, 8, 8) if cnn else (6, 1, 6, 6)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    logits = model(x).detach()
    pred = logits.argmax(1)
    s = salign.saliency(model, x, mode="logit")
    # T3: Ψ^i = ⟨∇Ψ^i, x⟩ and β ≡ 0 (for the logit and for the binarized pair)
    psi = logits.gather(1, pred[:, None])[:, 0]
    assert rel_err((s * x).flatten(1).sum(1), psi) <= REL
    scale = logits.abs().max()
    for mode in ("logit", "binarized"):
        beta = salign.effective_bias(model, x, mode=mode)
        assert float(beta.abs().max()) <= 1e-9 * float(scale)
    a = salign.analyze(model, x)
    assert rel_err(a.homogeneous_fraction, torch.ones(6, dtype=torch.float64)) <= REL
    # T4 with β = 0: α_bin = ρ̃ exactly
    assert rel_err(a.alignment_binarized, a.linearized_robustness) <= REL
    # positive homogeneity: α(tx) = t α(x), ρ̃(tx) = t ρ̃(x)
    t = 0.37
    for fn in (
        lambda z: salign.alignment(model, z),
        lambda z: salign.alignment(model, z, mode="logit"),
        lambda z: salign.linearized_robustness(model, z),
    ):
        assert rel_err(fn(t * x), t * fn(x)) <= REL


# ----------------------------------------------------------------------------- T4: with biases


@HYP
@given(seed=st.integers(0, 10_000), which=st.sampled_from(["relu_mlp", "relu_cnn", "smallnet"]))
def test_t4_bound_holds_on_every_sample(seed: int, which: str) -> None:
    torch.manual_seed(seed)
    if which == "relu_mlp":
        model, shape = salign.models.build("relu_mlp", input_shape=[1, 6, 6], hidden=[16]), (8, 1, 6, 6)
    elif which == "relu_cnn":
        model, shape = salign.models.build("relu_cnn", channels=[4, 8], input_size=8), (8, 1, 8, 8)
    else:
        model, shape = salign.models.build("smallnet", input_size=8), (8, 1, 8, 8)
    model = model.double()
    for p in model.parameters():
        if p.ndim == 1:  # make the biases matter
            nn.init.uniform_(p, -0.3, 0.3)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    a = salign.analyze(model, x)
    gap = (a.alignment_binarized - a.linearized_robustness.abs()).abs()
    bound = a.effective_bias.abs() / a.binarized_grad_norm
    assert bool((gap <= bound * (1 + 1e-9) + 1e-12).all())
    assert rel_err(a.bias_distance, bound) <= REL
    # Euler decomposition of the margin: Ψ^i − Ψ^j = ⟨x, g⟩ + β_j
    assert rel_err(a.inner_product + a.effective_bias, a.margin) <= 1e-9


# ----------------------------------------------------------------------------- cross-checks


@pytest.fixture(scope="module")
def smallnet8() -> nn.Module:
    torch.manual_seed(1)
    return salign.models.build("smallnet", input_size=8).double().eval()


@pytest.fixture(scope="module")
def x8() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def test_logit_saliency_equals_captum(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    from captum.attr import Saliency

    target = torch.randint(0, 10, (6,))
    ours = salign.saliency(smallnet8, x8, target, mode="logit")
    theirs = Saliency(smallnet8).attribute(x8, target=target, abs=False)
    assert float((ours - theirs).abs().max()) <= 1e-6 * float(theirs.abs().max())
    ours_pred = salign.saliency(smallnet8, x8, mode="logit")
    theirs_pred = Saliency(smallnet8).attribute(x8, target=smallnet8(x8).argmax(1), abs=False)
    assert torch.allclose(ours_pred, theirs_pred, rtol=1e-6, atol=1e-12)


def plain_nearest(model: nn.Module, x: torch.Tensor, classes: list[int] | None = None):
    """Reference: a separate forward + backward per sample and rival class."""
    dists, rivals = [], []
    for n in range(x.shape[0]):
        xn = x[n : n + 1].clone().requires_grad_(True)
        out = model(xn)[0]
        i = int(out.argmax())
        best, best_j = math.inf, -1
        for j in classes if classes is not None else range(out.shape[0]):
            if j == i:
                continue
            xr = x[n : n + 1].clone().requires_grad_(True)
            o = model(xr)[0]
            (g,) = torch.autograd.grad(o[i] - o[j], xr)
            d = float((o[i] - o[j]).detach()) / float(g.norm())
            if d < best:
                best, best_j = d, j
        dists.append(best)
        rivals.append(best_j)
    return torch.tensor(dists, dtype=torch.float64), torch.tensor(rivals)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nearest_rival_matches_plain_loop(smallnet8: nn.Module, x8: torch.Tensor, strategy: str) -> None:
    dist, riv = plain_nearest(smallnet8, x8)
    res = nearest_rival(smallnet8, x8, strategy=strategy)
    assert torch.equal(res.rival, riv)
    assert rel_err(res.distance, dist) <= REL
    assert rel_err(salign.linearized_robustness(smallnet8, x8, strategy=strategy), dist) <= REL


def test_candidates_restrict_the_search(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    full = nearest_rival(smallnet8, x8)
    for k in (9, 10, 50):  # ≥ K − 1: exact
        res = nearest_rival(smallnet8, x8, candidates=k)
        assert torch.equal(res.rival, full.rival) and torch.equal(res.distance, full.distance)
    res = nearest_rival(smallnet8, x8, candidates=3)
    logits = smallnet8(x8).detach()
    for n in range(x8.shape[0]):
        top = logits[n].topk(4).indices.tolist()[1:]  # the 3 highest rivals of the predicted class
        d, r = plain_nearest(smallnet8, x8[n : n + 1], classes=top)
        assert int(res.rival[n]) == int(r[0]) and rel_err(res.distance[n], d[0]) <= REL
        assert float(res.distance[n]) >= float(full.distance[n]) - 1e-12


def test_class_gradients_match_separate_backwards(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    classes = torch.tensor([[0, 3], [9, 1]]).repeat(3, 1)
    for strategy in STRATEGIES:
        _, g = class_gradients(smallnet8, x8, classes, strategy=strategy)
        assert g.shape == (6, 2, 1, 8, 8)
        for m in range(2):
            ref = salign.saliency(smallnet8, x8, classes[:, m], mode="logit")
            assert torch.allclose(g[:, m], ref, rtol=1e-9, atol=1e-14)
    _, g_all = class_gradients(smallnet8, x8, torch.arange(10))
    assert g_all.shape == (6, 10, 1, 8, 8)


def test_batch_equals_per_sample(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    whole = salign.analyze(smallnet8, x8, torch.arange(6))
    chunked = salign.analyze(smallnet8, x8, torch.arange(6), batch_size=3)
    singles = [salign.analyze(smallnet8, x8[n : n + 1], torch.tensor([n])) for n in range(6)]
    for name in Analysis.columns():
        a, b = getattr(whole, name), getattr(chunked, name)
        c = torch.cat([getattr(s, name) for s in singles])
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-14, equal_nan=True), name
            assert torch.allclose(a, c, rtol=1e-9, atol=1e-14, equal_nan=True), name
        else:
            assert torch.equal(a, b) and torch.equal(a, c), name
    for mode in ("logit", "binarized", "loss"):
        s = salign.saliency(smallnet8, x8, mode=mode)
        s1 = torch.cat([salign.saliency(smallnet8, x8[n : n + 1], mode=mode) for n in range(6)])
        assert torch.allclose(s, s1, rtol=1e-9, atol=1e-14), mode


def test_analyze_columns_agree_with_the_single_functions(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    a = salign.analyze(smallnet8, x8)
    assert torch.allclose(a.alignment, salign.alignment(smallnet8, x8, mode="logit"), rtol=1e-9)
    assert torch.allclose(a.alignment_binarized, salign.alignment(smallnet8, x8), rtol=1e-9)
    assert torch.allclose(
        a.alignment_normalized, salign.alignment(smallnet8, x8, mode="logit", normalized=True), rtol=1e-9
    )
    assert torch.allclose(a.linearized_robustness, salign.linearized_robustness(smallnet8, x8), rtol=1e-9)
    assert torch.allclose(a.effective_bias, salign.effective_bias(smallnet8, x8), rtol=1e-9, atol=1e-14)
    assert torch.allclose(
        a.effective_bias_logit, salign.effective_bias(smallnet8, x8, mode="logit"), rtol=1e-9, atol=1e-14
    )
    logits = smallnet8(x8).detach()
    assert torch.equal(a.pred, logits.argmax(1))
    assert torch.equal(a.rival_runner_up, logits.topk(2).indices[:, 1])
    assert torch.equal(a.rival, a.rival_nearest)
    assert torch.allclose(a.logit_margin, logits.topk(2).values[:, 0] - logits.topk(2).values[:, 1])
    assert bool(
        (a.linearized_robustness <= salign.linearized_robustness(smallnet8, x8, rival="runner_up")).all()
    )
    ru = salign.analyze(smallnet8, x8, rival="runner_up")
    assert torch.equal(ru.rival, ru.rival_runner_up) and bool((ru.rival_nearest == -1).all())
    assert torch.allclose(
        ru.alignment_binarized, salign.alignment(smallnet8, x8, rival="runner_up"), rtol=1e-9
    )
    assert torch.allclose(ru.alignment, a.alignment, rtol=1e-9)


def test_loss_saliency_is_the_per_sample_cross_entropy_gradient(
    smallnet8: nn.Module, x8: torch.Tensor
) -> None:
    y = torch.randint(0, 10, (6,))
    s = salign.saliency(smallnet8, x8, y, mode="loss")
    for n in (0, 7):
        xn = x8[n : n + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(smallnet8(xn), y[n : n + 1]), xn)
        assert torch.allclose(s[n : n + 1], g, rtol=1e-9, atol=1e-15)
    s_vmap = salign.saliency(smallnet8, x8, y, mode="loss", strategy="vmap")
    assert torch.allclose(s, s_vmap, rtol=1e-9, atol=1e-15)


def test_explicit_rival_and_origin(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    riv = (smallnet8(x8).argmax(1) + 1) % 10
    g = salign.saliency(smallnet8, x8, rival=riv)
    ref = salign.saliency(smallnet8, x8, mode="logit") - salign.saliency(smallnet8, x8, riv, mode="logit")
    assert torch.allclose(g, ref, rtol=1e-9, atol=1e-14)
    mean = x8.mean(0, keepdim=True)
    a = salign.alignment(smallnet8, x8, rival=riv, origin=mean, normalized=True)
    c = x8 - mean
    expected = (c * g).flatten(1).sum(1).abs() / (g.flatten(1).norm(dim=1) * c.flatten(1).norm(dim=1))
    assert torch.allclose(a, expected, rtol=1e-9)
    with pytest.raises(InputError, match="rival"):
        salign.saliency(smallnet8, x8, rival=smallnet8(x8).argmax(1))


# ----------------------------------------------------------------------------- mode / grads / dtype


class BNDropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(4 * 8 * 8, 6),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_train_mode_model_gives_eval_results_and_stays_in_train_mode() -> None:
    model = BNDropNet()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model.train()
        for _ in range(5):
            model(torch.rand(32, 1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    model.eval()
    ref = salign.analyze(model, x)
    ref_s = salign.saliency(model, x)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = salign.analyze(model, x)
    got_s = salign.saliency(model, x)
    _ = salign.alignment(model, x), salign.effective_bias(model, x), salign.bias_shifted_input(model, x)
    _ = (
        salign.linearized_robustness(model, x),
        nearest_rival(model, x),
        class_gradients(model, x, torch.arange(6)),
    )
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running statistics untouched
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients
    assert torch.equal(got_s, ref_s)
    for name in Analysis.columns():
        assert torch.allclose(getattr(got, name).float(), getattr(ref, name).float(), equal_nan=True), name
    # a mixed mode comes back mixed
    model.net[1].eval()
    salign.analyze(model, x)
    assert model.training and not model.net[1].training


def test_float32_and_create_graph() -> None:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 4, 4], hidden=[8], num_classes=4)
    x = torch.rand(6, 1, 4, 4)
    a = salign.analyze(model, x)
    assert a.alignment.dtype == torch.float32 and a.pred.dtype == torch.int64
    s = salign.saliency(model, x, mode="binarized", rival="runner_up", create_graph=True)
    assert s.requires_grad
    (gw,) = torch.autograd.grad(s.pow(2).sum(), model.net[1].weight)
    assert gw.abs().sum() > 0
    s_plain = salign.saliency(model, x, mode="binarized", rival="runner_up")
    assert not s_plain.requires_grad and torch.allclose(s.detach(), s_plain)
    s_near = salign.saliency(model, x, create_graph=True)
    assert s_near.requires_grad and torch.allclose(s_near.detach(), salign.saliency(model, x))


def test_bias_shifted_input_folds_the_bias_in(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    xs = salign.bias_shifted_input(smallnet8, x8)
    g = salign.saliency(smallnet8, x8)
    a = salign.analyze(smallnet8, x8)
    # ⟨g, x'⟩ = ⟨g, x⟩ + β = Ψ^i − Ψ^j
    assert torch.allclose((g * xs).flatten(1).sum(1), a.margin, rtol=1e-9, atol=1e-14)


# ----------------------------------------------------------------------------- degenerate inputs


class DeadForSome(nn.Module):
    """Logits that do not depend on x for samples whose first pixel is below 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alive = (x[:, :1] >= 0.5).to(x.dtype)
        return self.lin(x * alive) + torch.tensor([0.0, 1.0, 2.0])


def test_zero_gradient_gives_nan_with_a_counting_warning() -> None:
    model = DeadForSome()
    x = torch.rand(10, 4)
    x[:4, 0] = 0.1
    x[4:, 0] = 0.9
    with pytest.warns(RuntimeWarning, match="4 of 10 samples"):
        a = salign.alignment(model, x, mode="logit")
    assert bool(a[:4].isnan().all()) and bool(a[4:].isfinite().all())
    with pytest.warns(RuntimeWarning, match="4 of 10 samples"):
        rho = salign.linearized_robustness(model, x)
    assert bool(rho[:4].isnan().all()) and not bool(rho.isinf().any())
    with pytest.warns(RuntimeWarning, match="4 of 10 samples"):
        an = salign.analyze(model, x)
    assert bool(an.alignment_binarized[:4].isnan().all()) and not bool(an.alignment_binarized.isinf().any())
    assert bool((an.rival_nearest[:4] == -1).all()) and torch.equal(an.rival[:4], an.rival_runner_up[:4])
    with pytest.warns(RuntimeWarning, match="unshifted"):
        xs = salign.bias_shifted_input(model, x)
    assert torch.equal(xs[:4], x[:4])


def test_constant_model_does_not_crash() -> None:
    class Const(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 3.0]]).expand(x.shape[0], 2)

    x = torch.rand(3, 5)
    for strategy in ("loop", "batched"):
        with pytest.warns(RuntimeWarning, match="3 of 3"):
            a = salign.alignment(Const(), x, strategy=strategy)
        assert bool(a.isnan().all())


def test_bad_arguments_are_named() -> None:
    model = salign.models.build("linear", input_shape=[4], num_classes=3)
    x = torch.rand(2, 4)
    with pytest.raises(InputError, match="mode"):
        salign.saliency(model, x, mode="abs")
    with pytest.raises(InputError, match="rival"):
        salign.saliency(model, x, rival="second")
    with pytest.raises(InputError, match="target"):
        salign.saliency(model, x, torch.tensor([0, 3]))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        salign.alignment(model, x + 2)
    assert salign.alignment(model, x + 2, check_range=False).shape == (2,)
    with pytest.raises(InputError, match="saliency"):
        salign.alignment(None, x, saliency=torch.rand(2, 5))
    with pytest.raises(InputTypeError, match="model"):
        salign.alignment(None, x)
    with pytest.raises(InputError, match="candidates"):
        nearest_rival(model, x, candidates=0)
    with pytest.raises(InputError, match="strategy"):
        nearest_rival(model, x, strategy="magic")
    with pytest.raises(InputError, match="labels"):
        salign.analyze(model, x, torch.tensor([0, 5]))
    with pytest.raises(InputError, match="batch_size"):
        salign.analyze(model, x, batch_size=0)
    with pytest.raises(InputError, match="loss"):
        salign.effective_bias(model, x, mode="loss")
    with pytest.raises(InputError, match="origin"):
        salign.alignment(model, x, origin=torch.zeros(3))
    with pytest.raises(InputError, match="x"):
        salign.alignment(model, torch.rand(4))
    with pytest.raises(InputTypeError, match="dtype"):
        salign.alignment(model, torch.rand(2, 4, dtype=torch.float64))
    for bad in (math.nan, math.inf, -math.inf):
        xb = x.clone()
        xb[1, 2] = bad
        with pytest.raises(InputError, match="NaN or Inf"):
            salign.alignment(model, xb, check_range=False)
        with pytest.raises(InputError, match="NaN or Inf"):
            salign.analyze(model, xb)
    with pytest.raises(InputError, match="classes"):
        class_gradients(model, x, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(InputError, match="classes"):
        class_gradients(model, x, torch.tensor([0, 7]))
    with pytest.raises(InputError, match="create_graph"):
        salign.saliency(model, x, create_graph=True, strategy="vmap")


# ----------------------------------------------------------------------------- captum interop


def test_alignment_scores_captum_attributions(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    y = smallnet8(x8).argmax(1)
    sal = Saliency(smallnet8).attribute(x8, target=y, abs=False)
    assert torch.allclose(
        salign.alignment(None, x8, saliency=sal), salign.alignment(smallnet8, x8, mode="logit"), rtol=1e-9
    )
    ixg = InputXGradient(smallnet8).attribute(x8, target=y)
    # ⟨x, x ⊙ s⟩ / ‖x ⊙ s‖ computed by hand
    expected = (x8 * ixg).flatten(1).sum(1).abs() / ixg.flatten(1).norm(dim=1)
    assert torch.allclose(salign.alignment(None, x8, saliency=ixg), expected, rtol=1e-9)
    ig = IntegratedGradients(smallnet8).attribute(x8, target=y, n_steps=16)
    a_ig = salign.alignment(None, x8, saliency=ig, normalized=True)
    assert bool(((a_ig >= 0) & (a_ig <= 1 + 1e-12)).all())
    sg = NoiseTunnel(Saliency(smallnet8)).attribute(
        x8, nt_type="smoothgrad", nt_samples=4, stdevs=0.05, target=y, abs=False
    )
    a_sg = salign.alignment(None, x8, saliency=sg)
    assert a_sg.shape == (6,) and bool(a_sg.isfinite().all())


def test_to_frame_and_to_dict(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    a = salign.analyze(smallnet8, x8, torch.zeros(6, dtype=torch.long))
    frame = a.to_frame()
    assert list(frame.columns) == Analysis.columns() and len(frame) == 6 == len(a)
    d = a.to_dict()
    assert d["label"] == [0] * 6 and d["correct"] == [p == 0 for p in d["pred"]]
    assert isinstance(d["alignment"][0], float)
    with pytest.raises(dataclasses_frozen_error()):
        a.pred = a.label  # type: ignore[misc]
    none = salign.analyze(smallnet8, x8)
    assert none.to_dict()["label"] == [-1] * 6 and not bool(none.correct.any())


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_large_k_candidates() -> None:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[12], hidden=[32], num_classes=1000).double()
    x = torch.rand(4, 12, dtype=torch.float64)
    full = nearest_rival(model, x)
    k999 = nearest_rival(model, x, candidates=999)
    assert torch.equal(full.rival, k999.rival)
    k10 = nearest_rival(model, x, candidates=10)
    assert bool((k10.distance >= full.distance - 1e-12).all())
    a = salign.analyze(model, x, candidates=10)
    assert torch.allclose(a.linearized_robustness, k10.distance)


def test_no_warnings_on_ordinary_input(smallnet8: nn.Module, x8: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        salign.analyze(smallnet8, x8)
        salign.alignment(smallnet8, x8, normalized=True)


@pytest.mark.slow
def test_efficientnet_lite0_photo_with_candidates() -> None:
    """K = 1000 on a real ImageNet model: candidates=10 gives finite quantities, ρ̃ ≤ runner-up's."""
    if not salign.models.efficientnet_lite0_available():
        pytest.skip("EfficientNet-Lite0 packages not installed")
    model = salign.models.build("efficientnet_lite0")
    x, _ = salign.data.load("photos", names=["chelsea"])
    a = salign.analyze(model, x, candidates=10)
    assert a.pred.shape == (1,) and 0 <= int(a.rival_nearest[0]) < 1000
    assert bool(torch.isfinite(a.alignment_binarized).all()) and bool((a.linearized_robustness > 0).all())
    ru = salign.linearized_robustness(model, x, rival="runner_up")
    assert float(a.linearized_robustness[0]) <= float(ru[0]) * (1 + 1e-5)
    assert bool(
        (a.bias_distance >= (a.alignment_binarized - a.linearized_robustness).abs() * (1 - 1e-4)).all()
    )


# ----------------------------------------------------------------------------- package layout, strategy


def test_public_names_are_reexported_unchanged() -> None:
    import salign.quantities as q

    assert q.__all__ == [
        "DEFAULT_STRATEGY", "STRATEGIES", "Analysis", "NearestRival", "alignment", "analyze",
        "bias_shifted_input", "class_gradients", "effective_bias", "linearized_robustness",
        "logit_vjps", "nearest_rival", "saliency",
    ]  # fmt: skip
    for name in q.__all__:
        assert getattr(q, name) is not None
    for name in ("saliency", "alignment", "linearized_robustness", "effective_bias", "bias_shifted_input",
                 "analyze", "Analysis"):  # fmt: skip
        assert getattr(salign, name) is getattr(q, name)
    assert callable(q.saliency) and callable(q.alignment)  # functions, not the submodules


def test_auto_strategy_is_the_loop_and_no_global_switch(
    monkeypatch: pytest.MonkeyPatch, smallnet8: nn.Module, x8: torch.Tensor
) -> None:
    """strategy="auto" resolves in one function; assigning the documented constant changes nothing."""
    import salign.quantities as q
    from salign.quantities import _graph

    assert _graph.auto_strategy() == q.DEFAULT_STRATEGY == "loop"
    assert _graph.resolve_strategy("auto") == _graph.resolve_strategy(None) == "loop"
    assert _graph.resolve_strategy("batched") == "batched"
    monkeypatch.setattr(q, "DEFAULT_STRATEGY", "vmap")
    monkeypatch.setattr(_graph, "DEFAULT_STRATEGY", "vmap")
    assert _graph.resolve_strategy("auto") == "loop"
    # create_graph=True would fail under "vmap": the default still works
    g = salign.saliency(smallnet8, x8, mode="logit", create_graph=True)
    assert g.shape == x8.shape
    with pytest.raises(InputError, match=r"strategy must be 'auto' or one of loop, batched, vmap"):
        _graph.resolve_strategy("fast")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_forward_errors_come_from_run_model(strategy: str) -> None:
    """The one forward of every quantity reports a wrong dtype or shape as run_model does."""
    model = salign.models.build("linear", input_shape=[4], num_classes=3)
    with pytest.raises(InputTypeError) as info:
        nearest_rival(model, torch.rand(2, 4, dtype=torch.float64), strategy=strategy)
    assert str(info.value) == (
        "x has dtype torch.float64 but the model's parameters are torch.float32; convert one of "
        "them (e.g. x.to(torch.float32) or model.to(torch.float64))"
    )
    with pytest.raises(InputError, match=r"model failed on x of shape \(2, 5\) and dtype torch\.float32"):
        salign.analyze(model, torch.rand(2, 5), strategy=strategy)


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_every_rival_choice_falls_back_to_the_runner_up_alike(strategy: str) -> None:
    """Where every binarized gradient vanishes, saliency/ρ̃/β and analyze use the same pair."""
    model = DeadForSome()
    x = torch.rand(10, 4, generator=torch.Generator().manual_seed(3))
    x[:4, 0] = 0.1
    x[4:, 0] = 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        an = salign.analyze(model, x, strategy=strategy)
        beta = salign.effective_bias(model, x, strategy=strategy)
        rho = salign.linearized_robustness(model, x, strategy=strategy)
        beta_ru = salign.effective_bias(model, x, rival=an.rival_runner_up, strategy=strategy)
    assert torch.equal(an.rival[:4], an.rival_runner_up[:4])
    assert torch.allclose(beta, an.effective_bias) and torch.allclose(beta[:4], beta_ru[:4])
    assert torch.allclose(an.margin[:4], an.logit_margin[:4])
    assert torch.equal(rho.isnan(), an.linearized_robustness.isnan())
