"""A generated ImageFolder tree of real photos (JPEG, ImageNet-like sizes) for tests and benchmarks.

No labelled natural-image dataset can be installed offline, but scikit-image ships real photos
(:mod:`salign.data.photos`). :func:`write_photo_tree` turns them into an ImageFolder tree of
any size: each image is a random crop of one photo (area 35–100 %, aspect 3:4–4:3), resized so
that its long side is a random integer in ``long_side`` (ImageNet's typical 500×375 by default),
with a random colour change (per-channel gain, brightness, gamma) and saved as a JPEG. Class
``k`` is photo ``k``, so the classes are distinguishable. The pixels are real photo content with
real JPEG statistics, which is what the streaming loader's decode cost and memory depend on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from salign.data.photos import _skimage_data, photo_names
from salign.errors import ConfigError

#: Long side (pixels) the source photos are reduced to before cropping.
_MAX_SOURCE = 720


def _source_photos(count: int) -> list[np.ndarray]:
    data = _skimage_data()
    out = []
    for name in photo_names()[:count]:
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
        if max(image.shape[:2]) > _MAX_SOURCE:  # crops of a 1411² photo would cost more, not differ
            from PIL import Image

            scale = _MAX_SOURCE / max(image.shape[:2])
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        out.append(image)
    return out


def _variant(photo: np.ndarray, rng: np.random.Generator, long_side: tuple[int, int]) -> np.ndarray:
    """One random crop + resize + colour change of ``photo`` (uint8 H×W×3)."""
    from PIL import Image

    h, w = photo.shape[:2]
    area = rng.uniform(0.35, 1.0) * h * w
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[top : top + ch, left : left + cw])
    target = int(rng.integers(long_side[0], long_side[1] + 1))
    scale = target / max(ch, cw)
    crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
    # colour: per-channel gain × brightness, then gamma, as one 256-entry lookup table per channel
    gain = rng.uniform(0.75, 1.25, size=3) * rng.uniform(0.8, 1.2)
    gamma = rng.uniform(0.7, 1.4)
    levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
    lut = (np.clip(levels * gain[None, :], 0.0, 1.0) ** gamma * 255.0 + 0.5).astype(np.uint8)
    arr = np.asarray(crop)
    return np.stack([lut[arr[:, :, c], c] for c in range(3)], axis=2)


def write_photo_tree(
    root: str | os.PathLike[str],
    *,
    train_per_class: int,
    test_per_class: int = 0,
    classes: int = 10,
    long_side: tuple[int, int] = (400, 500),
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/*.jpg`` (and ``root/test/...``) from the offline photos.

    Args:
        root: the tree's root (created; existing files of the same names are overwritten).
        train_per_class / test_per_class: images per class in each split (0: no such split).
        classes: number of classes, ≤ the 13 offline photos (class k is photo k).
        long_side: [lo, hi] of the long side in pixels (default ImageNet-like 400–500).
        quality: JPEG quality.
        seed: the tree is a function of the arguments (same seed, same bytes).

    Returns:
        ``root`` as a Path. Needs scikit-image and Pillow.
    """
    n_photos = len(photo_names())
    if not 1 <= classes <= n_photos:
        raise ConfigError(f"classes must be in [1, {n_photos}] (one offline photo per class), got {classes}")
    if train_per_class < 1 or test_per_class < 0:
        raise ConfigError(
            f"train_per_class must be ≥ 1 and test_per_class ≥ 0, got {train_per_class}, {test_per_class}"
        )
    if not 16 <= long_side[0] <= long_side[1]:
        raise ConfigError(f"long_side must be [lo, hi] with 16 <= lo <= hi, got {long_side}")
    from PIL import Image

    photos = _source_photos(classes)
    rng = np.random.default_rng(seed)
    out = Path(root)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for k in range(classes):
            if per_class == 0:
                continue
            folder = out / split / f"class{k:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = _variant(photos[k], rng, long_side)
                Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=quality)
    return out
