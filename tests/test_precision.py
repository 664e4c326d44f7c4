"""bf16 autocast in the penalised step against fp32 (``salign.training.precision``).

Pins, loosely, what docs/benchmarks/imagenet.md reports for SmallNet on MNIST (CPU bf16
autocast; random initialisation, eval mode, 64 test images): the batch-mean penalty within
~0.2 % of fp32, its parameter gradient at cosine ~0.996, and that gradient less accurate than
the plain cross-entropy's (the double backward rounds twice).
"""

from __future__ import annotations

import torch

import salign
from salign.training.precision import autocast_agreement


def test_bf16_penalty_close_to_fp32_on_smallnet_mnist() -> None:
    torch.manual_seed(0)
    model = salign.models.build("smallnet")
    x, y = salign.data.load("mnist", "test")
    r = autocast_agreement(model, x[:64], y[:64], precision="bf16", train_mode=False)
    assert 0 < r["penalty_rel"] < 0.02  # measured 1.3e-3 … 2.3e-3 over seeds 0–2
    assert r["penalty_rel_max_example"] < 0.3  # measured 0.05–0.07
    assert 0.98 < r["grad_penalty_cos"] < 1  # measured 0.996–0.997
    assert r["grad_ce_cos"] > 0.99  # measured 0.999–0.9996
    assert r["grad_penalty_rel"] > r["grad_ce_rel"]  # measured 0.075–0.090 vs 0.028–0.044
    assert not model.training  # the mode asked for is the mode left


def test_fp32_against_itself_is_exact() -> None:
    torch.manual_seed(0)
    model = salign.models.build("smallnet")
    x, y = salign.data.load("mnist", "test")
    r = autocast_agreement(model, x[:8], y[:8], precision="fp32", train_mode=True)
    assert r["penalty_rel"] == 0 and r["grad_penalty_cos"] > 0.999999 and r["grad_ce_rel"] == 0
