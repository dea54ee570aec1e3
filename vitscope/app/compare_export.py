"""`vitscope export A B --image I`: the comparison of two stores on one image as a single offline HTML file.

The compare view itself draws the page (the same figures as `vitscope serve A B`), with the image fixed. In the app a
head tap is a Python callback; here the view is asked once, in Python, what every head's tap shows (both rings and
the pair's line), and a small CustomJS copies that answer into the page. Nothing is recomputed in the browser, so the
file says exactly what the app says. Hover, the trends' legends and the table keep working from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import CustomJS, Div
from bokeh.resources import INLINE

from vitscope.app.compare_view import SIDES, TRENDS, CompareView
from vitscope.app.export import strip_panel_scripts
from vitscope.app.overview import p_true
from vitscope.app.style import downsized, figure, rgba_image
from vitscope.errors import VitscopeError, replacing
from vitscope.readout.importance import most_important_heads
from vitscope.text import esc, printable
from vitscope.vocab import WHOLE_HEAD

# On a tap in either grid: show the rings and the line the compare view showed for that head (precomputed).
TAP_JS = """
const i = source.selected.indices[0];
if (i === undefined) return;
const s = states[i];
for (let k = 0; k < 2; k++) {
  rings[k].data = s.rings[k];
  strength[k].data = s.strength[k];
}
info.text = s.info;
"""


def matched_position(view: CompareView, image: int) -> int:
    """The position of A's image `image` among the matched images; one line where it is not one of them."""
    data = view.data[0]
    data.check_image(image)
    where = np.flatnonzero(view.images["a"] == image)
    if not where.size:
        raise VitscopeError(f"image {image} ({printable(data.image_ids[image])}) of A was not analysed in B: give "
                            f"the index in A of one of the {len(view.images['a'])} images both stores hold")
    return int(where[0])


def tap_states(view: CompareView, side: str) -> list[dict[str, Any]]:
    """What a tap on each head of `side`'s grid shows, as the compare view draws it (its rings, its pair line)."""
    data = view.data[SIDES.index(side)]
    states = []
    for k in range(data.layers * data.heads):
        view.selection.param.update(side=side, layer=k // data.heads, head=k % data.heads)
        states.append({"rings": [dict(view.ring[s].data) for s in SIDES],
                       "strength": [dict(view.strength_ring[s].data) for s in SIDES], "info": view.pair_info.text})
    return states


def caption(view: CompareView, k: int) -> str:
    """The image line: its id and true label, and each model's unpruned top-1 and P[true] (HTML, escaped)."""
    parts = []
    for side, data in zip(SIDES, view.data, strict=True):
        i = int(view.images[side][k])
        top = int(data.topk_idx[i, 0, 0, 0, 0])
        name = data.class_names[top] if 0 <= top < len(data.class_names) else "?"
        parts.append(f"<b>{side.upper()}</b> top-1 {esc(name)}{' ✓' if top == data.label[i] else ''}, "
                     f"{esc(p_true(data, i))}")
    da, i = view.data[0], int(view.images["a"][k])
    return (f"<h3 style='margin:2px 0'>image {i} <code>{esc(da.image_ids[i])}</code>, true label "
            f"<b>{esc(da.class_names[int(da.label[i])])}</b></h3>" + " · ".join(parts))


def export_compare(a: str | Path, b: str | Path, image: int, out: str | Path) -> Path:
    """Write the comparison of stores `a` and `b` on A's image `image` to `out` (one HTML file); returns the path."""
    view = CompareView(a, b, names=(Path(a).name, Path(b).name))
    k = matched_position(view, image)
    view.select_image(k)
    states = {side: tap_states(view, side) for side in SIDES}
    # Start on the head of A that matters most on this image (a reader sees a pair at once).
    layer, head = most_important_heads(view.data[0], image, view.metric, WHOLE_HEAD, 1)[0]
    view.grid_source["a"].selected.indices = [view.data[0].head_index(layer, head)]
    view.pick("a", head, layer)
    for side in SIDES:
        view.grid_source[side].selected.js_on_change("indices", CustomJS(
            args={"source": view.grid_source[side], "states": states[side], "info": view.pair_info,
                  "rings": [view.ring[s] for s in SIDES], "strength": [view.strength_ring[s] for s in SIDES]},
            code=TAP_JS))

    thumb = rgba_image(downsized(view.data[0].thumbnail(image)))
    picture = figure("", 110, 110, tools="")
    picture.toolbar_location, picture.axis.visible, picture.grid.visible = None, False, False
    picture.image_rgba([thumb], x=0, y=0, dw=1, dh=1)
    header = Div(text=f"<h2 style='margin:4px 0'>vitscope — two models compared</h2>{view.header().object}<br>"
                      "Offline snapshot: tap a head in either grid to ring its matched head in the other model; "
                      "hover for values.", width=1240)
    table_title = Div(text=view.table_title.replace("; tap a row", "") + " (# : export that image with "
                      "<code>--image #</code>)", width=620)
    side = lambda s: column(view.grid[s], view.strength[s], view.summary[s])  # noqa: E731
    page = column(header, row(picture, Div(text=caption(view, k), width=1100)), view.pair_info,
                  row(side("a"), side("b"), column(table_title, view.table)),
                  row(*(view.trend[key] for key, _ in TRENDS)))
    out = Path(out)
    text = file_html(page, resources=INLINE, suppress_callback_warning=True,  # the app's Python callbacks: none run
                     title=f"vitscope — {printable(view.names[0])} vs {printable(view.names[1])}, image {image}")
    with replacing(out) as partial:
        partial.write_text(strip_panel_scripts(text), encoding="utf-8")
    return out
