"""Selection change → updated Bokeh models: `vitscope.plots.linked` (HoloViews streams) against the served app.

    python benchmarks/plots_linked.py                       # cache/demo.zarr, 20 changes of each kind
    python benchmarks/plots_linked.py --store S --repeat 40

Both sides are rendered into a Bokeh document without a server (updates are synchronous) and given the same
changes: an image tap (linked: `Selection1D` event on the overview; app: `Selection.image`), then a head tap
(linked: `Tap` on the importance line; app: `Selection.layer/head`). The app side is the served app's views that
the dashboard has: ImageOverview, HeadImportanceView and AttentionStrengthView, updated as `Explorer` updates them
(each view whose `watches` meet the change). Neither side needs a model. Prints the median and max per change
(ms) and the ratio linked / app of the medians. Not a test: only medians are worth comparing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import holoviews as hv
import numpy as np
from bokeh.document import Document

import vitscope.plots as vp
from vitscope.app.importance import HeadImportanceView
from vitscope.app.overview import ImageOverview
from vitscope.app.strength import AttentionStrengthView
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData


def timed(apply: Callable[[int], None], n: int) -> list[float]:
    gc.collect()
    out = []
    for k in range(n):
        t = time.perf_counter()
        apply(k)
        out.append(time.perf_counter() - t)
    return out


def app_side(data: StoreData) -> tuple[Selection, Document]:
    """The app's three views on one selection, wired as `Explorer._changed` wires them."""
    sel = Selection()
    views = [ImageOverview(data, sel), HeadImportanceView(data, sel), AttentionStrengthView(data, sel)]
    doc = Document()
    for v in views:
        doc.add_root(v.bokeh())

    def changed(*events) -> None:
        names = {e.name for e in events}
        for v in views:
            if names & set(v.watches):
                v.update(names)

    sel.param.watch(changed, ["image", "layer", "head", "metric", "mode", "cls", "group", "pinned", "colour_by",
                              "only_class"])
    return sel, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("cache/demo.zarr"))
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    data = StoreData(args.store)
    n = args.repeat
    rows = np.flatnonzero(data.valid[data.placed])[1::3][:n]  # overview rows of different readable images
    images = data.placed[rows]
    flat = (7 * np.arange(n) + 1) % (data.layers * data.heads)

    sel, _doc = app_side(data)
    app = {"image": timed(lambda k: setattr(sel, "image", int(images[k % len(images)])), n),
           "head": timed(lambda k: sel.param.update(**dict(zip(("layer", "head"), divmod(int(flat[k]), data.heads),
                                                                strict=True))), n)}

    dash = vp.linked(data)
    hv.renderer("bokeh").get_plot(dash.figures)
    linked = {"image": timed(lambda k: dash.image_pick.event(index=[int(rows[k % len(rows)])]), n),
              "head": timed(lambda k: dash.head_tap.event(x=float(flat[k]), y=0.0), n)}
    assert dash.selection.image == int(images[(n - 1) % len(images)]) and sel.image == dash.selection.image

    print(f"{args.store}: {data.images} images, {data.layers} × {data.heads} heads; {n} changes each "
          f"(ms: median / max)\n")
    print("| change | served app (Bokeh) | linked (HoloViews) | linked / app |")
    print("| --- | --- | --- | --- |")
    for name in ("image", "head"):
        a, b = statistics.median(app[name]), statistics.median(linked[name])
        print(f"| {name} | {a * 1e3:.1f} / {max(app[name]) * 1e3:.1f} | {b * 1e3:.1f} / {max(linked[name]) * 1e3:.1f}"
              f" | {b / a:.1f}× |")


if __name__ == "__main__":
    main()
