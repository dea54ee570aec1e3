"""Image sets from disk: class sub-folders (ImageNet style) or a flat folder plus a CSV of labels.

Images are listed up front (cheap) and decoded while building; a file that turns out
unreadable is reported in one line and skipped, never a crash halfway.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitscope.errors import VitscopeError, one_line

# Pixels decoded per image at most (8192 × 8192, about 0.27 GB as RGBA): models see a few hundred pixels a side,
# and a 0.4 MB PNG can hold 400 megapixels. PIL's own bomb check (warn above 89 M, refuse above 179 M) stays on;
# its warning is silenced since this tighter bound is enforced in `read_rgb`.
MAX_PIXELS = 2**26
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
WNID = re.compile(r"^n\d{8}$")
UNLABELLED = "unlabelled"  # the one class of a backbone's images without labels


class BadImage(Exception):
    """An image file that cannot be decoded (message: why)."""


@dataclass
class ImageSet:
    """Images (relative ids under `root`, or in-memory `arrays`) with integer labels and class names."""

    ids: list[str]
    labels: np.ndarray  # [N] int64
    class_names: list[str]
    root: Path | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)  # [N, h, w, 3] uint8 (demo set)
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Hash of what was listed (ids, labels, and file sizes or pixel data), to tell stores apart."""
        h = hashlib.sha256()
        for i, (name, label) in enumerate(zip(self.ids, self.labels.tolist(), strict=True)):
            h.update(f"{name}\0{label}\0".encode())
            if self.arrays is not None:
                h.update(self.arrays[i].tobytes())
            else:
                try:
                    st = (self.root / name).stat()
                    h.update(f"{st.st_size}\0{st.st_mtime_ns}\0".encode())
                except OSError:  # gone or unreadable since listed: the build skips it with one line
                    h.update(b"unreadable\0")
        return h.hexdigest()[:16]

    def load(self, i: int) -> Image.Image:
        """Image i as 8-bit RGB; raises BadImage with a reason."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        return read_rgb(self.root / self.ids[i])


def read_rgb(source: Path | BinaryIO) -> Image.Image:
    """Decode an image file (a path, or an open binary file) into 8-bit RGB, at most `MAX_PIXELS` decoded.

    Grayscale, palette, CMYK, 16-bit and alpha are converted (alpha composited on white); an animated image
    gives its first frame; EXIF orientation is not applied, as torchvision's and timm's loaders do not apply
    it (a store shows what those loaders give the model). A JPEG over `MAX_PIXELS` is decoded at 1/2, 1/4 or
    1/8 scale by the JPEG decoder itself; any other image over it, and anything PIL calls a decompression bomb,
    is refused from its header before a pixel is decoded. Empty, truncated, oversized or non-image files raise
    BadImage with the reason.
    """
    try:
        if isinstance(source, Path) and source.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(source) as im:
            _bound(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = a / 65535.0 if a.max() > 255 else a / 255.0
                im = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((np.clip(a / max(a.max(), 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = im.convert("RGB")
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused as a possible decompression bomb: {one_line(e).split(',')[0]}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise BadImage(one_line(e)) from None
    if rgb.width == 0 or rgb.height == 0:
        raise BadImage("zero-size image")
    return rgb


def _bound(im: Image.Image) -> None:
    """Before decoding: a JPEG over MAX_PIXELS is set to decode at the smallest scale (1/2, 1/4, 1/8) that fits;
    any other image over it is refused (PNG, TIFF and the rest cannot be decoded downscaled)."""
    w, h = im.size
    if w * h <= MAX_PIXELS:
        return
    if im.format == "JPEG":
        scale = next((s for s in (2, 4, 8) if (w // s) * (h // s) <= MAX_PIXELS), None)
        if scale is not None:
            im.draft(None, (w // scale, h // scale))
            if im.size[0] * im.size[1] <= MAX_PIXELS:
                return
    raise BadImage(f"{w} × {h} pixels ({w * h / 1e6:.0f} megapixels) is over the {MAX_PIXELS / 1e6:.0f}-megapixel "
                   f"limit for {im.format or 'this format'} (downscale it, or save it as JPEG)")


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(1000)]


def imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(1000)]


def _names_to_indices(names: list[str], num_classes: int, where: str) -> tuple[dict[str, int], list[str]]:
    """Class names → model class indices: WordNet ids through timm's ImageNet info for 1000-class
    models, else sorted names → 0..C−1. Returns (mapping, class names of the model)."""
    unique = sorted(set(names))
    if num_classes == 0:  # a backbone: the classes are the labels' own (WordNet ids shown by ImageNet name)
        shown = unique
        if all(WNID.match(n) for n in unique):
            names_of = dict(zip(imagenet_wnids(), imagenet_names(), strict=True))
            shown = [names_of.get(n, n) for n in unique]
        return {n: i for i, n in enumerate(unique)}, shown
    if num_classes == 1000 and all(WNID.match(n) for n in unique):
        wnids = imagenet_wnids()
        index = {w: i for i, w in enumerate(wnids)}
        unknown = [n for n in unique if n not in index]
        if unknown:
            raise VitscopeError(f"{where}: {unknown[0]} is not an ImageNet-1k WordNet id ({len(unknown)} such)")
        return {n: index[n] for n in unique}, imagenet_names()
    if len(unique) > num_classes:
        raise VitscopeError(
            f"{where}: {len(unique)} classes but the model has {num_classes} outputs; "
            "use folder names that are WordNet ids (ImageNet models) or a CSV with integer labels"
        )
    return {n: i for i, n in enumerate(unique)}, unique + [str(i) for i in range(len(unique), num_classes)]


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def image_folder(
    root: str | Path, num_classes: int, labels_csv: str | Path | None = None,
    limit: int | None = None, seed: int = 0,
) -> ImageSet:
    """List an image set: `root` with one sub-folder per class, or a flat `root` plus `labels_csv`
    (`file,label`; label an integer class index or a class name). `limit` samples that many (seeded)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VitscopeError(f"image folder not found: {root} (pass --images DIR)")
    if labels_csv is not None:
        ids, raw = _read_csv(Path(labels_csv).expanduser(), root)
        if all(re.fullmatch(r"-?\d+", r) for r in raw):
            labels = [int(r) for r in raw]
            num_classes = num_classes or max(labels, default=0) + 1  # a backbone: classes 0..the largest label
            bad = [v for v in labels if not 0 <= v < num_classes]
            if bad:
                raise VitscopeError(f"{labels_csv}: label {bad[0]} outside the model's 0..{num_classes - 1}")
            names = imagenet_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]
        else:
            mapping, names = _names_to_indices(raw, num_classes, str(labels_csv))
            labels = [mapping[r] for r in raw]
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes and num_classes == 0:  # a backbone's flat folder: one class, `unlabelled`, no probe
            ids = [p.relative_to(root).as_posix() for p in _list_images(root)]
            labels, names = [0] * len(ids), [UNLABELLED]
        elif not classes:
            raise VitscopeError(
                f"{root} has no class sub-folders: use one sub-folder per class, or pass --labels FILE.csv"
            )
        else:
            mapping, names = _names_to_indices(classes, num_classes, str(root))
            ids, labels = [], []
            for c in classes:
                for p in _list_images(root / c):
                    ids.append(p.relative_to(root).as_posix())
                    labels.append(mapping[c])
    if not ids:
        raise VitscopeError(f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root}")
    order = np.arange(len(ids))
    if limit is not None and limit < len(ids):
        order = np.sort(np.random.default_rng(seed).choice(len(ids), size=limit, replace=False))
    return ImageSet(ids=[ids[i] for i in order], labels=np.asarray(labels, np.int64)[order],
                    class_names=names, root=root, source=str(root))


