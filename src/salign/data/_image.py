"""Image helpers: uint8 HWC arrays to float NCHW in [0, 1], centre crop and antialiased resize."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_chw_float(image: np.ndarray, channels: int = 3) -> torch.Tensor:
    """An (H, W), (H, W, C) uint8/bool/float image as a float32 (channels, H, W) tensor in [0, 1].

    Greyscale is repeated to 3 channels; an alpha channel is dropped; RGB becomes grey
    (ITU-R 601 luma) when ``channels == 1``.
    """
    arr = np.asarray(image)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr[:, :, :3]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    elif channels == 1 and t.shape[0] == 3:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0)
    return t


def center_crop_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the largest centred window of the target aspect ratio, then resize (bilinear, antialiased).

    ``image`` is (C, H, W) float; returns (C, *size) clamped to [0, 1].
    """
    _, h, w = image.shape
    th, tw = size
    scale = min(h / th, w / tw)
    ch, cw = max(1, round(th * scale)), max(1, round(tw * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[:, top : top + ch, left : left + cw]
    if (ch, cw) == (th, tw):
        return crop.clone()
    out = F.interpolate(
        crop.unsqueeze(0), size=(th, tw), mode="bilinear", align_corners=False, antialias=True
    )
    return out.squeeze(0).clamp_(0.0, 1.0)


def as_size(size: int | tuple[int, int], name: str = "size") -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; validates positive ints."""
    from salign.errors import ConfigError

    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ConfigError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])
