"""`vitscope figure`: every view and summary of a store as a separate print file (SVG, PDF or PNG), offline.

The same `FIGURES` as a notebook, for one image and one head; the views of the image's attention recompute it with
the store's model once (as `vitscope export` does), the others read the store alone.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import holoviews as hv
import numpy as np

from vitscope.app.data import StoreData
from vitscope.errors import VitscopeError, replacing, writing
from vitscope.heads import Head, parse_head
from vitscope.plots.figures import FIGURES, build
from vitscope.plots.render import FORMATS, render
from vitscope.plots.views import store_data
from vitscope.vocab import WHOLE_HEAD


def default_head(data: StoreData, image: int | None) -> Head:
    """The head a reader wants first: the one whose pruning hurts the (readable) image most (its metric in mode 1),
    or over all images the one with the largest mean harm."""
    from vitscope.app.export import most_important_heads

    metric = "prob" if "prob" in data.metrics_shown else data.layout_metric
    if image is not None:
        return parse_head(most_important_heads(data, image, metric, WHOLE_HEAD, 1)[0])
    from vitscope.vocab import harm

    mean = np.nanmean(data.metric_values(metric, WHOLE_HEAD)[data.valid], 0)
    k = int(np.argmax(np.nan_to_num(harm(metric, mean), nan=-np.inf)))
    return Head(*divmod(k, data.heads))


def write_figures(store: str | Path, out: str | Path, fmt: str = "svg", image: int | None = None,
                  head: Head | str | None = None, device: str = "cpu", names: list[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[list[Path], list[str]]:
    """Write each figure (all of `FIGURES`, or `names`) of `store` for `image` and `head` into folder `out` as
    `<name>.<fmt>`; returns (the files written, the names skipped because they show one image and none was given)."""
    if fmt not in FORMATS:
        raise VitscopeError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    unknown = [n for n in names or [] if n not in FIGURES]
    if unknown:
        raise VitscopeError(f"no figure {unknown[0]!r}: the figures are {', '.join(FIGURES)}")
    path = str(Path(store).resolve())
    data = store_data(path)
    if image is not None:
        image = data.check_image(int(image))
    h = parse_head(head, modes=False) if head is not None else default_head(data, image)
    chosen = list(names or FIGURES)
    skipped = [n for n in chosen if FIGURES[n].needs_image and image is None]
    todo = [n for n in chosen if n not in skipped]
    attention = None
    if image is not None and any(FIGURES[n].needs_attention for n in todo):
        from vitscope.app import explorer

        attention = explorer.attention(explorer.dispatcher(path, device), "figure", image)  # [L, H, P, P], once
    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in todo:
        element = build(name, data, image=image, layer=h.layer, head=h.head, attention=attention)
        # Side-by-side panels get a page's width (HoloViews would shrink each to a third of one figure's width).
        size = (3.3 * len(element), 3.0) if isinstance(element, hv.Layout) else None
        with warnings.catch_warnings():  # matplotlib's legend of more classes than it shows: said in the title
            warnings.filterwarnings("ignore", "Mismatched number of handles and labels")
            with replacing(out / f"{name}.{fmt}") as partial:  # the figures written before it stay
                render(element, partial, fmt, size=size)
            written.append(out / f"{name}.{fmt}")
        if progress:
            progress(name)
    return written, skipped


def figure_bytes(data, name: str, fmt: str, image: int | None, layer: int, head: int,
                 attention: Callable[[int], np.ndarray]) -> bytes:
    """One figure of a selection as file content (the app's "save figure"): `attention(image)` is asked only by
    the figures of the image's attention."""
    needs = FIGURES[name].needs_attention and image is not None
    element = build(name, data, image=image, layer=layer, head=head, attention=attention(image) if needs else None)
    return render(element, io.BytesIO(), fmt).getvalue()
