"""An offline pool of real photographs as an ImageFolder tree, labelled by a teacher network.

No labelled natural-image dataset installs here, but real photos do: scikit-image's
``skimage.data`` photographs, scikit-learn's two sample images, matplotlib's Grace Hopper
portrait, and the photographic wallpapers of Debian packages (``plasma-workspace-wallpapers``,
``mate-backgrounds``, ``ukui-wallpapers``; fetched with ``make photo-pool``). This module gathers
whatever of those is present, stores each image once (short side resized to ``short_side``,
JPEG), splits them into a fine-tuning pool and a held-out set by a seeded hash of the name, and
labels every image with the **teacher's own top-1 ImageNet class** on its centre crop:
distillation labels, not ground truth (say so wherever the numbers are used).

Output (``root``): ``train/<class>/<name>.jpg``, ``test/<class>/<name>.jpg`` and the file lists
``train.txt`` / ``test.txt`` (``path label`` with the ImageNet class id, read by
:class:`salign.data.streaming.ImageFolderDataset` and the ``imagefolder`` reader), plus
``pool.json`` recording every image's source, split, label and teacher probability.

Run ``python -m salign.experiments.photo_pool --out DIR [--debian DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from salign._io import write_json_atomic, write_text_atomic
from salign.errors import DataError

#: skimage photographs that are real photos of the world (not phantoms, logos or binary masks);
#: ``cat`` is the same image as ``chelsea`` and is left out.
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle",
)  # fmt: skip
#: Debian wallpaper folders searched under ``--debian`` (the root of the extracted packages).
DEBIAN_GLOBS = (
    "plasma-workspace-wallpapers/usr/share/wallpapers/*/contents/images",
    "mate-backgrounds/usr/share/backgrounds/mate/nature",
    "ukui-wallpapers/usr/share/backgrounds",
)


def _skimage() -> Iterator[tuple[str, np.ndarray]]:
    try:
        import skimage.data
    except ImportError:
        return
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        yield f"skimage-{name}", image[0] if isinstance(image, tuple) else image


def _sklearn_and_matplotlib() -> Iterator[tuple[str, np.ndarray]]:
    try:
        from sklearn.datasets import load_sample_images

        for fname, image in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
            yield f"sklearn-{Path(fname).stem}", image
    except ImportError:
        pass
    try:
        import matplotlib.cbook
        from PIL import Image

        with Image.open(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))) as im:
            yield "matplotlib-grace_hopper", np.asarray(im.convert("RGB"))
    except (ImportError, OSError, ValueError):
        pass


def _debian(root: Path) -> Iterator[tuple[str, np.ndarray]]:
    from PIL import Image

    for pattern in DEBIAN_GLOBS:
        for folder in sorted(root.glob(pattern)):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if folder.name == "images":  # plasma: one picture in many sizes: take the one nearest 1920 wide
                files = sorted(files, key=lambda p: abs(_width(p) - 1920))[:1]
                stems = [folder.parent.parent.name]
            else:
                stems = [p.stem for p in files]
            package = pattern.split("/", 1)[0]
            for path, stem in zip(files, stems, strict=True):
                with Image.open(path) as im:
                    yield f"{package}-{stem}", np.asarray(im.convert("RGB"))


def _width(path: Path) -> int:
    head = path.stem.split("x")[0]
    return int(head) if head.isdigit() else 0


def gather(debian: Path | None) -> list[tuple[str, np.ndarray]]:
    """Every offline photo found, as (name, HWC uint8 RGB) pairs, in a fixed order."""
    found = [*_skimage(), *_sklearn_and_matplotlib(), *(_debian(debian) if debian else [])]
    out = []
    for name, image in found:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(arr[:, :, :3])))
    return out


def held_out(name: str, fraction: float, seed: int) -> bool:
    """Whether ``name`` goes to the held-out split: a seeded hash, stable across machines."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_photo_pool(
    root: str | os.PathLike[str],
    *,
    debian: str | os.PathLike[str] | None = None,
    teacher: str = "efficientnet_lite0",
    short_side: int = 512,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> dict[str, object]:
    """Write the labelled pool under ``root`` (see the module docstring); returns its summary."""
    from PIL import Image

    import salign.models
    from salign.data._image import center_crop_resize, to_chw_float

    photos = gather(Path(debian) if debian else None)
    if not photos:
        raise DataError("no offline photos found (install scikit-image, or pass --debian DIR)")
    model = salign.models.build(teacher, pretrained=True).eval()
    out = Path(root)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    records = []
    for name, image in photos:
        x = center_crop_resize(to_chw_float(image, 3), (224, 224)).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        label, p = int(probs.argmax()), float(probs.max())
        split = "test" if held_out(name, test_fraction, seed) else "train"
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        im = Image.fromarray(image)
        if scale < 1:
            im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        rel = f"{label:04d}/{name}.jpg"
        (out / split / f"{label:04d}").mkdir(parents=True, exist_ok=True)
        im.save(out / split / rel, quality=95)
        lists[split].append(f"{rel} {label}")
        records.append({"name": name, "split": split, "label": label, "teacher_probability": p,
                        "height": im.height, "width": im.width})  # fmt: skip
    for split, lines in lists.items():
        write_text_atomic(out / f"{split}.txt", "\n".join(lines) + "\n")
    summary = {
        "teacher": teacher,
        "labels": "the teacher's top-1 ImageNet class on the 224 centre crop (distillation labels)",
        "train": len(lists["train"]),
        "test": len(lists["test"]),
        "classes": len({r["label"] for r in records}),
        "images": records,
    }
    write_json_atomic(out / "pool.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, help="the ImageFolder root to write")
    parser.add_argument("--debian", default=None, help="root of the extracted Debian wallpaper packages")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    s = build_photo_pool(args.out, debian=args.debian, test_fraction=args.test_fraction, seed=args.seed)
    print(
        f"{args.out}: {s['train']} fine-tuning + {s['test']} held-out photos, {s['classes']} teacher classes"
    )


if __name__ == "__main__":
    main()
