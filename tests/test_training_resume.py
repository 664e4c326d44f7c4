"""Kill-and-resume: SIGKILL a training process mid-epoch, restart it, get bit-identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from _training_helpers import SlowMLP, num_threads, slow_config, tiny_data
from salign import models
from salign.models.registry import MODELS
from salign.training import STATE_FILE, load_state, train

HELPERS = Path(__file__).with_name("_training_helpers.py")


def _position(path: Path) -> dict | None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})["position"])
    except Exception:
        return None


def _launch(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "SALIGN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HELPERS), str(run_dir)], env=env)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with num_threads(1):
        yield


def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.setitem(MODELS, "slow_mlp_test", SlowMLP)
    reference = train(slow_config(), run_dir=tmp_path / "reference", data=tiny_data())

    run_dir = tmp_path / "killed"
    state = run_dir / STATE_FILE
    seen: list[dict] = []
    for kill_after in (1,):  # (2,) adds a second kill after a later mid-epoch checkpoint
        proc = _launch(run_dir)
        deadline = time.monotonic() + 120
        start_pos = _position(state)
        try:
            while time.monotonic() < deadline:
                pos = _position(state)
                base = (start_pos or {"global_step": 0})["global_step"]
                fresh = pos is not None and pos != start_pos and pos["step"] > 0
                if fresh and (kill_after == 1 or pos["global_step"] >= base + 6):
                    break
                if proc.poll() is not None:
                    pytest.fail("training finished before it could be killed; make the model slower")
                time.sleep(0.005)
            else:
                pytest.fail("no mid-epoch checkpoint appeared")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # The latest checkpoint is always a complete file that loads, mid-epoch.
        loaded = load_state(state)
        seen.append({"epoch": loaded.state.epoch, "step": loaded.state.step})
        assert loaded.state.step > 0 or loaded.state.epoch > 0
    assert any(s["step"] > 0 for s in seen)

    proc = _launch(run_dir)
    assert proc.wait(timeout=300) == 0
    assert not list(run_dir.glob(".*.tmp")), "stale temporary files left behind"
    ref = models.load(reference).state_dict()
    got = models.load(run_dir / "checkpoint.safetensors").state_dict()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_log = (tmp_path / "reference" / "train_log.csv").read_text().splitlines()
    got_log = (run_dir / "train_log.csv").read_text().splitlines()
    assert len(got_log) == len(ref_log) == 3
    # every column but the timings (seconds, images_per_second) is identical
    for a, b in zip(ref_log[1:], got_log[1:], strict=True):
        assert a.split(",")[:-2] == b.split(",")[:-2]
