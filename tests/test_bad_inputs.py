"""The bad-input battery: every public entry point rejects bad input with a clear error.

Each case asserts the exception *type* (a :mod:`salign.errors` class, which is also the
built-in ``ValueError``/``TypeError``/``FileNotFoundError`` a user would catch; never a bare
``RuntimeError``/``IndexError`` from deep inside torch) AND that the message names the
offending argument. Anomalies that are not errors (probabilities instead of logits, zero
gradients) must be flagged by a warning and give NaN, never a silent number. Writes that fail
half-way (full disk, interruption) must leave the previous file intact and no partial file.

The CLI side of the battery is tests/test_cli_errors.py.
"""

from __future__ import annotations

import errno
import gzip
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import salign
import salign._validation as validation
from _hardening_helpers import (
    SHAPE,
    ConstantInInput,
    Detached,
    InfOutput,
    K,
    NaNOutput,
    Probabilities,
    ThreeDimensional,
    TupleOutput,
    batch,
    checkpoint_for_other_architecture,
    malicious_pickle,
    tiny_mlp,
)
from salign import attacks, training
from salign._io import atomic_open, write_json_atomic, write_text_atomic
from salign.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    InputTypeError,
    MissingFileError,
    ModelOutputError,
    SalignError,
)

torch.set_num_threads(1)

MODEL = tiny_mlp()
X, Y = batch(5)
META_MODEL = tiny_mlp().to("meta")


