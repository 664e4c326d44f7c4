"""Memory is bounded while training and evaluating on a streamed ImageFolder of 5,000 real-photo JPEGs.

Runs the memory part of ``benchmarks/bench_imagenet.py`` (a generated tree of 4,500 training and
500 test JPEGs of real photo content, long side 192–256 px, which the in-memory reader would hold
as 3 GiB of float32 224² tensors; one epoch
of ``salign.training.train`` (a small CNN) with double backprop and 2 loader workers, then validation on every
test image, in a fresh process) and asserts the peaks it measures stay below 2 GiB: the main
process's peak RSS, and the process tree's peak summed PSS (forked workers share the parent's
pages, which a sum of RSS would count once per process). A memory bound, not a time bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


@pytest.mark.slow
def test_peak_memory_below_2_gib_on_5000_streamed_images(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_imagenet.py"), "--only", "memory", "--no-write",
           "--memory-train-per-class", "450", "--memory-test-per-class", "50", "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    mem = json.loads(out.read_text(encoding="utf-8"))["memory"]
    assert mem["n_train"] + mem["n_test"] >= 5000
    assert (
        mem["n_train"] + mem["n_test"]
    ) * 3 * 224 * 224 * 4 > 2 * GIB  # what an in-memory 224² split takes
    assert mem["main_peak"] < 2 * GIB
    assert mem["tree_pss_peak"] < 2 * GIB
    assert mem["max_processes_sampled"] >= 3  # the workers were there and were counted
