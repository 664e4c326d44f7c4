"""The user's own images as ``--data FILE`` (.npz, .safetensors, .pt): read safely and checked."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import salign
from _hardening_helpers import malicious_pickle
from salign.cli import main
from salign.data import read_tensor_file
from salign.errors import DataError, InputError, InputTypeError, MissingFileError

X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _write(path: Path, tensors: dict[str, Any]) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()})
    elif path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_every_format_reads_the_same_tensors(suffix: str, tmp_path: Path) -> None:
    x, y = read_tensor_file(_write(tmp_path / f"d{suffix}", {"x": X, "y": Y}))
    assert x.dtype == torch.float32 and y is not None and y.dtype == torch.int64
    assert torch.equal(x, X) and torch.equal(y, Y)
    x2, y2 = salign.data.load(str(tmp_path / f"d{suffix}"), "test")  # the one loader routes files too
    assert torch.equal(x2, X) and torch.equal(y2, Y)


def test_uint8_images_are_scaled_and_labels_are_optional(tmp_path: Path) -> None:
    raw = (X * 255).round().to(torch.uint8)
    x, y = read_tensor_file(_write(tmp_path / "u8.npz", {"x": raw}))
    assert y is None
    torch.testing.assert_close(x, raw.float() / 255, rtol=0, atol=0)
    assert float(x.max()) <= 1.0
    with pytest.raises(DataError, match=r"u8\.npz holds no 'y' labels"):
        salign.data.load(str(tmp_path / "u8.npz"))
    # a bare tensor or an (x, y) tuple saved with torch.save is accepted as well
    torch.save((X, Y), tmp_path / "pair.pt")
    x3, y3 = read_tensor_file(tmp_path / "pair.pt")
    assert torch.equal(x3, X) and y3 is not None and torch.equal(y3, Y)


@pytest.mark.parametrize(
    ("tensors", "exc", "pattern"),
    [
        ({"x": X[:, 0]}, InputError, r"bad\.npz: x has shape \(6, 8, 8\): images must be \(N, C, H, W\).*x\[:, None\]"),
        ({"x": torch.rand(6, 8, 8, 3)}, InputError, r"bad\.npz: x looks channels-last .* use x\.permute\(0, 3, 1, 2\)"),
        ({"x": X * 255}, InputError, r"bad\.npz: x must be in \[0, 1\].*got values in \[0\.\d+, 25\d\.?\d*\]"),
        ({"x": X.double() - 0.5}, InputError, r"must be in \[0, 1\]"),
        ({"x": torch.full((6, 1, 8, 8), float("nan"))}, InputError, r"contains NaN or Inf values \(in 6 of 6 samples\)"),
        ({"x": (X * 255).long()}, InputTypeError, r"bad\.npz: x has dtype torch\.int64; images must be float in \[0, 1\] or uint8"),
        ({"images": X, "labels": Y}, DataError, r"bad\.npz has no 'x' tensor of images \(found: images, labels\)"),
        ({"x": X, "y": Y[:5]}, InputError, r"bad\.npz: y must have shape \(6,\)"),
        ({"x": X, "y": Y.float()}, InputTypeError, r"bad\.npz: y must be an integer tensor, got dtype torch\.float32"),
        ({"x": X, "y": Y - 1}, InputError, r"bad\.npz: y has negative labels"),
    ],
    ids=["no-channel-axis", "channels-last", "0-255-floats", "negative", "nan", "int64", "missing-x",
         "y-length", "y-float", "y-negative"],
)  # fmt: skip
def test_bad_data_files_are_clear_errors(
    tensors: dict[str, Any], exc: type[Exception], pattern: str, tmp_path: Path
) -> None:
    path = _write(tmp_path / "bad.npz", tensors)
    with pytest.raises(exc, match=pattern):
        read_tensor_file(path)


def test_unsafe_or_unreadable_files_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    with pytest.raises(DataError, match=r"evil\.pt is not a readable \.pt file of tensors"):
        read_tensor_file(malicious_pickle(tmp_path / "evil.pt", marker))
    assert not marker.exists(), "the pickle payload ran"
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"objects\.npz is not a readable \.npz file .*object arrays"):
        read_tensor_file(tmp_path / "objects.npz")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(DataError, match=r"trunc\.safetensors is not a readable \.safetensors file"):
        read_tensor_file(tmp_path / "trunc.safetensors")
    with pytest.raises(MissingFileError, match=r"data file not found: .*nope\.npz"):
        read_tensor_file(tmp_path / "nope.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown data file type '\.csv'"):
        read_tensor_file(tmp_path / "x.csv")


def test_cli_reads_a_data_file_with_or_without_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[16], num_classes=3)
    ckpt = salign.models.save(model, tmp_path / "m.safetensors")
    labelled = _write(tmp_path / "with.safetensors", {"x": X, "y": Y})
    bare = _write(tmp_path / "bare.pt", {"x": X})
    main(["analyze", str(ckpt), "--data", str(labelled), "--out", str(tmp_path / "a.csv"), "--quiet"])
    main(["analyze", str(ckpt), "--data", str(bare), "--out", str(tmp_path / "b.csv"), "--quiet"])
    out = capsys.readouterr().out
    assert "6 samples of" in out and "accuracy n/a (no labels)" in out
    with open(tmp_path / "a.csv") as fa, open(tmp_path / "b.csv") as fb:
        a, b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["label"] for r in a] == [str(int(v)) for v in Y] and {r["label"] for r in b} == {"-1"}
    assert [r["alignment"] for r in a] == [r["alignment"] for r in b]
    expected = salign.analyze(model, X, Y).alignment
    np.testing.assert_allclose([float(r["alignment"]) for r in a], expected.numpy(), rtol=1e-6)
    with pytest.raises(SystemExit) as info:
        main(["attack", str(ckpt), "--data", str(bare), "--true-labels", "--out", str(tmp_path / "r.csv")])
    assert info.value.code == 2
    assert "--true-labels needs labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", str(ckpt), "--data", str(tmp_path / "bad.npz")])
    assert "data file not found" in capsys.readouterr().err
