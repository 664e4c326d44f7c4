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


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole test module: the attack loops run many small ops, and on a
    loaded 2-core machine one thread is much faster. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
