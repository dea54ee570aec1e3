"""`vitscope export`: one image's views as a single self-contained HTML file (no server, no network).

The same view classes as the live app draw the page (plain Bokeh figures, inline BokehJS): the Image
Overview once, and for each embedded head a tab with the Head Importance, Attention Strength and
Attention Pattern views of that head. Tabs switch in the browser; pan, zoom and hover keep working.
"""

from __future__ import annotations

import re
from pathlib import Path

from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import Div, TabPanel, Tabs
from bokeh.resources import INLINE

from vitscope.app.importance import HeadImportanceView
from vitscope.app.overview import ImageOverview
from vitscope.app.pattern_view import AttentionPatternView
from vitscope.app.strength import AttentionStrengthView
from vitscope.errors import VitscopeError, check_writable, replacing
from vitscope.heads import Head, parse_head
from vitscope.readout.importance import most_important_heads
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import store_data
from vitscope.service.dispatch import ask_attention, shared_dispatcher
from vitscope.text import esc, printable
from vitscope.vocab import DEFAULT_METRIC, WHOLE_HEAD

DEFAULT_HEADS = 6


def strip_panel_scripts(html: str) -> str:
    """A file page without the `<script src="static/...">` that importing Panel adds to Bokeh's inline resources
    (ES-module shims for Panel's own components): the page has none, and from disk the relative path cannot load."""
    return re.sub(r'<script src="static/[^"]*"></script>\s*', "", html)


def export(store: str | Path, image: int, out: str | Path, heads: list[Head | tuple[int, int]] | None = None,
           device: str = "cpu", metric: str = DEFAULT_METRIC, mode: int = WHOLE_HEAD) -> Path:
    """Write the snapshot of `image` with a tab per head selection; returns the path written."""
    path = str(Path(store).resolve())
    data = store_data(path)
    data.check_image(image)
    if metric not in data.metrics_shown:  # a backbone store without labels: no prob/jsd, a feature metric instead
        metric = data.layout_metric
    heads = [parse_head(h, modes=False) for h in heads or most_important_heads(data, image, metric, mode,
                                                                              DEFAULT_HEADS)]
    for h in heads:
        if not (0 <= h.layer < data.layers and 0 <= h.head < data.heads):
            raise VitscopeError(f"head {h.layer}:{h.head} is not in this model ({data.layers} layers × {data.heads} "
                                "heads)")
    check_writable(out)  # before the model's work
    att = ask_attention(shared_dispatcher(path, device), "export", image)  # [L, H, P, P], once

    overview = ImageOverview(data, Selection(image=image))
    name = esc(data.image_ids[image])
    true = esc(data.class_names[int(data.label[image])])
    header = Div(text=f"<h2>vitscope snapshot — image {image} <code>{name}</code>, true label <b>{true}</b></h2>"
                      f"<p>{esc(data.model_spec)}: {data.layers} layers × {data.heads} heads, {data.images} "
                      f"images in the store ({esc(data.basis_text)}). One tab per head; pan, zoom and hover work "
                      "offline.</p>", width=1200)
    tabs, raster = [], None
    for h in heads:
        sel = Selection(image=image, layer=h.layer, head=h.head, metric=metric, mode=mode)
        importance = HeadImportanceView(data, sel)
        strength = AttentionStrengthView(data, sel)
        pattern = AttentionPatternView(data, sel, lambda _, layer: att[layer], overview.thumb_source, raster)
        raster = pattern.map.raster  # the map of all heads is the same in every tab: one copy in the file
        tab = column(importance.bokeh(), row(strength.bokeh(), pattern.bokeh()))
        tabs.append(TabPanel(child=tab, title=h.name))
    page = column(header, overview.bokeh(), Tabs(tabs=tabs))
    out = Path(out)
    text = file_html(page, resources=INLINE, title=f"vitscope — image {image} ({printable(data.image_ids[image])})",
                     suppress_callback_warning=True)  # the live app's Python callbacks: none run in a file
    with replacing(out) as partial:
        partial.write_text(strip_panel_scripts(text), encoding="utf-8")
    return out
