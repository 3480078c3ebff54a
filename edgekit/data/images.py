"""Image reading and preprocessing shared by training and by the exported bundle (numpy + Pillow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def to_pil(source: Any):
    """Accept a path, a Pillow image or an array (H, W[, C]) in [0, 255]."""
    from PIL import Image

    if isinstance(source, (str, Path)):
        try:
            with Image.open(source) as image:
                return image.convert("RGB")
        except Image.DecompressionBombError:
            raise EdgekitError(
                f"image {source} is too large to decode safely (over "
                f"{2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels); resize it first"
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise EdgekitError(f"cannot read image {source}: {str(exc)[:200]}") from None
    if isinstance(source, np.ndarray):
        array = np.clip(source, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if hasattr(source, "convert"):
        return source.convert("RGB")
    raise EdgekitError(f"unsupported image value of type {type(source).__name__}")


def preprocess_image(source: Any, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Resize to ``size`` x ``size`` (bilinear) and normalise: float32 array (3, size, size)."""
    from PIL import Image

    image = to_pil(source)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def read_image_folder(root: str | Path) -> tuple[list[str], list[str]]:
    """ImageFolder layout: ``root/<label>/<image>``. Returns paths and label names."""
    root = Path(root)
    if not root.exists():
        raise EdgekitError(f"image folder {root} does not exist; check the path")
    if not root.is_dir():
        raise EdgekitError(f"{root} is a file; images must be in an ImageFolder folder (root/<label>/<image>)")
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(image))
                labels.append(class_dir.name)
    if not paths:
        raise EdgekitError(f"image folder {root} has no images in class sub-folders (root/<label>/<image>.png)")
    return paths, labels


def digits_images() -> tuple[np.ndarray, list[str]]:
    """scikit-learn's 8x8 handwritten digits as 0..255 grayscale arrays, labels '0'..'9'.

    Read from the CSV scikit-learn ships (what its ``load_digits`` reads) without importing scikit-learn,
    which takes seconds (SciPy) for a 1,797-row file; ``load_digits`` itself where the file has moved."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise EdgekitError(
            "the digits dataset comes from scikit-learn, which this install lacks: pip install "
            "scikit-learn (or pip install 'edgekit[train]'), or give --data with your own files"
        )
    shipped = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if shipped.is_file():
        table = np.loadtxt(shipped, delimiter=",")
        pixels, targets = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, targets = digits.images, digits.target
    images = pixels.astype(np.float32) * (255.0 / 16.0)
    return images, [str(int(t)) for t in targets]
