"""Shared test settings: few threads (the CI machine has 2 cores), quiet progress bars."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("SALIGN_QUIET", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
