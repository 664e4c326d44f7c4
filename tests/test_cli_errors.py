"""Every CLI command answers bad input with a one-line error and a non-zero exit, never a traceback.

Errors salign raises on purpose exit with status 2, OS errors (full disk, unwritable output)
with 1, usage errors (missing argument, unknown option) with click's 2; ``--debug`` shows the
traceback instead. Most cases run in-process through :func:`salign.cli.main` (fast); a few run
the real ``python -m salign.cli`` to check what a user's terminal shows.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import salign
from _hardening_helpers import checkpoint_for_other_architecture, malicious_pickle, tiny_mlp
from salign.cli import main
from salign.errors import MissingFileError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints and configs, good and bad, in one folder."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    # fits the default synthetic-gaussian data: (1, 8, 8) inputs, 2 classes
    good = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[8], num_classes=2)
    salign.models.save(good, d / "good.safetensors")
    salign.models.save(tiny_mlp(), d / "small.safetensors")  # (1, 4, 4) inputs: does not fit the data
    (d / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    checkpoint_for_other_architecture(d / "other.safetensors")
    malicious_pickle(d / "evil.pt", d / "PWNED")
    texts = {
        "train_unknown.yaml": "epochs: 1\nbogus: 3\n",
        "train_type.yaml": "epochs: many\n",
        "train_syntax.yaml": "epochs: [1\n",
        "train_list.yaml": "- 1\n- 2\n",
        "train_ok.yaml": "epochs: 1\n",
        "train_misfit.yaml": (
            "epochs: 1\nbatch_size: 8\ndata: {name: synthetic-gaussian, train_subset: 16, val_subset: 8}\n"
            "model: {name: relu_mlp, kwargs: {input_shape: [1, 4, 4], hidden: [4], num_classes: 2}}\n"
        ),
        "train_classes.yaml": (
            "epochs: 1\nbatch_size: 8\n"
            "data: {name: synthetic-gaussian, train_subset: 16, val_subset: 8, options: {num_classes: 3}}\n"
            "model: {name: relu_mlp, kwargs: {input_shape: [1, 8, 8], hidden: [4], num_classes: 2}}\n"
        ),
        "study_unknown.yaml": "name: x\nbogus: 1\n",
        "study_escape.yaml": "name: ../../outside\n",
        "study_type.yaml": "name: x\nevaluation: {n: lots}\n",
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    (d / "empty_run").mkdir()
    corrupt_run = d / "corrupt_run" / "eval"
    corrupt_run.mkdir(parents=True)
    (corrupt_run / "0.csv").write_text("id,alignment\n0,0.5\n")
    (corrupt_run / "0.json").write_text("{not json")
    cifar = d / "cifar-10-batches-py"
    cifar.mkdir()
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ):
        malicious_pickle(cifar / name, d / "PWNED")
    (d / "a_file").write_text("not a folder")
    return d


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out, err


SYN = ["--data", "synthetic-gaussian", "--n", "4", "--quiet"]

#: (id, argv with {d} for the files folder, exit status, regex the one error line must match)
CASES: list[tuple[str, list[str], int, str]] = [
    # analyze
    ("analyze-missing-checkpoint", ["analyze", "{d}/gone.safetensors", *SYN], 2, r"checkpoint not found: .*gone"),
    ("analyze-corrupt-checkpoint", ["analyze", "{d}/corrupt.safetensors", *SYN], 2, r"corrupt\.safetensors is not a readable"),
    ("analyze-other-architecture", ["analyze", "{d}/other.safetensors", *SYN], 2, r"weights do not match model 'linear'"),
    ("analyze-malicious-pickle", ["analyze", "{d}/evil.pt", *SYN], 2, r"evil\.pt"),
    ("analyze-unknown-dataset", ["analyze", "{d}/good.safetensors", "--data", "imagenet"], 2, r"unknown dataset 'imagenet'"),
    ("analyze-unknown-split", ["analyze", "{d}/good.safetensors", *SYN, "--split", "val"], 2, r"unknown split 'val'"),
    ("analyze-negative-n", ["analyze", "{d}/good.safetensors", *SYN, "--n", "-1"], 2, r"--n must be"),
    ("analyze-batch-size-0", ["analyze", "{d}/good.safetensors", *SYN, "--batch-size", "0"], 2, r"--batch-size must be"),
    ("analyze-bad-rival", ["analyze", "{d}/good.safetensors", *SYN, "--rival", "random"], 2, r"--rival must be"),
    ("analyze-bad-candidates", ["analyze", "{d}/good.safetensors", *SYN, "--candidates", "0"], 2, r"candidates must be"),
    ("analyze-bad-device", ["analyze", "{d}/good.safetensors", *SYN, "--device", "gpu0"], 2, r"--device .*gpu0"),
    ("analyze-meta-device", ["analyze", "{d}/good.safetensors", *SYN, "--device", "meta"], 2, r"--device .*meta"),
    ("analyze-model-does-not-fit-data", ["analyze", "{d}/small.safetensors", *SYN], 2, r"\bx of shape \(4, 1, 8, 8\)"),
    ("analyze-cifar-without-dir", ["analyze", "{d}/good.safetensors", "--data", "cifar10"], 2, r"data_dir"),
    ("analyze-data-dir-missing", ["analyze", "{d}/good.safetensors", "--data", "cifar10", "--data-dir", "{d}/nope"], 2, r"not found: .*nope"),
    ("analyze-malicious-cifar-batch", ["analyze", "{d}/good.safetensors", "--data", "cifar10", "--data-dir", "{d}/cifar-10-batches-py"], 2, r"test_batch: unsafe or corrupt pickle"),
    ("analyze-out-under-a-file", ["analyze", "{d}/good.safetensors", *SYN, "--out", "{d}/a_file/r.csv"], 1, r"a_file"),
    # attack
    ("attack-missing-checkpoint", ["attack", "{d}/gone.safetensors", *SYN], 2, r"checkpoint not found"),
    ("attack-malicious-pickle", ["attack", "{d}/evil.pt", *SYN], 2, r"evil\.pt"),
    ("attack-unknown-attack", ["attack", "{d}/good.safetensors", *SYN, "--attacks", "pgd"], 2, r"unknown attack.*pgd"),
    ("attack-bad-budget", ["attack", "{d}/good.safetensors", *SYN, "--budget", "huge"], 2, r"budget must be"),
    ("attack-n-0", ["attack", "{d}/good.safetensors", *SYN, "--n", "0"], 2, r"--n must be"),
    ("attack-steps-0", ["attack", "{d}/good.safetensors", *SYN, "--steps", "0"], 2, r"steps must be"),
    ("attack-batch-size-0", ["attack", "{d}/good.safetensors", *SYN, "--batch-size", "0"], 2, r"batch_size must be"),
    ("attack-levels-1", ["attack", "{d}/good.safetensors", *SYN, "--steps", "2", "--levels", "1"], 2, r"levels must be"),
    ("attack-bad-device", ["attack", "{d}/good.safetensors", *SYN, "--device", "gpu0"], 2, r"--device .*gpu0"),
    ("attack-model-does-not-fit-data", ["attack", "{d}/small.safetensors", *SYN, "--steps", "2"], 2, r"\bx of shape"),
    # train
    ("train-missing-config", ["train", "{d}/gone.yaml", "--out", "{d}/t"], 2, r"config file not found"),
    ("train-unknown-key", ["train", "{d}/train_unknown.yaml", "--out", "{d}/t"], 2, r"unknown key 'bogus'"),
    ("train-wrong-type", ["train", "{d}/train_type.yaml", "--out", "{d}/t"], 2, r"\bepochs: .*integer"),
    ("train-yaml-syntax", ["train", "{d}/train_syntax.yaml", "--out", "{d}/t"], 2, r"not valid YAML at line"),
    ("train-not-a-mapping", ["train", "{d}/train_list.yaml", "--out", "{d}/t"], 2, r"expected a mapping"),
    ("train-negative-lambda", ["train", "{d}/train_ok.yaml", "--out", "{d}/t", "--lambda", "-1"], 2, r"regularizer\.lambda"),
    ("train-bad-method", ["train", "{d}/train_ok.yaml", "--out", "{d}/t", "--method", "exact"], 2, r"regularizer\.method"),
    ("train-epochs-0", ["train", "{d}/train_ok.yaml", "--out", "{d}/t", "--epochs", "0"], 2, r"\bepochs: "),
    ("train-bad-device", ["train", "{d}/train_ok.yaml", "--out", "{d}/t", "--device", "tpu"], 2, r"\bdevice: "),
    ("train-model-does-not-fit-data", ["train", "{d}/train_misfit.yaml", "--out", "{d}/t1", "--quiet"], 2, r"\bx of shape"),
    ("train-labels-beyond-the-classes", ["train", "{d}/train_classes.yaml", "--out", "{d}/t2", "--quiet"], 2, r"labels? .*\[0, 2\)"),
    # run / evaluate / report
    ("run-missing-config", ["run", "{d}/gone.yaml"], 2, r"config file not found"),
    ("run-unknown-key", ["run", "{d}/study_unknown.yaml"], 2, r"unknown key 'bogus'"),
    ("run-name-escapes", ["run", "{d}/study_escape.yaml"], 2, r"\bname: name must be"),
    ("run-wrong-type", ["run", "{d}/study_type.yaml"], 2, r"evaluation\.n: "),
    ("evaluate-missing-checkpoint", ["evaluate", "{d}/gone.safetensors", "--data", "synthetic-gaussian"], 2, r"checkpoint not found"),
    ("evaluate-malicious-pickle", ["evaluate", "{d}/evil.pt", "--data", "synthetic-gaussian", "--out", "{d}/ev"], 2, r"evil\.pt"),
    ("evaluate-bad-budget", ["evaluate", "{d}/good.safetensors", "--data", "synthetic-gaussian", "--budget", "huge"], 2, r"attacks\.budget"),
    ("evaluate-model-does-not-fit-data", ["evaluate", "{d}/small.safetensors", "--data", "synthetic-gaussian", "--n", "4", "--budget", "fast", "--out", "{d}/ev2", "--quiet"], 2, r"\bx of shape"),
    ("report-missing-dir", ["report", "{d}/no_run"], 2, r"run directory not found"),
    ("report-empty-dir", ["report", "{d}/empty_run"], 2, r"no finished evaluation"),
    ("report-corrupt-json", ["report", "{d}/corrupt_run"], 2, r"0\.json"),
    # data
    ("data-fetch-unknown", ["data", "fetch", "imagenet"], 2, r"unknown dataset 'imagenet'"),
]  # fmt: skip

#: Cases failing when the battery was written (xfail strict until fixed). All fixed now; a case
#: added here must name the reason and be removed by its fix.
PENDING: dict[str, str] = {}


def _params() -> list[object]:
    return [
        pytest.param(
            argv,
            code,
            pattern,
            id=case,
            marks=[pytest.mark.xfail(strict=True, reason=PENDING[case])] if case in PENDING else [],
        )
        for case, argv, code, pattern in CASES
    ]


@pytest.mark.parametrize(("argv", "code", "pattern"), _params())
def test_cli_bad_input_is_one_line(
    argv: list[str], code: int, pattern: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d = files
    args = [a.replace("{d}", str(d)) for a in argv]
    status, _, err = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert status == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not (d / "PWNED").exists(), "a pickle payload ran"


def test_cli_usage_errors_are_not_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in [
        (["analyze"], "no model given"),
        (["no-such-command"], "No such command"),
        (["analyze", "x.safetensors", "--no-such-option"], "No such option"),
        (["evaluate", "x.safetensors", "--n", "0"], "Invalid value for '--n'"),
    ]:
        status, _, err = run_main(argv, capsys)
        assert status == 2, (argv, err)
        assert expected in err and "Traceback" not in err, err


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_cli_disk_full_keeps_the_previous_results(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "results.csv"
    argv = ["analyze", str(files / "good.safetensors"), *SYN, "--out", str(out)]
    status, _, _ = run_main(argv, capsys)
    assert status == 0
    before = out.read_bytes()
    monkeypatch.setattr(os, "replace", _enospc)
    status, _, err = run_main([*argv, "--seed", "1"], capsys)
    assert status == 1
    assert err.strip().splitlines() == ["error: [Errno 28] No space left on device"]
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_cli_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        main(["--debug", "analyze", str(files / "gone.safetensors"), *SYN])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SALIGN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "salign.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["data", "fetch", "imagenet"], 2, "error: unknown dataset 'imagenet'"),
        (["analyze", "--no-such-option"], 2, "No such option"),
    ],
    ids=["salign-error", "usage-error"],
)
def test_real_process_prints_no_traceback(
    argv: list[str], code: int, expected: str, files: dict[str, Path]
) -> None:
    proc = _cli(*(a.replace("{d}", str(files)) for a in argv))
    assert proc.returncode == code, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (files / "PWNED").exists()


def test_real_process_debug_prints_the_traceback(files: dict[str, Path]) -> None:
    proc = _cli("--debug", "report", str(files / "no_run"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "MissingFileError: run directory not found" in proc.stderr
