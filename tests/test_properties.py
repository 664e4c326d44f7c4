"""Property tests (hypothesis) for the core quantities, the attacks and the training penalty.

Over input shapes ((N, D) and (N, C, H, W)), dtypes (float32/float64), batch sizes and seeds:

* batch invariance: a sample's result does not depend on the batch it is computed in;
* results keep the input's dtype and device;
* the caller's model is left exactly as it was: every submodule's train/eval flag, every
  parameter's ``requires_grad`` flag, existing ``.grad`` tensors (no gradient leaks into
  parameters) and BatchNorm running statistics.

Examples are bounded and derandomized, so the suite is fast and identical on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import salign
from salign import attacks, training

torch.set_num_threads(1)

PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

DTYPES = st.sampled_from([torch.float32, torch.float64])
# (input shape without the batch dimension, builder)
ARCHS: dict[str, tuple[tuple[int, ...], Callable[[], nn.Module]]] = {
    "mlp-flat": (
        (12,),
        lambda: salign.models.build("relu_mlp", input_shape=[12], hidden=[10], num_classes=4),
    ),
    "mlp-image": (
        (1, 4, 4),
        lambda: salign.models.build("relu_mlp", input_shape=[1, 4, 4], hidden=[8, 8], num_classes=3),
    ),
    "cnn": (
        (1, 8, 8),
        lambda: salign.models.build("relu_cnn", in_channels=1, channels=[3], num_classes=3, input_size=8),
    ),
    "linear-rgb": ((3, 3, 3), lambda: salign.models.build("linear", input_shape=[3, 3, 3], num_classes=5)),
}


def make(arch: str, dtype: torch.dtype, seed: int, n: int) -> tuple[nn.Module, Tensor]:
    shape, build = ARCHS[arch]
    torch.manual_seed(seed)
    model = build().to(dtype).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, *shape, generator=gen, dtype=dtype)
    return model, x


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}


problems = st.tuples(st.sampled_from(sorted(ARCHS)), DTYPES, st.integers(0, 2**16), st.integers(1, 6))

ANALYZE_COLUMNS = (
    "alignment",
    "alignment_binarized",
    "alignment_normalized",
    "linearized_robustness",
    "effective_bias",
    "grad_norm",
    "homogeneous_fraction",
)


@PROPERTY_SETTINGS
@given(problem=problems)
def test_analyze_is_batch_invariant(problem: tuple[str, torch.dtype, int, int]) -> None:
    arch, dtype, seed, n = problem
    model, x = make(arch, dtype, seed, n)
    batched = salign.analyze(model, x)
    singles = [salign.analyze(model, x[i : i + 1]) for i in range(n)]
    assert torch.equal(batched.pred, torch.cat([s.pred for s in singles]))
    same_rival = batched.rival == torch.cat([s.rival for s in singles])
    # the nearest rival is an argmin: an exact tie may break differently in another batch
    assert int(same_rival.sum()) >= n - (1 if dtype == torch.float32 else 0)
    for col in ANALYZE_COLUMNS:
        got = getattr(batched, col)
        assert got.dtype == dtype and got.shape == (n,), col
        want = torch.cat([getattr(s, col) for s in singles])
        torch.testing.assert_close(got[same_rival], want[same_rival], equal_nan=True, **tolerances(dtype))


@PROPERTY_SETTINGS
@given(problem=problems, mode=st.sampled_from(["logit", "binarized", "loss"]), chunk=st.integers(1, 4))
def test_saliency_is_batch_invariant(
    problem: tuple[str, torch.dtype, int, int], mode: str, chunk: int
) -> None:
    arch, dtype, seed, n = problem
    model, x = make(arch, dtype, seed, n)
    rival = "runner_up"  # a deterministic rival: the property is about batching, not about ties
    full = salign.saliency(model, x, mode=mode, rival=rival)  # type: ignore[arg-type]
    assert full.shape == x.shape and full.dtype == dtype
    parts = torch.cat(
        [salign.saliency(model, x[i : i + chunk], mode=mode, rival=rival) for i in range(0, n, chunk)]  # type: ignore[arg-type]
    )
    torch.testing.assert_close(full, parts, **tolerances(dtype))
    # analyze(batch_size=chunk) equals one big batch, too
    a_full = salign.analyze(model, x, rival="runner_up")
    a_chunked = salign.analyze(model, x, rival="runner_up", batch_size=chunk)
    for col in ANALYZE_COLUMNS:
        torch.testing.assert_close(
            getattr(a_full, col), getattr(a_chunked, col), equal_nan=True, **tolerances(dtype)
        )


@PROPERTY_SETTINGS
@given(
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    n=st.integers(1, 5),
    attack=st.sampled_from(["deepfool", "ddn", "fmn"]),
)
def test_attacks_are_batch_invariant(dtype: torch.dtype, seed: int, n: int, attack: str) -> None:
    """Each sample's verified distance does not depend on the other samples of its batch."""
    model, x = make("mlp-image", torch.float64, seed, n)
    model, x = model.to(dtype), x.to(dtype)
    fn = getattr(attacks, attack)
    options: dict[str, Any] = {"steps": 8} if attack == "deepfool" else {"steps": 25}
    batched = fn(model, x, **options)
    singles = [fn(model, x[i : i + 1], **options) for i in range(n)]
    dist = torch.cat([s.distance for s in singles])
    assert batched.distance.dtype == dtype and batched.adv.dtype == dtype
    assert torch.equal(batched.success, torch.cat([s.success for s in singles]))
    # every found point is verified adversarial; distances agree up to the line search resolution
    rtol = 1e-6 if dtype == torch.float64 and attack == "deepfool" else 1e-3
    torch.testing.assert_close(batched.distance, dist, rtol=rtol, atol=1e-6)
    pred = model(batched.adv).argmax(1)
    assert bool((pred[batched.success] != model(x).argmax(1)[batched.success]).all())


