"""`vitscope export`: one image's views as a single self-contained HTML file (no server, no network).

The views are rendered to plain Bokeh models with inline BokehJS: the plots that do not depend on the
head (Image Overview, the map of all heads) once, and for each embedded head selection a tab with the
Head Importance, Attention Strength and Attention Pattern details of that head. Tabs switch in the
browser; pan, zoom and hover keep working.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import holoviews as hv
import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import Div, TabPanel, Tabs
from bokeh.resources import INLINE

from vitscope.app.data import StoreData
from vitscope.app.explorer import service, store_data
from vitscope.app.overview_views import HeadImportanceView, ImageOverview, top5_html
from vitscope.app.pattern_view import AttentionPatternView
from vitscope.app.state import Selection
from vitscope.app.strength_view import AttentionStrengthView
from vitscope.errors import VitscopeError

DEFAULT_HEADS = 6
WIDTH = 620  # fixed plot width: a static page has no server to re-layout responsive plots


def parse_head(text: str) -> tuple[int, int]:
    """'L:H' or 'LxH' → (layer, head)."""
    parts = text.replace("x", ":").split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise VitscopeError(f"--heads takes LAYER:HEAD pairs such as 3:7, not {text!r}")
    return int(parts[0]), int(parts[1])


def most_important_heads(data: StoreData, image: int, metric: str, mode: int, k: int) -> list[tuple[int, int]]:
    """The k heads whose pruning changes the image's prediction most (lowest P'[true], else largest distance)."""
    v = data.metric_values(metric, mode)[image]  # [L·H]
    score = -v if metric == "prob" else v
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:k]
    return [divmod(int(i), data.heads) for i in order]


def _fixed(obj: hv.core.Dimensioned, height: int = 300, width: int = WIDTH) -> hv.core.Dimensioned:
    return obj.opts(responsive=False, width=width, height=height, clone=True)


def _render(obj) -> object:
    return hv.render(obj, backend="bokeh")


def export(store: str | Path, image: int, out: str | Path, heads: list[tuple[int, int]] | None = None,
           device: str = "cpu", metric: str = "prob", mode: int = 1) -> Path:
    """Write the snapshot of `image` with a tab per head selection; returns the path written."""
    path = str(Path(store).resolve())
    data = store_data(path)
    data.check_image(image)
    heads = heads or most_important_heads(data, image, metric, mode, DEFAULT_HEADS)
    for layer, head in heads:
        if not (0 <= layer < data.layers and 0 <= head < data.heads):
            raise VitscopeError(f"head {layer}:{head} is not in this model ({data.layers} layers × {data.heads} heads)")
    attention = service(path, device).attention(image)  # [L, H, P, P], once

    sel = Selection(image=image, metric=metric, mode=mode)
    overview = ImageOverview(data, sel)
    importance = HeadImportanceView(data, sel)
    strength = AttentionStrengthView(data, sel)
    pattern = AttentionPatternView(data, sel, lambda _: attention)

    name = html.escape(data.image_ids[image])
    true = html.escape(data.class_names[int(data.label[image])])
    spec = html.escape(str(data.ds.attrs["model_spec"]))
    header = Div(text=f"<h2>vitscope snapshot — image {image} <code>{name}</code>, true label <b>{true}</b></h2>"
                      f"<p>{spec}: {data.layers} layers × {data.heads} heads, {data.images} images in the store. "
                      f"One tab per head; pan, zoom and hover work offline.</p>", width=2 * WIDTH)
    thumb = hv.RGB(data.thumbnail(image), bounds=(0, 0, 1, 1)).opts(xaxis=None, yaxis=None, width=220, height=220,
                                                                  toolbar=None, title="the image")
    shared = row(_render(_fixed(overview.plot, 360)),
                 _render(_fixed(pattern.shaded() * pattern.density_plot() * pattern.selected_plot(), 360, 420).opts(
                     title="all heads (this image's in colour)")),
                 column(_render(thumb), Div(text=top5_html(data, image, 0, 0, 0), width=220)))

    tabs = []
    for layer, head in heads:
        sel.param.update(layer=layer, head=head, threshold=None)
        pattern.param.update(source_token=0, target_token=0)
        info = Div(text=f"<p>{_markdown_bold(pattern.info())}</p>"
                        f"{top5_html(data, image, layer, head, mode)}", width=WIDTH)
        tab = column(
            row(_render(_fixed(importance.line() * importance.line_marks() * importance.layer_bounds(), 280)),
                _render(_fixed(importance.mode_bars(), 280, 360)), info),
            row(_render(_fixed(strength.scatter() * strength.scatter_mark(), 280)),
                _render(_fixed(strength.bars(), 280, 360)), _render(_fixed(strength.area(), 280, 420))),
            row(_render(pattern.heatmap()), _render(pattern.image_masks())),
            row(_render(pattern.two_axes() * pattern.token_ticks()),
                _render(pattern.histogram() * pattern.threshold_line())),
        )
        tabs.append(TabPanel(child=tab, title=f"L{layer}H{head}"))
    page = column(header, shared, Tabs(tabs=tabs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = file_html(page, resources=INLINE, title=f"vitscope — image {image} ({data.image_ids[image]})")
    # Importing Panel adds a <script src="static/..."> (ES-module shims for Panel's own components) to Bokeh's
    # inline resources; this page has no Panel components, and from disk the relative path cannot load.
    text = re.sub(r'<script src="static/[^"]*"></script>\s*', "", text)
    out.write_text(text, encoding="utf-8")
    return out


def _markdown_bold(text: str) -> str:
    """The view's one-line Markdown (**bold** only) as HTML."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
