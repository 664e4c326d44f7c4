"""Data layer: IDX, CIFAR-10, ImageFolder, synthetic data, photos, Fashion-MNIST, bad inputs."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import salign.data as sd
from salign.data.fashion_mnist import extract_deb, find_fashion_mnist
from salign.data.idx import idx_bytes, read_idx, write_idx
from salign.errors import ConfigError, DataError, MissingFileError

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5, 4)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 5, 4)
    np.testing.assert_array_equal(back, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_the_official_layout():
    data = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert data == bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    # multi-byte values are big-endian
    assert idx_bytes(np.array([1], dtype=np.int32))[-4:] == b"\x00\x00\x00\x01"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x00", "not an IDX file"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "bad magic"),  # unknown type byte
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "size mismatch"),  # truncated data
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "size mismatch"),  # trailing bytes
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_corrupt_idx_raises_data_error_naming_the_file(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_idx(tmp_path):
    path = tmp_path / "x.gz"
    blob = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(path)


def test_missing_idx_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope"):
        read_idx(tmp_path / "nope")


def _write_mnist_like(folder, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_user_idx_dir(tmp_path, gz):
    ref = _write_mnist_like(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = sd.load("mnist", split, data_dir=tmp_path)
        assert x.dtype == torch.float32 and x.shape == (len(ref[prefix][0]), 1, 28, 28)
        assert y.dtype == torch.int64
        torch.testing.assert_close(x[:, 0], torch.from_numpy(ref[prefix][0]).float() / 255, rtol=0, atol=0)
        assert y.tolist() == ref[prefix][1].tolist()
    # fresh tensors every call: modifying one does not change the next
    x[:] = 7
    assert sd.load("mnist", "test", data_dir=tmp_path)[0].max() <= 1


def test_user_idx_dir_mismatched_labels(tmp_path):
    _write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="labels"):
        sd.load("mnist", "test", data_dir=tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(MissingFileError, match="does-not-exist"):
        sd.load("mnist", "train", data_dir=tmp_path / "does-not-exist")
    with pytest.raises(MissingFileError, match="train images"):
        sd.load("fashion-mnist", "train", data_dir=tmp_path)


# -------------------------------------------------------------------------------------- names
def test_unknown_name_split_and_options():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*mnist.*fashion-mnist"):
        sd.load("imagenet")
    with pytest.raises(ConfigError, match="unknown split 'validation'.*train, test"):
        sd.load("mnist", "validation")
    with pytest.raises(ConfigError, match="data_dir"):
        sd.load("cifar10", "train")
    with pytest.raises(ConfigError, match="data_dir"):
        sd.load("imagefolder", "test")
    with pytest.raises(ConfigError, match="wobble"):
        sd.load("synthetic-gaussian", wobble=3)
    with pytest.raises(ConfigError, match="takes no options"):
        sd.load("mnist", "train", size=3)
    with pytest.raises(ConfigError, match="cannot fetch 'photos'"):
        sd.fetch("photos")


def test_available_lists_every_dataset_with_a_how():
    statuses = {s.name: s for s in sd.available()}
    assert set(statuses) == set(sd.DATASETS)
    assert statuses["synthetic-gaussian"].available
    for s in statuses.values():
        assert s.how
        if not s.available:
            assert any(w in s.how for w in ("salign data fetch", "pip install", "user-supplied", "apt-get"))


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path / "c"))
    assert sd.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SALIGN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert sd.cache_dir() == tmp_path / "x" / "salign"


# ------------------------------------------------------------------------------------ CIFAR-10
def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _write_cifar(folder, n=4, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[name] = _cifar_batch(n, i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reader(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    # the parent folder, the batches folder and a .tar.gz all work
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for path in (tmp_path, tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz"):
        x, y = sd.load("cifar10", "train", data_dir=path)
        assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        first = batches["data_batch_1"]
        # channel-major layout: the first 1024 values are the red plane, row-major
        expected = torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)).float() / 255
        torch.testing.assert_close(x[0], expected, rtol=0, atol=0)
        assert y[:4].tolist() == first[b"labels"]
        assert y[16:].tolist() == batches["data_batch_5"][b"labels"]
        xt, yt = sd.load("cifar10", "test", data_dir=path)
        assert xt.shape == (4, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"refused to load global (posix|os)\.system") as info:
        sd.load("cifar10", "test", data_dir=folder)
    assert "test_batch" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2, 3], "expected a dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "missing"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "0..9"),
    ],
)
def test_bad_cifar_batches(tmp_path, batch, message):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=message):
        sd.load("cifar10", "test", data_dir=tmp_path)


def test_cifar_missing_and_truncated(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(MissingFileError, match="data_batch_3"):
        sd.load("cifar10", "train", data_dir=tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch"):
        sd.load("cifar10", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------------- ImageFolder
def _write_imagefolder(root, split=None):
    from PIL import Image

    base = root / split if split else root
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for cls, rgb in colours.items():
        (base / cls).mkdir(parents=True)
        for i, size in enumerate([(40, 30), (20, 50)]):
            Image.new("RGB", size, rgb).save(base / cls / f"{i}.png")
    return colours


def test_imagefolder_reader(tmp_path):
    _write_imagefolder(tmp_path)
    x, y = sd.load("imagefolder", "train", data_dir=tmp_path, size=16)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(x[0], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 16, 16))
    torch.testing.assert_close(x[3], torch.tensor([0.0, 0, 1]).view(3, 1, 1).expand(3, 16, 16))
    xg, _ = sd.load("imagefolder", "test", data_dir=tmp_path, size=(8, 12), channels=1)
    assert xg.shape == (4, 1, 8, 12)
    torch.testing.assert_close(xg[0], torch.full((1, 8, 12), 76 / 255))  # PIL "L": round(0.299 * 255)


def test_imagefolder_splits_and_errors(tmp_path):
    _write_imagefolder(tmp_path, "train")
    _write_imagefolder(tmp_path, "val")
    x, _ = sd.load("imagefolder", "test", data_dir=tmp_path, size=8)  # "val" serves as test
    assert x.shape == (4, 3, 8, 8)
    (tmp_path / "train" / "dog" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"dog/1\.png"):
        sd.load("imagefolder", "train", data_dir=tmp_path, size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        sd.load("imagefolder", "train", data_dir=empty)
    with pytest.raises(MissingFileError):
        sd.load("imagefolder", "train", data_dir=tmp_path / "nope")
    with pytest.raises(ConfigError, match="size"):
        sd.load("imagefolder", "test", data_dir=tmp_path, size=0)


# ----------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize(
    ("k", "shape", "sep"), [(2, (1, 8, 8), 1.0), (5, (16,), 0.8), (10, (1, 28, 28), 3.0)]
)
def test_synthetic_gaussians_linearly_separable(k, shape, sep):
    x, y = sd.synthetic_gaussians(600, k, shape, seed=3, separation=sep)
    assert x.shape == (600, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    assert torch.bincount(y, minlength=k).tolist() == [600 // k] * k
    means = sd.gaussian_class_means(k, shape, seed=3, separation=sep).reshape(k, -1)
    d = torch.cdist(means, means) + torch.eye(k) * 1e9
    torch.testing.assert_close(d.min(), torch.tensor(sep, dtype=torch.float64))
    # the nearest-mean rule is a linear classifier: w_k = μ_k, b_k = -|μ_k|²/2
    logits = x.reshape(600, -1).double() @ means.T - 0.5 * (means**2).sum(1)
    assert (logits.argmax(1) == y).all()
    own = logits.gather(1, y[:, None]).squeeze(1)
    rival = logits.scatter(1, y[:, None], -torch.inf).max(1).values
    # logit gap = (|x-μ_j|² - |x-μ_k|²)/2 ≥ ((d-r)² - r²)/2 with r = 0.45 d
    assert (own - rival).min() >= ((0.55 * sep) ** 2 - (0.45 * sep) ** 2) / 2 - 1e-9


def test_synthetic_seeds_and_splits():
    a = sd.synthetic_gaussians(50, 3, (12,), seed=1)
    b = sd.synthetic_gaussians(50, 3, (12,), seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    xtr, _ = sd.load("synthetic-gaussian", "train", num_classes=3, shape=(12,), n=50, seed=1)
    xte, _ = sd.load("synthetic-gaussian", "test", num_classes=3, shape=(12,), n=50, seed=1)
    assert torch.equal(xtr, a[0]) and not torch.equal(xtr, xte)
    x64, _ = sd.synthetic_gaussians(4, dtype=torch.float64)
    assert x64.dtype == torch.float64
    with pytest.raises(ConfigError, match="separation"):
        sd.synthetic_gaussians(10, 2, (4,), separation=5.0)
    with pytest.raises(ConfigError, match="num_classes"):
        sd.synthetic_gaussians(10, 20, (4,))
    with pytest.raises(ConfigError, match="n must be"):
        sd.synthetic_gaussians(0)


# -------------------------------------------------------------------------------------- photos
def test_photos_chelsea_and_all():
    pytest.importorskip("skimage", reason="photos need scikit-image (extra 'photos')")
    x, y = sd.load_photos("chelsea")
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and y.tolist() == [281]
    assert x.min() >= 0 and x.max() <= 1 and 0.2 < x.mean() < 0.8
    xa, ya = sd.load("photos", "test")
    assert xa.shape == (len(sd.photo_names()), 3, 224, 224) and ya.dtype == torch.int64
    assert ya[list(sd.photo_names()).index("coffee")] == 967
    from salign.data.photos import ACCEPTED_LABELS

    assert all(int(ya[list(sd.photo_names()).index(n)]) in ok for n, ok in ACCEPTED_LABELS.items())
    torch.testing.assert_close(xa[0], x[0])
    camera = sd.load_photos(["camera"], size=(32, 48))[0]  # greyscale -> 3 identical channels
    assert camera.shape == (1, 3, 32, 48) and torch.equal(camera[0, 0], camera[0, 2])
    with pytest.raises(ConfigError, match="unknown photo name"):
        sd.load_photos(["lena"])


def test_center_crop_resize_matches_plain_interpolate_on_the_crop():
    from salign.data._image import center_crop_resize

    img = torch.rand(3, 30, 50)
    out = center_crop_resize(img, (15, 15))
    ref = torch.nn.functional.interpolate(
        img[None, :, :, 10:40], size=(15, 15), mode="bilinear", antialias=True, align_corners=False
    )[0]
    torch.testing.assert_close(out, ref.clamp(0, 1))


def test_lfw_subset():
    pytest.importorskip("skimage", reason="lfw_subset needs scikit-image (extra 'photos')")
    x, y = sd.load("lfw-subset")
    assert x.shape == (200, 1, 25, 25) and y.sum() == 100 and y[:100].all()


# ------------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.skipif(
    find_fashion_mnist() is None,
    reason="Fashion-MNIST not available: run `salign data fetch fashion-mnist` or "
    "`apt-get install dataset-fashion-mnist`",
)
def test_fashion_mnist():
    x, y = sd.load("fashion-mnist", "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert torch.bincount(y).tolist() == [6000] * 10
    assert abs(x.mean().item() - 0.2860) < 1e-3 and abs(x.std().item() - 0.3530) < 1e-3
    xt, yt = sd.load("fashion-mnist", "test")
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10


def _ar_member(name, data):
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_extract_deb_unpacks_data_tar(tmp_path):
    payload = gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    deb = tmp_path / "pkg.deb"
    deb.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", b"abc")  # odd size: padded
        + _ar_member("data.tar.xz", buf.getvalue())
    )
    extract_deb(deb, tmp_path / "out")
    got = read_idx(tmp_path / "out/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    assert got.tolist() == list(range(10))
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="not a Debian package"):
        extract_deb(tmp_path / "bad.deb", tmp_path / "out2")


@pytest.mark.slow
def test_fetch_fashion_mnist_with_apt_get_download(tmp_path, monkeypatch):
    import shutil

    from salign.data import fashion_mnist as fm

    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available (not a Debian/Ubuntu machine)")
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "not-installed")
    folder = fm.fetch_fashion_mnist(tmp_path)
    assert folder == tmp_path / "fashion-mnist/usr/share/datasets/fashion-mnist"
    x, y = sd.load("fashion-mnist", "test", data_dir=folder)
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
