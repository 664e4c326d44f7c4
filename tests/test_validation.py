"""Shared argument checks: every bad input gets an error that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salign._io import atomic_open, write_json_atomic
from salign._validation import check_inputs, check_labels, check_logits, check_model, eval_mode
from salign.errors import InputError, InputTypeError, ModelOutputError


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        ([0.5], InputTypeError, "must be a torch.Tensor"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), InputTypeError, "floating tensor.*uint8"),
        (torch.zeros(1, 4, 4), InputError, "unsqueeze"),
        (torch.zeros(0, 1, 4, 4), InputError, "empty batch"),
        (torch.zeros(2, 28, 28, 1), InputError, "channels-last"),
        (torch.tensor([[0.1, float("nan")]]), InputError, "NaN or Inf.*1 of 1"),
        (torch.full((2, 3), 2.0), InputError, r"\[0, 1\]"),
    ],
)
def test_bad_inputs_are_named(x, error, match) -> None:
    with pytest.raises(error, match=match):
        check_inputs(x, name="x")


def test_range_check_can_be_skipped() -> None:
    x = torch.full((2, 3), 200.0)
    assert check_inputs(x, check_range=False) is x


def test_labels_checks() -> None:
    with pytest.raises(InputError, match=r"labels must be in \[0, 10\)"):
        check_labels(torch.tensor([0, 10]), 2, 10)
    with pytest.raises(InputError, match=r"shape \(3,\)"):
        check_labels(torch.tensor([0, 1]), 3, 10)
    with pytest.raises(InputTypeError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 2, 10)


def test_logit_checks_and_probability_warning() -> None:
    with pytest.raises(ModelOutputError, match=r"shape \(N, K\)"):
        check_logits(torch.zeros(2, 3, 4), 2)
    with pytest.raises(ModelOutputError, match="NaN or Inf"):
        check_logits(torch.tensor([[0.0, float("inf")]]), 1)
    with pytest.warns(UserWarning, match="probabilities"):
        check_logits(torch.tensor([[0.2, 0.8], [0.5, 0.5]]), 2)


def test_model_check_names_type_and_device() -> None:
    with pytest.raises(InputTypeError, match=r"nn\.Module"):
        check_model(lambda x: x)
    model = nn.Linear(2, 2)
    assert check_model(model, torch.zeros(1, 2)) is model


def test_eval_mode_restores_mixed_modes_even_on_error() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    model[1].eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training and not model[0].training
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training


def test_atomic_writes_leave_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(OSError), atomic_open(target) as fh:
        fh.write("partial")
        raise OSError("disk full")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def _old_value_checks(x: torch.Tensor, check_range: bool) -> str | None:
    """The finiteness and range checks as they were written before the fused aminmax pass."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        return f"x contains NaN or Inf values (in {bad} of {x.shape[0]} samples)"
    if check_range:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-5 or hi > 1 + 1e-5:
            return (
                "x must be in [0, 1] (normalisation belongs inside the model), got values "
                f"in [{lo:.4g}, {hi:.4g}]; pass check_range=False to skip this check"
            )
    return None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("check_range", [True, False])
@pytest.mark.parametrize(
    "poison",
    [None, float("nan"), float("inf"), -float("inf"), 1.5, -0.25, 1 + 1e-6, -1e-6, 250.0],
)
def test_fused_value_check_gives_the_old_messages(dtype, check_range, poison) -> None:
    """check_inputs' one aminmax pass rejects exactly what the separate passes rejected, with
    the same message (NaN/±inf counted per sample, the range with its extremes)."""
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    if poison is not None:
        x[1, 0, 2, 3] = poison
        x[3, 0, 5, 5] = poison
        x[3, 0, 0, 1] = poison
    views = [x, x.permute(0, 1, 3, 2), x.flatten(1)]  # contiguous, strided, (N, D)
    for v in views:
        expected = _old_value_checks(v, check_range)
        if expected is None:
            assert check_inputs(v, check_range=check_range) is v
        else:
            with pytest.raises(InputError) as info:
                check_inputs(v, check_range=check_range)
            assert str(info.value) == expected


def test_value_check_ignores_autograd_and_keeps_the_tensor() -> None:
    x = torch.rand(3, 4, requires_grad=True)
    assert check_inputs(x) is x
    assert x.grad is None


def test_run_model_names_both_dtypes_on_a_dtype_mismatch() -> None:
    from salign._validation import run_model

    model = nn.Linear(4, 3)
    with pytest.raises(InputTypeError) as info:
        run_model(model, torch.rand(2, 4, dtype=torch.float64))
    assert str(info.value) == (
        "x has dtype torch.float64 but the model's parameters are torch.float32; convert one of "
        "them (e.g. x.to(torch.float32) or model.to(torch.float64))"
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(InputError, match=r"model failed on x of shape \(2, 5\) and dtype torch\.float32"):
        run_model(model, torch.rand(2, 5))
