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
