"""Image folders, one subfolder per class, as torchvision's ImageFolder (data set `image_folder`).

    root/cat/001.png
    root/dog/a.jpg

Classes are the subfolder names in sorted order; the records are ordered class by class and by
file name within a class (torchvision's `ImageFolder.samples` order, which a membership file's
row numbers refer to). Images are read with Pillow, converted to grayscale or RGB, optionally
resized, and scaled to [0, 1] as (C, H, W) float32.

Params (`data.params`): `root` (the folder, relative to the scenario file); `color`
("rgb" or "grayscale", default "rgb"); `size` ([height, width]; default: every image must have
the first image's size); `extensions` (default the usual image suffixes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from privlab.data import Dataset, _Params, _validate
from privlab.data_records import Records, split_records
from privlab.errors import ScenarioError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class ImageFolderParams(_Params):
    root: str
    color: Literal["rgb", "grayscale"] = "rgb"
    size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))


def load_image_folder(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """One subfolder per class; stratified train/test split like the other loaders."""
    records = read_image_folder(params)
    return split_records(
        "image_folder", records, test_fraction=test_fraction, seed=seed, standardize=False
    )


def image_files(root: Path, extensions: list[str]) -> list[tuple[Path, int, str]]:
    """(file, class index, class name) in ImageFolder order; hidden files are skipped."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    out = []
    for k, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in exts and not f.name.startswith("."):
                out.append((f, k, name))
    return out


def read_image_folder(params: dict[str, Any]) -> Records:
    from PIL import Image, UnidentifiedImageError

    p = _validate(ImageFolderParams, params)
    root = Path(p.root).expanduser()
    if not root.is_dir():
        raise ScenarioError(f"data.params.root: folder '{p.root}' does not exist")
    files = image_files(root, p.extensions)
    classes = sorted({name for _, _, name in files})
    if len(classes) < 2:
        raise ScenarioError(
            f"data.params.root: '{root.name}' has images in {len(classes)} class folder(s); "
            "need one subfolder per class and at least 2 classes"
        )
    mode = "RGB" if p.color == "rgb" else "L"
    size = None if p.size is None else (p.size[1], p.size[0])  # Pillow wants (width, height)
    arrays = []
    for f, _, _ in files:
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if size is None:
                    size = img.size
                elif img.size != size:
                    if p.size is None:
                        raise ScenarioError(
                            f"data.params.size: '{f.relative_to(root)}' is {img.size[0]}x"
                            f"{img.size[1]} but the first image is {size[0]}x{size[1]}; "
                            "set size = [height, width] to resize all"
                        )
                    img = img.resize(size, Image.Resampling.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
        except (UnidentifiedImageError, OSError) as exc:
            raise ScenarioError(
                f"data.params.root: cannot read image '{f.relative_to(root)}': {exc}"
            ) from None
    x = np.stack(arrays)
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    # Class indices among the folders that hold images (empty folders are not classes).
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for _, _, name in files], dtype=np.int64)
    return Records(x=np.ascontiguousarray(x), y=y, class_names=tuple(classes))