#: Cases that failed when the battery was written, with the reason; each is marked
#: xfail(strict=True) so that the fix (which makes it pass) must also remove it from here.
PENDING: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _pending(request: pytest.FixtureRequest) -> None:
    for key, reason in PENDING.items():
        if key in request.node.name:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _with_nan(x: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    x = x.clone()
    x[1, 0, 0, 0] = value
    return x


# Every public per-sample function, called the same way: f(model, x, labels).
QUANTITIES: dict[str, Callable[..., Any]] = {
    "saliency": lambda m, x, y: salign.saliency(m, x, y),
    "alignment": lambda m, x, y: salign.alignment(m, x, y),
    "linearized_robustness": lambda m, x, y: salign.linearized_robustness(m, x, y),
    "effective_bias": lambda m, x, y: salign.effective_bias(m, x, y),
    "bias_shifted_input": lambda m, x, y: salign.bias_shifted_input(m, x, y),
    "analyze": lambda m, x, y: salign.analyze(m, x, y),
}
ATTACKS: dict[str, Callable[..., Any]] = {
    "deepfool": lambda m, x, y: attacks.deepfool(m, x, y, steps=2),
    "ddn": lambda m, x, y: attacks.ddn(m, x, y, steps=2),
    "fmn": lambda m, x, y: attacks.fmn(m, x, y, steps=2),
    "alma": lambda m, x, y: attacks.alma(m, x, y, steps=2),
    "carlini_wagner": lambda m, x, y: attacks.carlini_wagner(m, x, y, steps=2, binary_search_steps=1),
    "robustness": lambda m, x, y: salign.robustness(
        m, x, y, attacks=["deepfool", "ddn"], steps=2, quiet=True
    ),
}
PENALTY: dict[str, Callable[..., Any]] = {
    "gradient_norm_penalty": lambda m, x, y: training.gradient_norm_penalty(m, x, y),
    "pgd_l2_examples": lambda m, x, y: training.pgd_l2_examples(m, x, y, epsilon=0.5, steps=2),
    "ddn_examples": lambda m, x, y: training.ddn_examples(m, x, y, max_norm=0.5, steps=2),
}
ALL = {**QUANTITIES, **ATTACKS, **PENALTY}

# (case id, arguments (model, x, labels), expected class, regex the message must match)
INPUT_CASES: list[tuple[str, Callable[[], tuple[Any, Any, Any]], Any, str]] = [
    ("x-rank-3", lambda: (MODEL, X[0], Y[:1]), InputError, r"\bx must have shape \(N, C, H, W\)"),
    ("x-rank-5", lambda: (MODEL, X[:, None], Y), InputError, r"\bx must have shape"),
    (
        "x-channels-last",
        lambda: (MODEL, torch.rand(2, 28, 28, 1), Y[:2]),
        InputError,
        r"\bx looks channels-last.*permute",
    ),
    ("x-uint8", lambda: (MODEL, (X * 255).to(torch.uint8), Y), InputTypeError, r"\bx must be a floating"),
    ("x-int64", lambda: (MODEL, X.long(), Y), InputTypeError, r"\bx must be a floating"),
    ("x-above-1", lambda: (MODEL, X * 255, Y), InputError, r"\bx must be in \[0, 1\]"),
    ("x-below-0", lambda: (MODEL, X - 0.5, Y), InputError, r"\bx must be in \[0, 1\]"),
    ("x-nan", lambda: (MODEL, _with_nan(X), Y), InputError, r"\bx contains NaN or Inf"),
    ("x-inf", lambda: (MODEL, _with_nan(X, float("inf")), Y), InputError, r"\bx contains NaN or Inf"),
    ("x-empty-batch", lambda: (MODEL, X[:0], Y[:0]), InputError, r"\bx is an empty batch"),
    ("x-numpy", lambda: (MODEL, X.numpy(), Y), InputTypeError, r"\bx must be a torch\.Tensor"),
    (
        "x-shape-does-not-fit-model",
        lambda: (MODEL, torch.rand(5, 1, 5, 5), Y),
        InputError,
        r"\bx .*shape \(5, 1, 5, 5\)",
    ),
    (
        "x-dtype-does-not-fit-model",
        lambda: (MODEL, X.double(), Y),
        (InputError, InputTypeError),
        r"\bx .*dtype torch\.float64",
    ),
    (
        "model-is-a-function",
        lambda: (lambda t: MODEL(t), X, Y),
        InputTypeError,
        r"\bmodel must be a torch\.nn\.Module",
    ),
    (
        "model-on-other-device",
        lambda: (META_MODEL, X, Y),
        InputError,
        r"\bmodel is on meta but the inputs are on cpu",
    ),
    (
        "model-3d-output",
        lambda: (ThreeDimensional(MODEL), X, Y),
        ModelOutputError,
        r"model output .*\(5, 3, 1\)",
    ),
    ("model-tuple-output", lambda: (TupleOutput(MODEL), X, Y), ModelOutputError, r"model output .*tuple"),
    (
        "model-nan-output",
        lambda: (NaNOutput(MODEL), X, Y),
        ModelOutputError,
        r"model output contains NaN or Inf",
    ),
    (
        "model-inf-output",
        lambda: (InfOutput(MODEL), X, Y),
        ModelOutputError,
        r"model output contains NaN or Inf",
    ),
]
LABEL_CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "labels-out-of-range",
        lambda: torch.tensor([0, 1, 2, 3, 1]),
        InputError,
        r"must be in \[0, 3\).*\[0, 3\]",
    ),
    ("labels-negative", lambda: torch.tensor([0, 1, 2, -1, 1]), InputError, r"must be in \[0, 3\)"),
    ("labels-wrong-length", lambda: Y[:3], InputError, r"must have shape \(5,\) to match the batch"),
    ("labels-2d", lambda: Y[:, None], InputError, r"must have shape \(5,\)"),
    ("labels-float", lambda: Y.float(), InputTypeError, r"must be an integer tensor"),
    ("labels-list", lambda: [0, 1, 2, 0, 1], InputTypeError, r"must be a torch\.Tensor of class indices"),
]
#: The name each function gives its labels argument in messages.
LABEL_NAME = {"saliency": "target", "alignment": "target", "linearized_robustness": "target",
              "effective_bias": "target", "bias_shifted_input": "target", "gradient_norm_penalty": "y",
              "pgd_l2_examples": "y", "ddn_examples": "y"}  # fmt: skip


def _params() -> list[Any]:
    out = []
    for case, args, exc, pattern in INPUT_CASES:
        for fname in ALL:
            out.append(pytest.param(fname, args, exc, pattern, id=f"{fname}-{case}"))
    return out


@pytest.mark.parametrize(("fname", "args", "exc", "pattern"), _params())
def test_bad_input_raises_a_clear_error(
    fname: str, args: Callable[[], tuple[Any, Any, Any]], exc: Any, pattern: str
) -> None:
    model, x, y = args()
    with pytest.raises(exc, match=pattern) as info:
        ALL[fname](model, x, y)
    assert isinstance(info.value, SalignError)
    assert not isinstance(info.value, (RuntimeError, IndexError))