def _read_csv(path: Path, root: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise VitscopeError(f"labels file not found: {path}")
    ids, raw = [], []
    n = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].startswith("#") or (n == 1 and row[0].strip().lower() in ("file", "filename",
                                                                                              "path")):
                    continue
                if len(row) < 2:
                    raise VitscopeError(f"{path}:{n}: expected 'file,label', got {','.join(row)!r}")
                name, label = row[0].strip(), row[1].strip()
                # Only files under the image folder: a list from elsewhere must not read ../../anything.
                if Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == "..":
                    raise VitscopeError(f"{path}:{n}: {name!r} is outside the image folder {root}")
                if not (root / name).is_file():
                    raise VitscopeError(f"{path}:{n}: {name!r} not found under {root}")
                ids.append(name)
                raw.append(label)
    except UnicodeDecodeError:
        raise VitscopeError(f"{path}: not UTF-8 text (near line {n + 1}): save the labels file as UTF-8") from None
    except csv.Error as e:
        raise VitscopeError(f"{path}:{n + 1}: not a CSV file ({one_line(e)})") from None
    return ids, raw


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [..., H, W, 3] → float [..., 3, H, W] as (x/255 − mean)/std: the one place that turns
    what the model saw (a thumbnail) into its input, so stored thumbnails reproduce inputs exactly. Contiguous: a
    strided batch takes another convolution kernel, whose last bits differ from the build's stacked images."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).movedim(-1, -3).float() / 255.0  # a copy: read-only ok
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).contiguous()


class Preprocessor:
    """The model's own timm eval transform, split so the store can keep what the model saw (uint8); for a
    transformers model, its image processor's settings (`vitscope.models.hf_preprocessing.HFPreprocessing`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        hf = getattr(model, "vitscope_preprocessing", None)  # set by HFViTAdapter
        if hf is not None:
            self.config, self.geometry = hf.data_config(), [hf.geometry]
            return
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({}, model=model)
        cfg["input_size"] = (3, *model.patch_embed.img_size)  # the built size, not the pretrained default
        self.config = cfg
        tf = create_transform(**cfg).transforms
        self.geometry = tf[:-2]  # resize + crop

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """→ (normalised [3,H,W] float tensor, thumbnail [H,W,3] uint8)."""
        for t in self.geometry:
            image = t(image)
        thumb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return normalise(thumb, self.config["mean"], self.config["std"]), thumb
