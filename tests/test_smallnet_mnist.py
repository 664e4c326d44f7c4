"""End to end on the real data: SmallNet reaches ≥ 97% MNIST test accuracy after one epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import salign
from salign.training import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "smallnet-1epoch.yaml"


@pytest.mark.slow
def test_smallnet_one_epoch_reaches_97_percent(tmp_path: Path) -> None:
    checkpoint = train(str(CONFIG), run_dir=tmp_path, quiet=True)
    model = salign.models.load(checkpoint)
    x, y = salign.data.load("mnist", "test")
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    accuracy = float((pred == y).float().mean())
    assert accuracy >= 0.97, accuracy
