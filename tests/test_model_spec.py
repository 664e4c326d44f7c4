"""One model spec everywhere: ``salign.models.load_spec`` and the CLI's ``--model``/``--weights``.

The same weights as a user's Python file + ``torch.save``'d state dict, a ``torch.export``
archive and a salign checkpoint must give identical ``salign analyze`` tables; wrong kinds of
file, malicious pickles and broken user code must give one-line errors that say what to do.
"""

from __future__ import annotations

import csv
import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import salign
from _hardening_helpers import malicious_pickle
from _spec_helpers import make_forms
from salign.cli import main
from salign.errors import CheckpointError, ConfigError, InputError, MissingDependencyError, MissingFileError


@pytest.fixture
def forms(tmp_path: Path) -> dict[str, Any]:
    """The same weights in the three forms, plus a data file of 8 labelled images."""
    return make_forms(tmp_path)


def _specs(f: dict[str, Any]) -> dict[str, list[str]]:
    return {
        "file+weights": ["--model", f"{f['user']}:make_model", "--weights", str(f["state"])],
        "pt2": ["--model", str(f["pt2"])],
        "checkpoint": [str(f["ckpt"])],  # the positional form of earlier versions
    }


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_three_forms_give_identical_analyze_csvs(forms: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    tables = {}
    for name, spec in _specs(forms).items():
        out = tmp_path / f"{name}.csv"
        code, err = _run(
            ["analyze", *spec, "--data", str(forms["data"]), "--out", str(out), "--quiet"], capsys
        )
        assert code == 0, err
        tables[name] = out.read_text()
    rows = list(csv.DictReader(tables["checkpoint"].splitlines()))
    assert len(rows) == 8 and all(float(r["alignment"]) > 0 for r in rows)
    assert tables["file+weights"] == tables["checkpoint"]
    assert tables["pt2"] == tables["checkpoint"]
    # and the table is the library's analyze() of the user's own module
    direct = salign.analyze(forms["net"], forms["x"], torch.arange(8) % 10)
    np.testing.assert_allclose([float(r["alignment"]) for r in rows], direct.alignment.numpy(), rtol=1e-6)


def test_attack_gives_identical_csvs_for_all_three(
    forms: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    tables = {}
    for name, spec in _specs(forms).items():
        out = tmp_path / f"{name}.csv"
        argv = [
            "attack",
            *spec,
            "--data",
            str(forms["data"]),
            "--n",
            "4",
            "--attacks",
            "deepfool,ddn",
            "--steps",
            "20",
        ]
        code, err = _run([*argv, "--budget", "fast", "--out", str(out), "--quiet"], capsys)
        assert code == 0, err
        tables[name] = out.read_text()
    rows = list(csv.DictReader(tables["checkpoint"].splitlines()))
    assert len(rows) == 4 and all(0 < float(r["distance"]) < 10 and r["success"] == "True" for r in rows)
    # the same weights attacked with the same seeds: the same table, byte for byte
    assert tables["file+weights"] == tables["checkpoint"]
    assert tables["pt2"] == tables["checkpoint"]


def test_malicious_pickle_as_weights_is_refused_and_never_runs(
    forms: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    marker = tmp_path / "PWNED"
    evil = malicious_pickle(tmp_path / "evil.pt", marker)
    argv = [
        "analyze",
        "--model",
        f"{forms['user']}:make_model",
        "--weights",
        str(evil),
        "--data",
        str(forms["data"]),
    ]
    code, err = _run(argv, capsys)
    assert code == 2
    assert "refusing to load" in err and "evil.pt" in err and "weights_only=True" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists(), "the pickle payload ran"


def test_user_file_raising_on_import_is_one_line_naming_its_path(
    forms: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    broken = tmp_path / "broken_net.py"
    broken.write_text("import torch\n\nraise RuntimeError('no GPU found, giving up')\n")
    code, err = _run(["analyze", "--model", f"{broken}:make", "--data", str(forms["data"])], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {broken}: importing the model file raised RuntimeError: no GPU found, giving up "
        "(salign --debug shows the traceback)"
    ]
    # --debug re-raises: the traceback reaches the user's line through the chained cause
    with pytest.raises(ConfigError) as info:
        main(["--debug", "analyze", "--model", f"{broken}:make", "--data", str(forms["data"])])
    assert isinstance(info.value.__cause__, RuntimeError)
    tb = info.value.__cause__.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    assert tb is not None and tb.tb_frame.f_code.co_filename == str(broken.resolve())


def test_a_pickle_handed_to_the_checkpoint_path_says_what_it_looks_like(
    forms: dict[str, Any], capsys: Any
) -> None:
    code, err = _run(["analyze", str(forms["state"]), "--data", str(forms["data"])], capsys)
    assert code == 2
    assert "looks like a torch.save pickle" in err and "--weights FILE with --model file.py:factory" in err
    # the library's checkpoint reader says the same (it used to report a safetensors header error)
    with pytest.raises(CheckpointError, match=r"looks like a torch\.save pickle"):
        salign.models.load(forms["state"])
    renamed = forms["state"].with_suffix(".safetensors")
    renamed.write_bytes(forms["state"].read_bytes())
    with pytest.raises(
        CheckpointError,
        match=r"weights\.safetensors is not a salign checkpoint: it looks like a torch\.save pickle",
    ):
        salign.models.load(renamed)


@pytest.mark.parametrize(
    ("spec", "kwargs", "exc", "pattern"),
    [
        ("{user}", {}, CheckpointError, r"looks like Python source; name its factory function"),
        ("{user}:missing", {}, ConfigError, r"has no 'missing'; callables defined there: .*make_model"),
        ("{user}:NOT_A_MODEL", {}, ConfigError, r"NOT_A_MODEL is a int, not a function"),
        ("{user}:make_list", {}, ConfigError, r"make_list returned a list, not a torch\.nn\.Module"),
        ("{user}:make_model", {"depth": 3}, ConfigError, r"make_model\(depth=3\) raised TypeError"),
        ("{tmp}/nope.py:make", {}, MissingFileError, r"model file not found"),
        ("{tmp}/nope.safetensors", {}, MissingFileError, r"checkpoint not found"),
        ("no_such_model", {}, ConfigError, r"unknown model 'no_such_model' \(salign models: .*smallnet"),
        ("no_such_package.sub:make", {}, ConfigError, r"cannot import module 'no_such_package\.sub'"),
        ("{data}", {}, CheckpointError, r"looks like a NumPy \.npz archive"),
        ("{ckpt}", {"num_classes": 3}, ConfigError, r"carries its own architecture and weights"),
    ],
    ids=["no-factory", "missing-attr", "not-callable", "not-a-module", "bad-kwargs", "missing-file",
         "missing-checkpoint", "unknown-name", "missing-module", "data-as-model", "kwargs-with-checkpoint"],
)  # fmt: skip
def test_bad_specs_are_clear_errors(
    forms: dict[str, Any],
    tmp_path: Path,
    spec: str,
    kwargs: dict[str, Any],
    exc: type[Exception],
    pattern: str,
) -> None:
    text = spec.format(user=forms["user"], tmp=tmp_path, data=forms["data"], ckpt=forms["ckpt"])
    with pytest.raises(exc, match=pattern):
        salign.models.load_spec(text, **kwargs)


def test_weights_and_model_are_given_once(forms: dict[str, Any], capsys: Any) -> None:
    data = ["--data", str(forms["data"])]
    code, err = _run(["analyze", str(forms["ckpt"]), "--model", str(forms["pt2"]), *data], capsys)
    assert code == 2 and "give the model once" in err
    code, err = _run(
        ["analyze", "--model", str(forms["pt2"]), "--weights", str(forms["state"]), *data], capsys
    )
    assert code == 2 and "carries its own architecture and weights, so --weights cannot apply" in err
    code, err = _run(["analyze", *data], capsys)
    assert code == 2 and "no model given" in err


def test_weights_that_do_not_fit_name_the_keys(forms: dict[str, Any], tmp_path: Path) -> None:
    wide = tmp_path / "wide.safetensors"
    from safetensors.torch import save_file

    save_file(
        {
            k: v.contiguous()
            for k, v in salign.models.load_spec(f"{forms['user']}:make_model", width=5).state_dict().items()
        },
        str(wide),
    )
    with pytest.raises(
        CheckpointError,
        match=r"wide\.safetensors does not fit .*make_model.*net\.0\.weight is \(5, 1, 3, 3\) in the file",
    ):
        salign.models.load_spec(f"{forms['user']}:make_model", weights=wide)


def test_module_factory_and_registry_name_with_weights(
    forms: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(forms["user"].parent))
    x = forms["x"]
    expected = forms["net"](x)
    try:
        by_module = salign.models.load_spec("mynet:make_model", weights=forms["state"])
    finally:
        sys.modules.pop("mynet", None)
    by_name = salign.models.load_spec("relu_cnn", weights=forms["state"], channels=[4])
    assert not by_module.training and not by_name.training
    torch.testing.assert_close(by_module(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(by_name(x), expected, rtol=0, atol=0)


def test_pt2_with_a_fixed_batch_runs_any_batch_and_rejects_other_shapes(
    forms: dict[str, Any], tmp_path: Path
) -> None:
    x = forms["x"]
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(forms["net"].eval(), (x[:3],)), fixed)
    model = salign.models.load_spec(fixed)
    assert isinstance(model, salign.models.ExportedModel) and model.input_shape == (3, 1, 28, 28)
    for n in (1, 3, 5, 8):  # chunks of 3, the last one padded
        torch.testing.assert_close(model(x[:n]), forms["net"](x[:n]), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"takes inputs of shape \(3, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.rand(2, 1, 32, 32))
    dynamic = salign.models.load_spec(forms["pt2"])
    assert dynamic.input_shape == (None, 1, 28, 28)
    with pytest.raises(InputError, match=r"\('N', 1, 28, 28\)"):
        dynamic(torch.rand(2, 3, 28, 28))


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a zip archive entry by entry, ``edit(name, data) -> data``; extra entries via ``edit(None, zf)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
        edit(None, zout)
    return dst


def test_pt2_with_a_pickled_weight_is_refused_and_never_runs(
    forms: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PWNED"
    evil = malicious_pickle(tmp_path / "payload.pt", marker).read_bytes()

    def edit(name: str | None, data: Any) -> Any:
        if name is None:
            return None
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True  # torch.export.load would torch.load(weights_only=False) it
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return evil
        return data

    crafted = _rewrite(forms["pt2"], tmp_path / "crafted.pt2", edit)
    with pytest.raises(
        CheckpointError, match=r"refusing to load .*crafted\.pt2.*model_weights_config\.json: .* \(pickled\)"
    ):
        salign.models.load_spec(crafted)
    assert not marker.exists(), "the pickle payload ran"


@pytest.mark.filterwarnings("ignore:`torch.jit.s:FutureWarning")
def test_pt2_with_compiled_code_or_a_torchscript_file_is_refused(
    forms: dict[str, Any], tmp_path: Path
) -> None:
    def add_so(name: str | None, data: Any) -> Any:
        if name is None:
            data.writestr("model/data/aotinductor/model/model.so", b"\x7fELF")
        return data

    crafted = _rewrite(forms["pt2"], tmp_path / "aoti.pt2", add_so)
    with pytest.raises(CheckpointError, match=r"data/aotinductor/model/model\.so \(compiled code\)"):
        salign.models.load_spec(crafted)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(forms["net"]), scripted)
    with pytest.raises(CheckpointError, match=r"looks like a TorchScript archive .* torch\.export\.save"):
        salign.models.load_spec(scripted)


def test_study_config_takes_a_spec_and_weights(forms: dict[str, Any]) -> None:
    from salign.experiments import config_from_dict
    from salign.experiments.pipeline import load_arm

    base = {"name": "mine", "dataset": {"name": str(forms["data"])}}
    cfg = config_from_dict(
        {**base, "model": {"name": f"{forms['user']}:make_model", "weights": str(forms["state"])}}
    )
    model = load_arm(cfg.arms()[0], device=torch.device("cpu"))
    torch.testing.assert_close(model(forms["x"]), forms["net"](forms["x"]), rtol=0, atol=0)
    cfg = config_from_dict({**base, "model": {"checkpoint": str(forms["pt2"])}})
    torch.testing.assert_close(
        load_arm(cfg.arms()[0], device=torch.device("cpu"))(forms["x"]), forms["net"](forms["x"])
    )
    # with training, weights are where every λ's fine-tuning starts; a checkpoint is refused
    study = {"training": {"epochs": 1}, "sweep": {"lambdas": [0]}}
    cfg = config_from_dict({**base, "model": {"name": "smallnet", "weights": "w.pt"}, **study})
    assert cfg.train_config(0.0).model.weights == "w.pt"
    with pytest.raises(ConfigError, match=r"model\.checkpoint is for evaluating a given model"):
        config_from_dict({**base, "model": {"checkpoint": str(forms["pt2"])}, **study})


def test_timm_names_need_timm_and_load_weights_from_a_file(
    forms: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm → ImportError
    with pytest.raises(
        MissingDependencyError, match=r"timm/resnet18 needs timm, which is not installed: pip install timm"
    ):
        salign.models.load_spec("timm/resnet18")
    # A stand-in for timm's API (create_model, list_models, pretrained_cfg): the wrapper puts the
    # model's own normalisation in front and loads the weights strictly.
    fake = types.ModuleType("timm")

    def create_model(name: str, pretrained: bool, num_classes: int) -> nn.Module:
        assert not pretrained
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, num_classes))
        net.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}  # type: ignore[assignment]
        return net

    fake.create_model = create_model  # type: ignore[attr-defined]
    fake.list_models = lambda: ["tiny"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", fake)
    torch.manual_seed(3)
    donor = create_model("tiny", False, 5)
    weights = tmp_path / "tiny.pt"
    torch.save(donor.state_dict(), weights)
    model = salign.models.load_spec("timm/tiny", weights=weights, num_classes=5)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(model(x), donor((x - 0.5) / 0.25))
    assert salign.models.spec_of(model)["name"] == "timm/tiny"
    with pytest.raises(CheckpointError, match=r"holds weights for 5 classes .* pass num_classes=5"):
        salign.models.load_spec("timm/tiny", weights=weights, num_classes=7)
    with pytest.raises(ConfigError, match=r"unknown timm model 'huge'"):
        salign.models.load_spec("timm/huge")
