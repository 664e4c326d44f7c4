"""Input-gradient penalties, configs, training-state checkpoints and the trainer (single process)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from _training_helpers import tiny_config, tiny_data
from salign import models
from salign.errors import CheckpointError, ConfigError, InputError
from salign.training import (
    config_from_dict,
    ddn_examples,
    gradient_norm_penalty,
    load_config,
    load_state,
    lr_at,
    pgd_l2_examples,
    train,
)
from salign.training.state import TrainState, save_state

ROOT = Path(__file__).resolve().parents[1]


class TanhNet(nn.Module):
    def __init__(self, d: int = 5, k: int = 3) -> None:
        super().__init__()
        self.l1 = nn.Linear(d, 7)
        self.l2 = nn.Linear(7, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))


class Functional(nn.Module):
    """The base network evaluated at explicit parameter tensors (for gradcheck w.r.t. them)."""

    def __init__(self, base: nn.Module, names: list[str], params: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.base, self.names, self.params = base, names, params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, dict(zip(self.names, self.params, strict=True)), (x,))


@pytest.mark.parametrize(("target", "p"), [("loss", 2.0), ("logit", 2.0), ("binarized", 2.0), ("loss", 1.5)])
def test_penalty_parameter_gradient_matches_finite_differences(target: str, p: float) -> None:
    torch.manual_seed(1)
    base = TanhNet().double()
    names = [n for n, _ in base.named_parameters()]
    params = tuple(q.detach().clone().requires_grad_(True) for q in base.parameters())
    x = torch.rand(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])

    def penalty(*ps: torch.Tensor) -> torch.Tensor:
        return gradient_norm_penalty(Functional(base, names, ps), x, y, p=p, target=target)

    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_penalty_exact_for_linear_model_and_batch_mean_scaling() -> None:
    torch.manual_seed(0)
    model = models.build("linear", input_shape=[1, 4, 4], num_classes=5).double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    w = model.fc.weight.detach()
    # logit target: ∇_x Ψ^y = W_y exactly.
    exact = (w[y] ** 2).sum(1).mean()
    got = gradient_norm_penalty(model, x, y, target="logit")
    assert torch.allclose(got, exact, rtol=1e-12)
    # loss target: ∇_x CE = W^T (softmax − onehot).
    probs = F.softmax(model(x), 1).detach()
    g = (probs - F.one_hot(y, 5).double()) @ w
    per_example = (g**2).sum(1).mean()
    pen, ce = gradient_norm_penalty(model, x, y, return_loss=True)
    assert torch.allclose(pen, per_example, rtol=1e-10)
    assert torch.allclose(ce, F.cross_entropy(model(x), y), rtol=1e-12)
    # The authors' form: G = ∇_x mean CE, penalty mean_i ‖G_i‖² = per-example / B².
    xr = x.clone().requires_grad_(True)
    (big_g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    authors = big_g.flatten(1).pow(2).sum(1).mean()
    batch_mean = gradient_norm_penalty(model, x, y, scaling="batch_mean")
    assert torch.allclose(batch_mean, authors, rtol=1e-10)
    assert torch.allclose(batch_mean * 36, per_example, rtol=1e-10)
    # p = 1 and p = inf
    assert torch.allclose(gradient_norm_penalty(model, x, y, p=1), g.abs().sum(1).mean(), rtol=1e-10)
    assert torch.allclose(gradient_norm_penalty(model, x, y, p=math.inf), g.abs().amax(1).mean(), rtol=1e-10)


@pytest.mark.parametrize("target", ["loss", "logit", "binarized"])
def test_finite_difference_approximates_double_backprop(target: str) -> None:
    """|FD − DB| / DB ≤ 20·h on a smooth float64 net (error is O(h)); ≤ 1e-6 relative at h = 1e-7."""
    torch.manual_seed(2)
    model = TanhNet(d=8, k=4).double()
    x = torch.rand(16, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    exact = gradient_norm_penalty(model, x, y, target=target)
    exact_value = float(exact.detach())
    for h in (1e-2, 1e-3, 1e-4):
        fd = gradient_norm_penalty(model, x, y, target=target, method="finite_difference", h=h)
        assert abs(float(fd.detach()) - exact_value) / exact_value <= 20 * h
    fd = gradient_norm_penalty(model, x, y, target=target, method="finite_difference", h=1e-7)
    assert abs(float(fd.detach()) - exact_value) / exact_value <= 1e-5
    # and its parameter gradient points the same way as the exact one
    g_exact = torch.autograd.grad(exact, list(model.parameters()), materialize_grads=True)
    fd = gradient_norm_penalty(model, x, y, target=target, method="finite_difference", h=1e-5)
    g_fd = torch.autograd.grad(fd, list(model.parameters()), materialize_grads=True)
    a, b = torch.cat([t.flatten() for t in g_exact]), torch.cat([t.flatten() for t in g_fd])
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))


def test_finite_difference_on_relu_smallnet_float32() -> None:
    """ReLU nets are piecewise linear: at h = 1e-3 (input units) FD is within 2 % of the exact value."""
    torch.manual_seed(0)
    model = models.build("smallnet").eval()
    x = torch.rand(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    exact = float(gradient_norm_penalty(model, x, y).detach())
    fd = float(gradient_norm_penalty(model, x, y, method="finite_difference", h=1e-3).detach())
    assert abs(fd - exact) / exact < 0.02


def _same_linear_region(model: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float) -> torch.Tensor:
    """Examples whose ReLU pattern and max-pool choices are the same at x and at x + h·d.

    d is the penalty's direction, the normalised input gradient of the cross-entropy.
    """
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    d = g / g.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))

    def pattern(inputs: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(module, nn.MaxPool2d):
                out = F.max_pool2d(args[0], module.kernel_size, return_indices=True)[1]
            else:
                out = out > 0
            seen.append(out.flatten(1))

        kinks = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
        handles = [m.register_forward_hook(hook) for m in kinks]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        return seen

    same = torch.ones(len(x), dtype=torch.bool)
    for a, b in zip(pattern(x), pattern(x + h * d), strict=True):
        same &= (a == b).all(1)
    return same


def _penalty_and_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    """The penalty value followed by its gradient w.r.t. all parameters, as one flat vector."""
    pen = gradient_norm_penalty(model, x, y, **kwargs)  # type: ignore[arg-type]
    assert isinstance(pen, torch.Tensor)
    grads = torch.autograd.grad(pen, list(model.parameters()))
    return torch.cat([pen.detach().reshape(1), *(t.flatten() for t in grads)])


@pytest.mark.parametrize(
    ("dtype", "h", "rtol"),
    [
        # float32, the dtype the trainer ships with. Inside one linear region of a ReLU net the
        # logits are affine in x, so FD − DB has two sources only: the curvature of the
        # cross-entropy along d (relative error ≈ h·dᵀ∇²CE d / (2‖g‖), ≈ 1e-4 here) and
        # rounding, ε₃₂·|CE| / (h·‖g‖) ≈ 6e-8 · 2.3 / (3e-3 · 0.1) ≈ 5e-4 on the difference
        # quotient, doubled by the square and again in the parameter gradient (a difference of
        # two parameter gradients of size O(1) whose difference is O(h)). Measured over ten
        # seeds: at most 1.1e-3 for the value and 8e-4 for the gradient; 5e-3 leaves a margin
        # without hiding an O(1) error. h = 3e-3 is where the two sources balance (at 1e-3
        # rounding gives 1.6e-3; at 1e-2 most examples cross a kink).
        (torch.float32, 3e-3, 5e-3),
        # float64: rounding is 1e-16 / h, so a small h leaves only the O(h) curvature term
        # (measured 2.5e-8 at h = 1e-6).
        (torch.float64, 1e-6, 1e-6),
    ],
)
def test_finite_difference_matches_double_backprop_on_a_relu_cnn(
    dtype: torch.dtype, h: float, rtol: float
) -> None:
    """FD penalty and its parameter gradient equal double backprop's, on examples without kinks.

    Across a ReLU or max-pool kink between x and x + h·d the parameter gradient of the difference
    quotient jumps by O(1)/h (any finite difference does), so the examples that cross one are
    left out (checked with hooks); for the others the comparison is tight.
    """
    torch.manual_seed(0)
    model = models.build("relu_cnn", channels=(8, 16), input_size=16, num_classes=10).to(dtype).eval()
    x = torch.rand(16, 1, 16, 16, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    same = _same_linear_region(model, x, y, h)
    assert int(same.sum()) >= 8, "too few examples stay in their linear region: lower h"
    x, y = x[same], y[same]
    exact = _penalty_and_gradient(model, x, y, method="double_backprop")
    fd = _penalty_and_gradient(model, x, y, method="finite_difference", h=h)
    assert fd.dtype == dtype
    assert abs(float(fd[0] - exact[0])) <= rtol * float(exact[0])
    assert float((fd[1:] - exact[1:]).norm()) <= rtol * float(exact[1:].norm())


def test_penalty_does_not_touch_model_or_inputs() -> None:
    model = TanhNet()
    model.train()
    x = torch.rand(3, 5)
    y = torch.tensor([0, 1, 2])
    gradient_norm_penalty(model, x, y, method="finite_difference")
    assert model.training and not x.requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"method": "triple"}, "method"),
        ({"target": "probability"}, "target"),
        ({"scaling": "sum"}, "scaling"),
        ({"p": 0.5}, "p"),
        ({"h": 0.0}, "h"),
        ({"p": math.inf, "method": "finite_difference"}, "p = inf"),
    ],
)
def test_penalty_rejects_bad_options(kwargs: dict, word: str) -> None:
    with pytest.raises(InputError, match=word):
        gradient_norm_penalty(TanhNet(), torch.rand(2, 5), torch.tensor([0, 1]), **kwargs)


def test_penalty_rejects_bad_inputs() -> None:
    with pytest.raises(InputError, match="y must have shape"):
        gradient_norm_penalty(TanhNet(), torch.rand(2, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match=r"x must be in \[0, 1\]"):
        gradient_norm_penalty(TanhNet(), torch.rand(2, 5) * 3, torch.tensor([0, 1]))


def test_adversarial_examples_stay_in_budget_and_raise_loss() -> None:
    torch.manual_seed(0)
    model = TanhNet(d=36, k=4)
    x, y, _, _ = tiny_data(32, 0)
    x = x.flatten(1)
    adv = pgd_l2_examples(model, x, y, epsilon=0.5, steps=5)
    assert float((adv - x).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    adv2 = ddn_examples(model, x, y, max_norm=0.5, steps=20)
    assert float((adv2 - x).norm(dim=1).max()) <= 0.5 + 1e-5
    assert F.cross_entropy(model(adv2), y) > F.cross_entropy(model(x), y)


# --------------------------------------------------------------------------- configs


def test_config_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'regularizer.lamda'"):
        config_from_dict({"regularizer": {"lamda": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown key 'epochz'"):
        config_from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match=r"optimizer.name"):
        config_from_dict({"optimizer": {"name": "rmsprop"}})


def test_config_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_paper_config_matches_the_authors_settings() -> None:
    cfg = load_config(ROOT / "configs" / "mnist-paper.yaml")
    assert cfg.model.name == "smallnet" and cfg.epochs == 200 and cfg.batch_size == 100
    assert (
        cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 1e-6
    )
    assert cfg.regularizer.scaling == "batch_mean" and cfg.regularizer.lambda_ == 10
    assert [lr_at(cfg, e) for e in (0, 79, 80, 159, 160, 199)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    )
    assert cfg.with_overrides(**{"regularizer.lambda": 0.01}).regularizer.lambda_ == 0.01


# --------------------------------------------------------------------------- checkpoints and trainer


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_training_state_roundtrip(tmp_path: Path, opt_name: str) -> None:
    torch.manual_seed(0)
    model = TanhNet()
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if opt_name == "sgd"
        else torch.optim.Adam(model.parameters(), lr=0.01)
    )
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(4, 5)).pow(2).sum().backward()
        opt.step()
    st = TrainState(epoch=3, step=2, global_step=17, history=[{"epoch": 1, "loss": 0.5}])
    path = save_state(tmp_path / "state.safetensors", model=model, optimizer=opt, schedule={"lr": 0.1},
                      state=st, config={"a": 1})  # fmt: skip
    expected_rng = torch.rand(5)
    model2 = TanhNet()
    opt2 = type(opt)(model2.parameters(), lr=0.5)
    loaded = load_state(path)
    assert loaded.apply(model2, opt2)
    assert torch.equal(torch.rand(5), expected_rng)  # RNG restored to the saved point
    assert (loaded.state.epoch, loaded.state.step, loaded.state.global_step) == (3, 2, 17)
    assert loaded.state.history == st.history and loaded.config == {"a": 1}
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, v in s1["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][k][name]))


def test_state_loader_refuses_other_files(tmp_path: Path) -> None:
    m = models.build("linear", input_shape=[4], num_classes=2)
    p = models.save(m, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a salign training state"):
        load_state(p)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "junk.safetensors")


def test_train_writes_log_checkpoint_and_is_deterministic(tmp_path: Path) -> None:
    data = tiny_data()
    cfg = tiny_config(checkpoint_every_steps=2)
    p1 = train(cfg, run_dir=tmp_path / "a", data=data)
    p2 = train(cfg, run_dir=tmp_path / "b", data=data)
    m1, m2 = models.load(p1), models.load(p2)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    rows = (tmp_path / "a" / "train_log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,loss,cross_entropy,penalty,train_grad_norm")
    assert len(rows) == 3
    # rerunning a finished run returns the same checkpoint without training
    mtime = p1.stat().st_mtime_ns
    assert train(cfg, run_dir=tmp_path / "a", data=data) == p1
    # a resumed run with a different regulariser is refused
    with pytest.raises(CheckpointError, match="different config"):
        train(tiny_config(regularizer={"lambda": 2.0}), run_dir=tmp_path / "a", data=data)
    assert p1.stat().st_mtime_ns >= mtime


def test_resume_extends_epochs_bit_identically(tmp_path: Path) -> None:
    data = tiny_data()
    full = train(tiny_config(epochs=3), run_dir=tmp_path / "full", data=data)
    train(tiny_config(epochs=1), run_dir=tmp_path / "part", data=data)
    resumed = train(tiny_config(epochs=3), run_dir=tmp_path / "part", data=data)
    for a, b in zip(
        models.load(full).state_dict().values(), models.load(resumed).state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "variant",
    [
        {"regularizer": {"lambda": 0.5, "method": "finite_difference", "penalty_fraction": 0.5}},
        {"regularizer": {"lambda": 0.5, "target": "binarized", "batchnorm": "running"}},
        {"regularizer": {"lambda": 0.0}, "adversarial": {"method": "pgd_l2", "epsilon": 0.3, "steps": 2}},
        {
            "regularizer": {"lambda": 0.0},
            "adversarial": {"method": "ddn", "epsilon": 0.3, "steps": 3, "clean_weight": 0.5},
        },
        {"optimizer": {"name": "adam", "lr": 0.01}, "schedule": {"name": "cosine"}},
    ],
)
def test_trainer_variants_run_and_learn(tmp_path: Path, variant: dict) -> None:
    data = tiny_data()
    path = train(tiny_config(epochs=3, **variant), run_dir=tmp_path, data=data)
    model = models.load(path)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 4
    assert all(math.isfinite(float(v)) for v in log[-1].split(",")[:5])
    assert model(data[0]).shape == (96, 4)


def test_penalty_lowers_input_gradient_norm(tmp_path: Path) -> None:
    data = tiny_data()
    norms = []
    for lam in (0.0, 5.0):
        path = train(
            tiny_config(epochs=4, regularizer={"lambda": lam}), run_dir=tmp_path / str(lam), data=data
        )
        model = models.load(path)
        x = data[2].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), data[3], reduction="sum"), x)
        norms.append(float(g.flatten(1).norm(dim=1).mean()))
    assert norms[1] < 0.7 * norms[0]


def test_cli_train_overrides_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from salign.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {name: relu_mlp, kwargs: {input_shape: [1, 6, 6], hidden: [8], num_classes: 3}}\n"
        "data: {name: synthetic-gaussian, options: {n: 60, num_classes: 3, shape: [1, 6, 6]}, val_subset: 30}\n"
        "epochs: 3\nbatch_size: 20\ntensorboard: false\n"
    )
    main(["train", str(cfg), "--lambda", "0.25", "--epochs", "1", "--out", str(tmp_path / "run"), "-q"])
    meta = models.checkpoint.read_metadata(tmp_path / "run" / "checkpoint.safetensors")
    assert float(meta["lambda"]) == 0.25 and int(meta["epochs"]) == 1
    assert len((tmp_path / "run" / "train_log.csv").read_text().splitlines()) == 2
    cfg.write_text(cfg.read_text() + "optimiser: {lr: 1}\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(cfg), "--out", str(tmp_path / "run2")])
    assert exc.value.code == 2
    assert "unknown key 'optimiser'" in capsys.readouterr().err


def test_finite_difference_in_train_mode_uses_the_same_dropout_masks() -> None:
    """Dropout active: the forward at x + h d must see the first forward's masks.

    With a fresh mask the difference measures the change of mask, O(1)/h: the penalty came out
    ~10⁶ times the double-backprop value before the random state was replayed.
    """
    torch.manual_seed(0)
    model = models.build("smallnet").double().train()  # Dropout(0.5) in the classifier
    x = torch.rand(20, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (20,))
    torch.manual_seed(1)
    exact = gradient_norm_penalty(model, x, y, method="double_backprop")
    torch.manual_seed(1)
    approx = gradient_norm_penalty(model, x, y, method="finite_difference", h=1e-4)
    assert float(approx) == pytest.approx(float(exact), rel=1e-2)
    # the random stream advances as if the step had one forward
    torch.manual_seed(1)
    model(x)
    after_one_forward = torch.get_rng_state()
    torch.manual_seed(1)
    gradient_norm_penalty(model, x, y, method="finite_difference", h=1e-4)
    assert torch.equal(torch.get_rng_state(), after_one_forward)
