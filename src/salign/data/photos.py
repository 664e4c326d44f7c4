"""Real photographs that ship inside scikit-image (no download): ImageNet-style test inputs.

``load_photos`` returns the offline ``skimage.data`` photos centre-cropped and resized to
224×224 (bilinear, antialiased), RGB in [0, 1]; ImageNet normalisation happens inside the
model (:class:`salign.models.Normalize`). Labels are ImageNet-1k class ids where the photo
shows one class unambiguously, else ``-1``: ``chelsea`` → 281 ("tabby cat"; any of the cat
classes 281–285 is a correct answer) and ``coffee`` → 967 ("espresso").
``load_lfw_subset`` returns skimage's 200 real 25×25 greyscale images (100 faces, label 1,
then 100 non-faces, label 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from salign.data._image import as_size, center_crop_resize, to_chw_float
from salign.errors import ConfigError, MissingDependencyError

#: skimage.data photos that work offline, with their ImageNet-1k label (-1: none/ambiguous).
PHOTOS: dict[str, int] = {
    "chelsea": 281,  # tabby cat (281-285 are all domestic cats)
    "coffee": 967,  # espresso
    "astronaut": -1,
    "rocket": -1,
    "stereo_motorcycle": -1,  # left view of the stereo pair
    "hubble_deep_field": -1,
    "immunohistochemistry": -1,
    "retina": -1,
    "colorwheel": -1,
    "camera": -1,  # greyscale, repeated to RGB
    "coins": -1,
    "moon": -1,
    "clock": -1,
}
#: Every ImageNet class that is a correct answer for a labelled photo (chelsea: the five domestic
#: cat classes; EfficientNet-Lite0 puts 0.40/0.32/0.16 on Egyptian/tiger/tabby cat).
ACCEPTED_LABELS: dict[str, tuple[int, ...]] = {"chelsea": (281, 282, 283, 284, 285), "coffee": (967,)}
INSTALL_HINT = "pip install 'saliency-alignment[photos]' (scikit-image)"


def photo_names() -> tuple[str, ...]:
    """Names of the offline photos :func:`load_photos` knows, in their default order."""
    return tuple(PHOTOS)


def _skimage_data():  # type: ignore[no-untyped-def]
    try:
        import skimage.data
    except ImportError:
        raise MissingDependencyError(f"photos need scikit-image: {INSTALL_HINT}") from None
    return skimage.data


def photos_available() -> bool:
    """True when scikit-image (which carries the photos) is importable."""
    import importlib.util

    return importlib.util.find_spec("skimage") is not None


@functools.lru_cache(maxsize=8)
def _photos(names: tuple[str, ...], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    data = _skimage_data()
    images = []
    for name in names:
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        images.append(center_crop_resize(to_chw_float(image, 3), size))
    return torch.stack(images), torch.tensor([PHOTOS[n] for n in names], dtype=torch.int64)


def load_photos(
    names: Sequence[str] | str | None = None, *, size: int | tuple[int, int] = 224
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline photos as ``x`` (N, 3, H, W) float32 in [0, 1] and ImageNet labels ``y`` (N,) int64.

    Args:
        names: which photos (see :func:`photo_names`); default all of them.
        size: output size, an int (square) or (height, width); default 224.
    """
    chosen = photo_names() if names is None else (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in chosen if n not in PHOTOS]
    if unknown or not chosen:
        raise ConfigError(f"unknown photo name(s) {unknown or chosen!r}; choose from {', '.join(PHOTOS)}")
    x, y = _photos(chosen, as_size(size))
    return x.clone(), y.clone()


def load_lfw_subset(*, size: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """skimage's ``lfw_subset``: (200, 1, 25, 25) in [0, 1]; labels 1 = face (first 100), 0 = not.

    ``size`` optionally resizes (bilinear, antialiased).
    """
    images = np.asarray(_skimage_data().lfw_subset(), dtype=np.float32)
    x = torch.from_numpy(images).unsqueeze(1).clamp_(0.0, 1.0)
    if size is not None:
        x = torch.stack([center_crop_resize(im, as_size(size)) for im in x])
    y = torch.cat([torch.ones(100, dtype=torch.int64), torch.zeros(len(images) - 100, dtype=torch.int64)])
    return x, y
