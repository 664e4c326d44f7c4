"""torchvision classifiers by name: weights from local files only, identical logits, safe loading.

ResNet-50 has 25.6 M parameters: the tests use one seeded state dict per session, 64×64 inputs
and a batch of 2, and ResNet-18 (11.7 M) where the architecture does not matter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import salign
import salign.models as M
from salign.errors import CheckpointError, ConfigError, MissingFileError

tv = pytest.importorskip("torchvision", reason="needs the vision extra (torchvision 0.29 + torch 2.14)")

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CAFFE_BGR_MEAN = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def by_hand(x: torch.Tensor, normalization: str | None) -> torch.Tensor:
    """The preprocessing written out independently of salign."""
    if normalization == "imagenet":
        return (x - IMAGENET_MEAN) / IMAGENET_STD
    if normalization == "caffe":
        return x[:, [2, 1, 0]] * 255.0 - CAFFE_BGR_MEAN
    return x


def seeded(builder, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    net = builder(**kwargs)
    # torchvision zero-initialises nothing in BN statistics: give them values so a wrong load shows.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """torchvision's own ResNet-50, seeded, and its state dict saved by plain torch code."""
    net = seeded(tv.models.resnet50)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def resnet18_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tv18") / "resnet18.pth"
    torch.save(seeded(tv.models.resnet18, seed=1).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def assert_same_logits(ours: nn.Module, ref: nn.Module, x: torch.Tensor, normalization: str | None) -> None:
    with torch.no_grad():
        got = ours.eval()(x)
        want = ref.eval()(by_hand(x, normalization))
    assert got.shape == (2, want.shape[1])
    assert want.abs().max() > 1e-3  # not a degenerate all-zero comparison
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalization", ["imagenet", "caffe", None])
def test_pth_state_dict_gives_torchvisions_logits(resnet50, x, normalization) -> None:
    ref, path = resnet50
    model = M.build("torchvision/resnet50", weights=path, normalization=normalization)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert_same_logits(model, ref, x, normalization)


def test_safetensors_and_wrapped_files_give_the_same_logits(resnet50, x, tmp_path) -> None:
    ref, _ = resnet50
    state = ref.state_dict()
    st = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    wrapped = tmp_path / "ddp_checkpoint.pt"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    for path in (st, wrapped):
        assert_same_logits(M.build("torchvision/resnet50", weights=path), ref, x, "imagenet")


def test_salign_checkpoint_round_trip_needs_no_weights_file(resnet50, x, tmp_path) -> None:
    ref, path = resnet50
    copy = tmp_path / "weights.pth"
    copy.write_bytes(path.read_bytes())
    model = M.build("torchvision/resnet50", weights=copy, normalization="caffe")
    spec = M.spec_of(model)
    assert spec["kwargs"] == {"num_classes": 1000, "normalization": "caffe"}
    assert len(spec["weights_from"]["sha256"]) == 64
    saved = M.save(model, tmp_path / "model.safetensors")
    copy.unlink()  # the checkpoint holds the weights
    loaded = M.load(saved)
    assert not loaded.training
    assert isinstance(loaded[0], M.CaffeNormalize)
    assert_same_logits(loaded, ref, x, "caffe")


def test_code_executing_pickle_is_refused_and_does_not_run(tmp_path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*system.*code") as info:
        M.build("torchvision/resnet18", weights=evil)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_other_architecture_is_a_one_line_error_naming_keys(resnet18_path) -> None:
    with pytest.raises(CheckpointError) as info:
        M.build("torchvision/resnet50", weights=resnet18_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "does not fit torchvision/resnet50" in msg
    assert "missing: layer1.0.conv3.weight" in msg
    assert "layer1.0.conv1.weight is (64, 64, 3, 3) in the file, (64, 64, 1, 1) in the model" in msg
    assert "(198 in all)" in msg  # truncated to a few names, with the count


@pytest.mark.parametrize(("asked", "stored"), [(10, 1000)])
def test_class_count_mismatch_says_so(resnet18_path, asked, stored) -> None:
    with pytest.raises(CheckpointError) as info:
        M.build("torchvision/resnet18", weights=resnet18_path, num_classes=asked)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"weights for {stored} classes" in msg
    assert f"num_classes={asked} was asked" in msg
    assert "fc." in msg


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet5'.*torchvision/resnet50"):
        M.build("torchvision/resnet5")
    assert "resnet50" in M.torchvision_names()
    assert "fasterrcnn_resnet50_fpn" not in M.torchvision_names()  # classification models only


@pytest.mark.parametrize("weights", ["DEFAULT", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2", True])
def test_download_style_weights_are_refused(weights, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="never downloads weights"):
        M.build("torchvision/resnet50", weights=weights)
    with pytest.raises(ConfigError, match="never downloads weights"):
        M.build("torchvision/resnet50", weights=tv.models.ResNet50_Weights.DEFAULT)
    assert list(tmp_path.iterdir()) == []


def test_weights_that_are_not_a_readable_file(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="weights file not found"):
        M.build("torchvision/resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="must be a file"):
        M.build("torchvision/resnet18", weights=tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="refusing to load"):
        M.build("torchvision/resnet18", weights=garbage)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        M.build("torchvision/resnet18", weights=bad_st)
    no_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.7}, no_tensors)
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        M.build("torchvision/resnet18", weights=no_tensors)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown normalization 'bgr'"):
        M.build("torchvision/resnet18", normalization="bgr")
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        M.build("torchvision/resnet18", num_classes=0)
    with pytest.raises(ConfigError, match="rejected the arguments"):
        M.build("torchvision/resnet18", widht=3)
    with pytest.raises(ConfigError, match="pretrained"):
        M.build("torchvision/resnet18", pretrained=True)


def test_input_gradients_flow_through_the_preprocessing(resnet50, x) -> None:
    ref, path = resnet50
    model = M.build("torchvision/resnet50", weights=path, normalization="caffe")
    s = salign.saliency(model, x, mode="logit")
    assert s.shape == x.shape and torch.isfinite(s).all() and s.abs().max() > 0
    # the same gradient, computed by hand through torchvision's model
    xr = x.clone().requires_grad_(True)
    logits = ref.eval()(by_hand(xr, "caffe"))
    target = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xr)
    torch.testing.assert_close(s, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_1"])
def test_other_architectures_load_and_round_trip(arch, tmp_path, x) -> None:
    ref = seeded(tv.models.get_model, seed=2, name=arch, num_classes=10)
    path = tmp_path / f"{arch}.pt"
    torch.save({"model": ref.state_dict()}, path)
    model = M.build(f"torchvision/{arch}", weights=path, num_classes=10, normalization=None)
    assert_same_logits(model, ref, x, None)
    assert_same_logits(M.load(M.save(model, tmp_path / "m.safetensors")), ref, x, None)
    with pytest.raises(CheckpointError, match="weights for 10 classes"):
        M.build(f"torchvision/{arch}", weights=path)  # num_classes=1000 by default


def test_caffe_preprocessing_values() -> None:
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 1.0  # pure red
    out = M.CaffeNormalize()(x)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255.0 - 123.68]))