@pytest.mark.parametrize("fname", list(ALL))
@pytest.mark.parametrize(("case", "labels", "exc", "pattern"), LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_labels_raise_a_clear_error(
    fname: str, case: str, labels: Callable[[], Any], exc: type[Exception], pattern: str
) -> None:
    name = LABEL_NAME.get(fname, "labels")
    with pytest.raises(exc, match=rf"\b{name} {pattern}"):
        ALL[fname](MODEL, X, labels())


# ---------------------------------------------------------------------------------------------
# anomalies that are flagged, not silent


@pytest.mark.parametrize("fname", [*QUANTITIES, "deepfool"])
def test_probabilities_instead_of_logits_are_warned(fname: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "_warned_probabilities", set())
    with pytest.warns(UserWarning, match=r"model output rows sum to 1 .*probabilities.*logits"):
        ALL[fname](Probabilities(MODEL), X, Y)


@pytest.mark.parametrize(
    ("fname", "columns"),
    [
        ("alignment", None),
        ("linearized_robustness", None),
        ("analyze", ("alignment", "alignment_binarized", "linearized_robustness", "alignment_normalized")),
    ],
)
@pytest.mark.parametrize("wrapper", [ConstantInInput, Detached], ids=["zero-gradients", "non-differentiable"])
def test_zero_input_gradients_give_nan_and_a_warning(
    fname: str, columns: tuple[str, ...] | None, wrapper: type[torch.nn.Module]
) -> None:
    with pytest.warns(RuntimeWarning, match=r"5 of 5 samples: .* is zero"):
        out = ALL[fname](wrapper(MODEL), X, None)
    values = [out] if columns is None else [getattr(out, c) for c in columns[:3]]
    for v in values:
        assert torch.isnan(v).all(), v


@pytest.mark.parametrize("fname", list(ATTACKS))
def test_attacks_flag_zero_gradients(fname: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ALL[fname](ConstantInInput(MODEL), X, None)
    # no adversarial point exists (the prediction never changes): never a silent finite ρ
    assert torch.isinf(result.distance).all() and not result.success.any()
    assert any("no verified adversarial point" in str(w.message) for w in caught)


@pytest.mark.parametrize("fname", [*ATTACKS, *PENALTY])
def test_non_differentiable_model_is_refused(fname: str) -> None:
    with pytest.raises(ModelOutputError, match=r"model output .*differentiab"):
        ALL[fname](Detached(MODEL), X, Y)


# ---------------------------------------------------------------------------------------------
# option values


OPTION_CASES = [
    ("saliency-mode", lambda: salign.saliency(MODEL, X, mode="gradient"), InputError, r"\bmode must be"),
    ("saliency-rival", lambda: salign.saliency(MODEL, X, rival="second"), InputError, r"\brival must be"),
    (
        "saliency-rival-equals-target",
        lambda: salign.saliency(MODEL, X, Y, rival=Y),
        InputError,
        r"\brival equals the target",
    ),
    ("saliency-rival-out-of-range", lambda: salign.saliency(MODEL, X, Y, rival=Y + 5), InputError, r"\brival must be in"),
    ("saliency-strategy", lambda: salign.saliency(MODEL, X, strategy="magic"), InputError, r"\bstrategy must be"),
    ("alignment-origin-shape", lambda: salign.alignment(MODEL, X, origin=torch.zeros(3, 3)), InputError, r"\borigin of shape"),
    ("alignment-origin-type", lambda: salign.alignment(MODEL, X, origin=0.5), InputTypeError, r"\borigin must be a tensor"),
    ("analyze-rival", lambda: salign.analyze(MODEL, X, rival="random"), InputError, r"\brival must be"),
    ("analyze-batch-size", lambda: salign.analyze(MODEL, X, batch_size=0), InputError, r"\bbatch_size must be"),
    ("analyze-candidates", lambda: salign.analyze(MODEL, X, candidates=0), InputError, r"\bcandidates must be"),
    ("robustness-unknown-attack", lambda: salign.robustness(MODEL, X, attacks=["pgd"]), InputError, r"unknown attack.*pgd"),
    ("robustness-no-attack", lambda: salign.robustness(MODEL, X, attacks=[]), InputError, r"\battacks must name"),
    ("robustness-budget", lambda: salign.robustness(MODEL, X, budget="huge"), InputError, r"\bbudget must be"),
    ("robustness-steps", lambda: salign.robustness(MODEL, X, steps=0), InputError, r"\bsteps must be"),
    ("robustness-patience", lambda: salign.robustness(MODEL, X, steps=2, patience=-3), InputError, r"\bpatience must be"),
    ("robustness-batch-size", lambda: salign.robustness(MODEL, X, steps=2, batch_size=0), InputError, r"\bbatch_size must be"),
    ("robustness-levels", lambda: salign.robustness(MODEL, X, steps=2, levels=1), InputError, r"\blevels must be"),
    ("deepfool-overshoot", lambda: attacks.deepfool(MODEL, X, overshoot=-1.0), InputError, r"\bovershoot must be"),
    ("deepfool-levels", lambda: attacks.deepfool(MODEL, X, steps=2, levels=0), InputError, r"\blevels must be"),
    ("ddn-start-shape", lambda: attacks.ddn(MODEL, X, steps=2, start=X[:2]), InputError, r"\bstart must have the shape"),
    ("ddn-start-range", lambda: attacks.ddn(MODEL, X, steps=2, start=X + 2), InputError, r"\bstart must be in \[0, 1\]"),
    ("ddn-loss", lambda: attacks.ddn(MODEL, X, steps=2, loss="hinge"), InputError, r"\bloss must be"),
    ("cw-binary-search-steps", lambda: attacks.carlini_wagner(MODEL, X, binary_search_steps=0), InputError, r"\bbinary_search_steps must be"),
    ("penalty-p", lambda: training.gradient_norm_penalty(MODEL, X, Y, p=0.5), InputError, r"\bp must be a number >= 1"),
    ("penalty-method", lambda: training.gradient_norm_penalty(MODEL, X, Y, method="exact"), InputError, r"\bmethod must be"),
    ("penalty-h", lambda: training.gradient_norm_penalty(MODEL, X, Y, method="finite_difference", h=0.0), InputError, r"\bh must be"),
    ("penalty-target", lambda: training.gradient_norm_penalty(MODEL, X, Y, target="margin"), InputError, r"\btarget must be"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "call", "exc", "pattern"), OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_raises_a_clear_error(
    case: str, call: Callable[[], Any], exc: type[Exception], pattern: str
) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# configs


TRAIN_YAML_CASES = [
    ("unknown-key", "epochs: 1\nbogus: 3\n", r"unknown key 'bogus'"),
    (
        "unknown-nested-key",
        "optimizer: {name: sgd, learning_rate: 0.1}\n",
        r"unknown key 'optimizer\.learning_rate'",
    ),
    ("wrong-type", "epochs: many\n", r"\bepochs: .*integer"),
    ("wrong-type-nested", "regularizer: {lambda: [1, 2]}\n", r"regularizer\.lambda"),
    ("out-of-range", "batch_size: 0\n", r"\bbatch_size: .*greater than or equal to 1"),
    ("bad-choice", "optimizer: {name: lbfgs}\n", r"optimizer\.name"),
    ("infinite-lambda", "regularizer: {lambda: .inf}\n", r"regularizer\.lambda"),
    ("infinite-lr", "optimizer: {lr: .inf}\n", r"optimizer\.lr"),
    ("not-a-mapping", "- 1\n- 2\n", r"expected a mapping, got list"),
    ("yaml-syntax", "epochs: [1\n", r"not valid YAML at line \d+, column \d+"),
]


@pytest.mark.parametrize(("case", "text", "pattern"), TRAIN_YAML_CASES, ids=[c[0] for c in TRAIN_YAML_CASES])
def test_bad_training_yaml(case: str, text: str, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        training.load_config(path)


EXPERIMENT_YAML_CASES = [
    ("unknown-key", "name: x\nbogus: 1\n", r"unknown key 'bogus'"),
    ("unknown-nested-key", "name: x\nevaluation: {n: 4, samples: 3}\n", r"unknown key 'evaluation\.samples'"),
    ("missing-name", "seed: 1\n", r"missing required key 'name'"),
    ("wrong-type", "name: x\nevaluation: {n: lots}\n", r"evaluation\.n: .*integer"),
    ("unknown-attack", "name: x\nattacks: {names: [pgd]}\n", r"attacks\.names: unknown attack"),
    ("negative-lambda", "name: x\ntraining: {epochs: 1}\nsweep: {lambdas: [-1]}\n", r"sweep\.lambdas"),
    ("nan-lambda", "name: x\ntraining: {epochs: 1}\nsweep: {lambdas: [0, .nan]}\n", r"sweep\.lambdas"),
    ("infinite-lambda", "name: x\ntraining: {epochs: 1}\nsweep: {lambdas: [0, .inf]}\n", r"sweep\.lambdas"),
    ("name-escapes-run-dir", "name: ../../outside\n", r"\bname: name must be letters"),
    ("name-absolute-path", "name: /etc/outside\n", r"\bname: name must be letters"),
    ("yaml-syntax", "name: [x\n", r"not valid YAML at line \d+"),
]


@pytest.mark.parametrize(
    ("case", "text", "pattern"), EXPERIMENT_YAML_CASES, ids=[c[0] for c in EXPERIMENT_YAML_CASES]
)
def test_bad_experiment_yaml(case: str, text: str, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        salign.experiments.load_config(path)


@pytest.mark.parametrize("loader", ["training", "experiments"])
def test_missing_config_file(loader: str, tmp_path: Path) -> None:
    load = training.load_config if loader == "training" else salign.experiments.load_config
    with pytest.raises(MissingFileError, match=r"config file not found: .*nope\.yaml"):
        load(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------
# checkpoints (loading never executes code)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"checkpoint not found: .*gone\.safetensors"):
        salign.models.load(tmp_path / "gone.safetensors")


@pytest.mark.parametrize(
    "content", [b"", b"\x00garbage" * 10, b"{}" + b"\x00" * 40], ids=["empty", "garbage", "header"]
)
def test_corrupt_checkpoint(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        salign.models.load(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    salign.models.save(tiny_mlp(), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        salign.models.load(path)


def test_checkpoint_for_another_architecture(tmp_path: Path) -> None:
    path = checkpoint_for_other_architecture(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"other\.safetensors: weights do not match model 'linear'"):
        salign.models.load(path)


def test_checkpoint_without_salign_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"no 'salign_model' metadata"):
        salign.models.load(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_malicious_pickle_checkpoint_is_refused_without_running_it(suffix: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = malicious_pickle(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(CheckpointError, match=r"evil"):
        salign.models.load(path)
    with pytest.raises(CheckpointError, match=r"evil"):
        salign.models.load_state_dict_file(path)
    assert not marker.exists(), "the pickle payload ran"


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda: salign.models.build("vgg16"), ConfigError, r"unknown model 'vgg16'"),
        (lambda: salign.models.build("linear", hidden=[3]), ConfigError, r"unknown argument\(s\) hidden"),
        (lambda: salign.models.save(torch.nn.Linear(2, 2), "x.safetensors"), ConfigError, r"not made by salign\.models\.build"),
    ],
    ids=["unknown-model", "unknown-model-argument", "save-unregistered-model"],
)  # fmt: skip
def test_bad_model_arguments(call: Callable[[], Any], exc: type[Exception], pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        call()


# ---------------------------------------------------------------------------------------------
# data


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda tmp: salign.data.load("imagenet"), ConfigError, r"unknown dataset 'imagenet'"),
        (lambda tmp: salign.data.load("synthetic-gaussian", "val"), ConfigError, r"unknown split 'val'"),
        (lambda tmp: salign.data.load("synthetic-gaussian", n=4, colour=True), ConfigError, r"colour"),
        (lambda tmp: salign.data.load("synthetic-gaussian", n=4, num_classes=999), ConfigError, r"\bnum_classes must be"),
        (lambda tmp: salign.data.load("cifar10"), ConfigError, r"\bdata_dir"),
        (lambda tmp: salign.data.load("cifar10", data_dir=tmp / "missing"), MissingFileError, r"missing"),
        (lambda tmp: salign.data.load("mnist", data_dir=tmp / "missing"), MissingFileError, r"missing"),
        (lambda tmp: salign.data.load("imagefolder", data_dir=tmp / "missing"), MissingFileError, r"missing"),
        (lambda tmp: salign.data.fetch("cifar10"), ConfigError, r"cannot fetch 'cifar10'"),
    ],
    ids=["unknown-name", "unknown-split", "unknown-option", "bad-option-value", "no-data-dir",
         "cifar-dir-missing", "mnist-dir-missing", "imagefolder-dir-missing", "unfetchable"],
)  # fmt: skip
def test_bad_data_arguments(
    call: Callable[[Path], Any], exc: type[Exception], pattern: str, tmp_path: Path
) -> None:
    with pytest.raises(exc, match=pattern):
        call(tmp_path)


def _write_idx_split(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    salign.data.write_idx(
        folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    )
    salign.data.write_idx(folder / "t10k-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[:30]),
            r"t10k-images-idx3-ubyte\.gz: (corrupt gzip|short read)",
        ),
        (
            lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 3)),
            r"t10k-images-idx3-ubyte\.gz",
        ),
        (lambda p: p.write_bytes(gzip.compress(b"PK\x03\x04 not idx at all")), r"not an IDX file"),
    ],
    ids=["truncated-gzip", "truncated-header", "wrong-magic"],
)
def test_corrupt_idx_files(damage: Callable[[Path], Any], pattern: str, tmp_path: Path) -> None:
    _write_idx_split(tmp_path)
    x, y = salign.data.load("mnist", "test", data_dir=tmp_path)
    assert x.shape == (6, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4, 5]
    damage(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=pattern):
        salign.data.load("mnist", "test", data_dir=tmp_path)


def test_labels_file_does_not_match_images(tmp_path: Path) -> None:
    _write_idx_split(tmp_path)
    salign.data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: expected 6 labels"):
        salign.data.load("mnist", "test", data_dir=tmp_path)


def test_corrupt_mnist_cache_without_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged cache is never read as data: it is rebuilt from the kept wheel, or the error
    says how to get it again (nothing is downloaded at load time)."""
    from salign.data.mnist import mnist_dir

    monkeypatch.setenv(salign.data.DATA_ENV, str(tmp_path / "cache"))
    folder = mnist_dir()
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)  # wrong content, wrong MD5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(DataError, match=r"salign data fetch mnist"):
            salign.data.load("mnist", "test")


# ---------------------------------------------------------------------------------------------
# writes: a full disk or an interruption never leaves a partial or corrupt file


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("where", ["rename", "write"])
def test_disk_full_keeps_the_old_file(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    write_json_atomic(target, {"version": 1})
    if where == "rename":
        monkeypatch.setattr(os, "replace", _enospc)
        with pytest.raises(OSError, match="No space left") as info:
            write_json_atomic(target, {"version": 2})
    else:
        with pytest.raises(OSError, match="No space left") as info, atomic_open(target, "w") as fh:
            fh.write('{"version": ')
            _enospc()
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert _leftovers(tmp_path) == []


def test_disk_full_while_saving_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    old = tiny_mlp(seed=0)
    salign.models.save(old, path)
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(OSError, match="No space left"):
        salign.models.save(tiny_mlp(seed=1), path)
    monkeypatch.undo()
    reloaded = salign.models.load(path)
    for a, b in zip(reloaded.state_dict().values(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert _leftovers(tmp_path) == []


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    write_text_atomic(target, "id,alpha\n0,1.0\n")
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as fh:
        fh.write("id,alpha\n0,")
        raise KeyboardInterrupt
    assert target.read_text() == "id,alpha\n0,1.0\n"
    assert _leftovers(tmp_path) == []


def test_experiment_run_dir_of_another_config_is_refused(tmp_path: Path) -> None:
    """Resuming into a directory that holds another study would mix two runs' tables."""
    from salign.experiments.pipeline import prepare_run_dir
    from salign.experiments.sharding import current_shard

    cfg_a = salign.experiments.config_from_dict({"name": "a", "evaluation": {"n": 4}})
    cfg_b = salign.experiments.config_from_dict({"name": "a", "evaluation": {"n": 8}})
    prepare_run_dir(cfg_a, tmp_path, force=False, device=torch.device("cpu"), shard=current_shard())
    with pytest.raises(ConfigError, match=r"different config \(differs in: evaluation\)"):
        prepare_run_dir(cfg_b, tmp_path, force=False, device=torch.device("cpu"), shard=current_shard())


def test_shapes_used_here_are_consistent() -> None:
    assert X.shape[1:] == SHAPE and int(Y.max()) < K


# ---------------------------------------------------------------------------------------------
# the shared checks used by the fixes above


@pytest.mark.parametrize(
    ("device", "pattern"),
    [
        ("gpu0", r"--device 'gpu0' is not a device"),
        ("meta", r"--device 'meta' holds no data"),
        pytest.param(
            "cuda",
            r"--device 'cuda': CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_resolve_device_names_the_option(device: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        validation.resolve_device(device, name="--device")
    assert validation.resolve_device("cpu") == torch.device("cpu")


def test_run_model_names_the_input_and_keeps_the_cause() -> None:
    with pytest.raises(
        InputError, match=r"model failed on x of shape \(2, 1, 5, 5\) and dtype torch\.float32"
    ) as info:
        validation.run_model(MODEL, torch.rand(2, 1, 5, 5))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert torch.equal(validation.run_model(MODEL, X), MODEL(X))  # type: ignore[arg-type]


def test_check_differentiable() -> None:
    x = X.clone().requires_grad_(True)
    with pytest.raises(ModelOutputError, match=r"not differentiable with respect to the input"):
        validation.check_differentiable(MODEL(x).detach(), x)
    out = MODEL(x)
    assert validation.check_differentiable(out, x) is out
    with torch.no_grad():
        validation.check_differentiable(MODEL(x), x)  # no grad mode: nothing to check


# ---------------------------------------------------------------------------------------------
# training runs: a config or data the model cannot use fails before the first step


TINY_TRAIN = {
    "epochs": 1,
    "batch_size": 4,
    "model": {"name": "relu_mlp", "kwargs": {"input_shape": list(SHAPE), "hidden": [4], "num_classes": K}},
}


@pytest.mark.parametrize(
    ("case", "data", "exc", "pattern"),
    [
        ("x-does-not-fit-model", lambda: (torch.rand(8, 1, 5, 5), Y[:4].repeat(2), X, Y), InputError, r"\bx of shape \(2, 1, 5, 5\)"),
        ("labels-beyond-classes", lambda: (X, Y + 1, X, Y), InputError, r"training labels must be in \[0, 3\)"),
        ("val-labels-beyond-classes", lambda: (X, Y, X, Y + 1), InputError, r"validation labels must be in \[0, 3\)"),
    ],
    ids=["x-does-not-fit-model", "labels-beyond-classes", "val-labels-beyond-classes"],
)  # fmt: skip
def test_training_data_that_does_not_fit_the_model(
    case: str,
    data: Callable[[], Any],
    exc: type[Exception],
    pattern: str,
    tmp_path: Path,
) -> None:
    with pytest.raises(exc, match=pattern):
        training.train(dict(TINY_TRAIN), run_dir=tmp_path / "run", data=data(), quiet=True)


def test_training_config_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(
        InputTypeError, match=r"\bconfig must be a TrainConfig, a dict or a YAML path, got int"
    ):
        training.train(5, run_dir=tmp_path / "run")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "content"),
    [("eval/0.json", "{not json"), ("timings.json", "[1, 2"), ("config.yaml", "name: [x")],
    ids=["eval-json", "timings-json", "config-yaml"],
)
def test_report_of_a_corrupt_run_directory(name: str, content: str, tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "0.csv").write_text("id,alignment\n0,0.5\n")
    (tmp_path / "eval" / "0.json").write_text('{"lambda": 0}')
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        salign.report.render(tmp_path)


@pytest.mark.parametrize(
    ("model", "labels", "exc", "pattern"),
    [
        (Detached(MODEL), None, ModelOutputError, r"not differentiable"),
        (NaNOutput(MODEL), None, ModelOutputError, r"contains NaN or Inf"),
        (ThreeDimensional(MODEL), None, ModelOutputError, r"must have shape \(N, K\)"),
        (MODEL, Y + 3, InputError, r"\by must be in \[0, 3\)"),
    ],
    ids=["detached", "nan", "3d", "labels"],
)
def test_check_model_on(model: torch.nn.Module, labels: Any, exc: type[Exception], pattern: str) -> None:
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3)).train()
    stats = bn[1].running_mean.clone()
    assert validation.check_model_on(bn, X).shape == (5, 3)
    assert torch.equal(bn[1].running_mean, stats) and bn.training  # eval mode inside, restored
    with pytest.raises(exc, match=pattern):
        validation.check_model_on(model, X, labels, labels_name="y")
