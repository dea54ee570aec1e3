"""A transformers image processor's settings as vitscope applies them (`HFPreprocessing`): resize, centre crop,
rescale and normalise, reproduced on PIL so the stored uint8 thumbnail gives the model's input exactly.

Apart from `hf.py` (its adapter and loader) so that the data layer's preprocessing reads it without the model
code, and neither needs torch or transformers to describe a processor's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from vitscope.errors import UnsupportedModelError

RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class HFPreprocessing:
    """A transformers image processor's settings, applied as its PIL implementation applies them and split as
    vitscope's Preprocessor splits timm's transform: `geometry` (resize, centre crop) gives the uint8 image the
    model sees, then `(x/255 − mean)/std` with `mean`/`std` that absorb the processor's rescale factor."""

    resize: tuple[int, int] | int  # (height, width), or the shortest edge keeping the aspect ratio
    crop: tuple[int, int] | None  # (height, width) centre crop after the resize
    resample: int  # PIL resampling filter
    mean: tuple[float, ...]
    std: tuple[float, ...]
    processor: str

    @property
    def size(self) -> tuple[int, int]:
        """The (height, width) the model gets."""
        return self.crop if self.crop is not None else self.resize  # type: ignore[return-value]

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize and crop as transformers' `resize` (PIL) and `center_crop` (offsets floored) do."""
        if isinstance(self.resize, int):
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if w <= h else (new_long, self.resize)
        else:
            size = (self.resize[1], self.resize[0])
        image = image.convert("RGB").resize(size, resample=self.resample)
        if self.crop is not None:
            ch, cw = self.crop
            top, left = (image.height - ch) // 2, (image.width - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        return image

    def data_config(self) -> dict:
        """JSON-ready description, stored with a store like timm's data config (`input_size`, `mean`, `std`)."""
        return {"input_size": [3, *self.size], "mean": list(self.mean), "std": list(self.std),
                "interpolation": RESAMPLE.get(self.resample, str(self.resample)),
                "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "crop_size": None if self.crop is None else list(self.crop), "image_processor": self.processor}

    @classmethod
    def from_processor(cls, proc, where: str) -> HFPreprocessing:
        """From a loaded image processor (slow or fast); settings vitscope cannot reproduce raise one line."""
        name = type(proc).__name__

        def refuse(why: str):
            return UnsupportedModelError(f"{where}: its image processor ({name}) {why}; vitscope reproduces "
                                         "resize (height/width or shortest edge), centre crop, rescale, normalise")

        if not getattr(proc, "do_resize", False):
            raise refuse("does not resize, so image sizes would vary")
        if getattr(proc, "do_pad", False) or getattr(proc, "crop_pct", None) not in (None, 1, 1.0):
            raise refuse("pads or uses crop_pct")
        size = _size(proc.size)
        if {"height", "width"} <= size.keys():
            resize: tuple[int, int] | int = (int(size["height"]), int(size["width"]))
        elif set(size) == {"shortest_edge"}:
            resize = int(size["shortest_edge"])
        else:
            raise refuse(f"resizes to {size}")
        crop = None
        if getattr(proc, "do_center_crop", False):
            c = _size(proc.crop_size)
            crop = (int(c["height"]), int(c["width"]))
            room = resize if isinstance(resize, tuple) else (resize, resize)  # a shortest-edge resize: at least
            if crop[0] > room[0] or crop[1] > room[1]:
                raise refuse(f"crops {crop} out of a smaller resize {resize} (it would pad)")
        elif isinstance(resize, int):
            raise refuse("resizes the shortest edge without a crop, so image sizes would vary")
        r = float(proc.rescale_factor) if getattr(proc, "do_rescale", False) else 1.0
        mean, std = ((0.0,) * 3, (1.0,) * 3)
        if getattr(proc, "do_normalize", False):
            mean, std = _triple(proc.image_mean), _triple(proc.image_std)
        # (x·r − m)/s = (x/255 − m/(255r)) / (s/(255r)): the stored uint8 thumbnail reproduces the input.
        k = 255.0 * r
        return cls(resize=resize, crop=crop, resample=_resample(proc.resample), mean=tuple(m / k for m in mean),
                   std=tuple(s / k for s in std), processor=name)


def _size(value) -> dict:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    return {k: getattr(value, k) for k in keys if getattr(value, k, None) is not None}  # a fast processor's SizeDict


def _triple(v) -> tuple[float, ...]:
    v = [float(v)] * 3 if isinstance(v, int | float) else [float(x) for x in v]
    return tuple(v)


def _resample(value) -> int:
    if isinstance(value, int):  # PIL's enum is an int
        return int(value)
    name = getattr(value, "name", str(value)).lower()  # torchvision's InterpolationMode (fast processors)
    for code, n in RESAMPLE.items():
        if n == name:
            return code
    raise UnsupportedModelError(f"unknown resampling {value!r} in the image processor")