# ---------------------------------------------------------------------------------------------
# the caller's model is left untouched


class WithDropoutAndBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


CALLS: dict[str, Callable[[nn.Module, Tensor], Any]] = {
    "saliency": lambda m, x: salign.saliency(m, x),
    "alignment": lambda m, x: salign.alignment(m, x, mode="logit"),
    "linearized_robustness": lambda m, x: salign.linearized_robustness(m, x),
    "effective_bias": lambda m, x: salign.effective_bias(m, x),
    "analyze": lambda m, x: salign.analyze(m, x, batch_size=2),
    "deepfool": lambda m, x: attacks.deepfool(m, x, steps=3),
    "ddn": lambda m, x: attacks.ddn(m, x, steps=5),
    "alma": lambda m, x: attacks.alma(m, x, steps=5),
    "robustness": lambda m, x: salign.robustness(m, x, attacks=["deepfool", "fmn"], steps=5, quiet=True),
}


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


@PROPERTY_SETTINGS
@given(
    call=st.sampled_from(sorted(CALLS)),
    modes=st.lists(st.booleans(), min_size=9, max_size=9),
    frozen=st.lists(st.booleans(), min_size=6, max_size=6),
    with_grads=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_callers_model_is_left_as_it_was(
    call: str, modes: list[bool], frozen: list[bool], with_grads: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    model = WithDropoutAndBatchNorm()
    model(torch.rand(8, 1, 4, 4))  # non-trivial running statistics
    for module, flag in zip(model.modules(), modes, strict=False):
        module.training = flag
    for p, f in zip(model.parameters(), frozen, strict=True):
        p.requires_grad_(not f)
        if with_grads:
            p.grad = torch.randn_like(p)
    before = snapshot(model)
    x = torch.rand(4, 1, 4, 4)
    x_before = x.clone()
    CALLS[call](model, x)
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), "a parameter gradient changed"
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), f"{key} changed"
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


@PROPERTY_SETTINGS
@given(problem=problems, method=st.sampled_from(["double_backprop", "finite_difference"]))
def test_gradient_penalty_is_a_per_sample_mean(
    problem: tuple[str, torch.dtype, int, int], method: str
) -> None:
    """mean over the batch of the per-sample penalties, and no parameter .grad is written."""
    arch, dtype, seed, n = problem
    model, x = make(arch, dtype, seed, n)
    y = torch.arange(n) % 3
    batched = training.gradient_norm_penalty(model, x, y, method=method)  # type: ignore[arg-type]
    singles = torch.stack(
        [training.gradient_norm_penalty(model, x[i : i + 1], y[i : i + 1], method=method) for i in range(n)]  # type: ignore[arg-type]
    )
    assert batched.dtype == dtype and batched.requires_grad
    torch.testing.assert_close(batched.detach(), singles.detach().mean(), **tolerances(dtype))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_archs_build(arch: str) -> None:
    model, x = make(arch, torch.float32, 0, 2)
    assert model(x).shape[0] == 2


# ---------------------------------------------------------------------------------------------
# security: what a config names cannot make the pipeline write outside its run directory


@PROPERTY_SETTINGS
@given(
    lambdas=st.lists(
        st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False), min_size=1, max_size=5
    ),
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
)
def test_run_paths_stay_inside_the_run_directory(
    lambdas: list[float], name: str, tmp_path_factory: Any
) -> None:
    from salign.errors import ConfigError
    from salign.report.rundata import EVAL_DIR, MODELS_DIR, lambda_tag

    try:
        cfg = salign.experiments.config_from_dict(
            {"name": name, "training": {"epochs": 1}, "sweep": {"lambdas": lambdas}}
        )
    except ConfigError:
        return  # e.g. two λ with the same tag: refused, nothing written
    run_dir = (tmp_path_factory.getbasetemp() / "runs" / cfg.name).resolve()
    assert run_dir.parent.name == "runs"
    for lam in cfg.lambdas():
        tag = lambda_tag(lam)
        assert "/" not in tag and "\\" not in tag and tag not in ("", ".", "..")
        for path in (
            run_dir / MODELS_DIR / tag / "checkpoint.safetensors",
            run_dir / EVAL_DIR / f"{tag}.csv",
        ):
            assert path.resolve().is_relative_to(run_dir)
