"""The paper's Image Overview and Head Importance View (Fig. 1 A and B)."""

from __future__ import annotations

import html
import io

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from PIL import Image
from scipy.spatial import cKDTree

from vitscope.app.data import StoreData
from vitscope.app.state import Selection
from vitscope.app.style import PLOT, SELECTED, class_colours, layer_colours, pane
from vitscope.engine.metrics import MODE_NAMES
from vitscope.errors import VitscopeError

METRIC_LABELS = {"prob": "P'[true label]", "jsd": "JSD(P, P')", "cls_dist": "CLS distance", "patch_dist":
                 "patch distance"}


def top5_html(data: StoreData, image: int, layer: int, head: int, mode: int) -> str:
    """Top-5 predictions under the current pruning, the true label in bold."""
    idx = data.topk_idx[image, layer, head, mode]
    prob = data.topk_prob[image, layer, head, mode]
    true = int(data.label[image])
    rows = []
    for c, p in zip(idx.tolist(), prob.tolist(), strict=True):
        name = html.escape(data.class_names[c]) if 0 <= c < len(data.class_names) else str(c)
        cell = f"<b>{name}</b>" if c == true else name
        rows.append(f"<tr><td>{cell}</td><td style='text-align:right'>{p:.3f}</td></tr>")
    where = "unpruned" if mode == 0 else f"L{layer}H{head} pruned, mode {mode} ({MODE_NAMES[mode]})"
    return f"<div><i>top-5, {where}</i><table>{''.join(rows)}</table></div>"


class ImageOverview(pn.viewable.Viewer):
    """Scatter of all images (tSNE of head-importance vectors) coloured by class; tap or type an id."""

    sel = param.ClassSelector(class_=Selection, doc="the shared selection (a parameter, so views can depend on it)")

    def __init__(self, data: StoreData, selection: Selection, **params) -> None:
        super().__init__(sel=selection, **params)
        self.data = data
        ok = np.flatnonzero(data.valid & np.isfinite(data.image_xy).all(1))
        self._index = ok
        self._tree = cKDTree(data.image_xy[ok])
        names = [data.class_names[int(c)] for c in data.label[ok]]
        self.frame = pd.DataFrame({"x": data.image_xy[ok, 0], "y": data.image_xy[ok, 1], "image": ok,
                                   "id": [data.image_ids[i] for i in ok], "label": names})
        labels = sorted(set(names), key=names.index)
        colours = dict(zip(labels, class_colours(len(labels)), strict=True))
        pad = 0.05 * np.ptp(data.image_xy[ok], axis=0)
        lo, hi = data.image_xy[ok].min(0) - pad, data.image_xy[ok].max(0) + pad
        self.points = hv.Points(self.frame, [hv.Dimension("x", label="tSNE x"), hv.Dimension("y", label="tSNE y")],
                                ["image", "id", "label"]).opts(
            color="label", cmap=colours, size=5, tools=["tap", "hover"], legend_position="right",
            xaxis=None, yaxis=None, title="Image Overview", xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), **PLOT)
        self.plot = self.points * hv.DynamicMap(self.marker)
        self.tap = hv.streams.Tap(source=self.points, x=None, y=None)
        self.tap.param.watch(lambda *_: self.pick(self.tap.x, self.tap.y), ["x", "y"])
        self.id_input = pn.widgets.IntInput(label="image id", start=0, end=data.images - 1, value=None,
                                            placeholder="type an image id", width=140)
        self.id_input.param.watch(lambda e: self.select(e.new), "value")

    def pick(self, x: float | None, y: float | None) -> int | None:
        """Select the image whose point is nearest to (x, y)."""
        if x is None or y is None:
            return None
        image = int(self._index[self._tree.query([x, y])[1]])
        self.select(image)
        return image

    def select(self, image: int | None) -> None:
        if image is None:
            self.sel.image = None
            return
        try:
            self.sel.param.update(image=self.data.check_image(image), message="")
        except VitscopeError as e:
            self.sel.message = str(e)

    @param.depends("sel.image")
    def marker(self) -> hv.Points:
        i = self.sel.image
        pts = np.empty((0, 2)) if i is None else self.data.image_xy[i:i + 1]
        return hv.Points(pts).opts(size=14, fill_alpha=0, line_color=SELECTED, line_width=3)

    @param.depends("sel.image")
    def detail(self) -> pn.viewable.Viewable:
        i = self.sel.image
        if i is None:
            return pn.pane.Markdown("Tap a point or type an image id to select an image.")
        d = self.data
        # A PNG, not a plot: a new Bokeh figure per image change cost ~60 ms of the 300 ms budget.
        thumb = Image.fromarray(d.thumbnail(i)).resize((180, 180), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        thumb.save(buf, format="PNG")
        rgb = pn.pane.PNG(buf.getvalue(), width=180, height=180)
        title = f"**image {i}** `{html.escape(d.image_ids[i])}` — true label **{d.class_names[int(d.label[i])]}**"
        return pn.Row(rgb, pn.Column(pn.pane.Markdown(title),
                                     pn.pane.HTML(top5_html(d, i, self.sel.layer, self.sel.head, 0))))

    def __panel__(self) -> pn.viewable.Viewable:
        plot = pane(self.plot, sizing_mode="stretch_width", css_classes=["vs-image-overview"])
        return pn.Column(self.id_input, plot, self.detail)


class HeadImportanceView(pn.viewable.Viewer):
    """Line chart of a metric over all L×H heads (mean ± std without an image), mode bars, top-5."""

    sel = param.ClassSelector(class_=Selection, doc="the shared selection")

    def __init__(self, data: StoreData, selection: Selection, **params) -> None:
        super().__init__(sel=selection, **params)
        self.data = data
        self.metric_select = pn.widgets.Select.from_param(selection.param.metric, label="metric", width=160)
        self.mode_select = pn.widgets.RadioButtonGroup.from_param(selection.param.mode, options=list(range(6)))
        # The tap source is a DynamicMap of one element: taps on a DynamicMap of an Overlay never reach Python.
        line = hv.DynamicMap(self.line)
        self.line_map = line * hv.DynamicMap(self.line_marks) * self.layer_bounds()
        self.tap = hv.streams.Tap(source=line, x=None, y=None)
        self.tap.param.watch(lambda *_: self.pick(self.tap.x), "x")

    def values(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(values [L·H], std [L·H] or None) of the chosen metric and mode for the image, or the mean."""
        v = self.data.metric_values(self.sel.metric, self.sel.mode)  # [N, L·H]
        if self.sel.image is not None:
            return v[self.sel.image], None
        ok = v[self.data.valid]
        return ok.mean(0), ok.std(0)

    def pick(self, x: float | None) -> tuple[int, int] | None:
        if x is None:
            return None
        k = int(np.clip(round(x), 0, self.data.layers * self.data.heads - 1))
        layer, head = divmod(k, self.data.heads)
        self.sel.param.update(layer=layer, head=head)
        return layer, head

    @param.depends("sel.image", "sel.metric", "sel.mode")
    def line(self) -> hv.Curve:
        """The metric over all heads (the tap target; the band, dots and marks are `line_marks`)."""
        y, std = self.values()
        ylabel = METRIC_LABELS[self.sel.metric]
        who = f"image {self.sel.image}" if std is None else "all images (mean ± std)"
        lo, hi = np.nanmin(y - (0 if std is None else std)), np.nanmax(y + (0 if std is None else std))
        pad = 0.05 * max(hi - lo, 1e-6)
        return hv.Curve((np.arange(len(y)), y), "head (layer × heads + head)", ylabel).opts(
            color="#333333", tools=["tap"], title=f"Head Importance View — {who}, mode {self.sel.mode}",
            xlim=(-0.5, len(y) - 0.5), ylim=(lo - pad, hi + pad), framewise=True, **PLOT)

    @param.depends("sel.image", "sel.metric", "sel.mode", "sel.layer", "sel.head")
    def line_marks(self) -> hv.Overlay:
        """Std band (all images), heads coloured by layer, and the selected head."""
        d = self.data
        y, std = self.values()
        x = np.arange(len(y))
        dots = hv.Points(pd.DataFrame({"x": x, "y": y, "layer": x // d.heads, "head": x % d.heads}), ["x", "y"],
                         ["layer", "head"]).opts(color="layer", cmap=layer_colours(d.layers), size=6, tools=["hover"])
        # Always a band (zero-width for one image) so the overlay keeps its structure across updates.
        band = hv.Spread((x, y, np.zeros_like(y) if std is None else std)).opts(fill_alpha=0.25, line_alpha=0,
                                                                                  color="#888888")
        k = d.head_index(self.sel.layer, self.sel.head)
        mark = hv.Points([(k, y[k])]).opts(size=14, fill_alpha=0, line_color=SELECTED, line_width=3)
        return hv.Overlay([band, dots, mark])

    def layer_bounds(self) -> hv.VLines:
        """Dashed lines between layers (static: redrawing them on every change cost more than the data)."""
        d = self.data
        return hv.VLines(np.arange(1, d.layers) * d.heads - 0.5).opts(color="#bbbbbb", line_dash="dashed")

    @param.depends("sel.image", "sel.metric", "sel.layer", "sel.head")
    def mode_bars(self) -> hv.Bars:
        d, i = self.data, self.sel.image
        v = d.importance[:, self.sel.layer, self.sel.head, :, d.metrics.index(self.sel.metric)]  # [N, 6]
        vals = v[i] if i is not None else v[d.valid].mean(0)
        return hv.Bars([(str(m), float(vals[m])) for m in range(6)], "mode", METRIC_LABELS[self.sel.metric]).opts(
            title=f"L{self.sel.layer}H{self.sel.head} in modes 0–5", color=layer_colours(d.layers)[self.sel.layer],
            tools=["hover"], **PLOT)

    @param.depends("sel.image", "sel.layer", "sel.head", "sel.mode")
    def top5(self) -> pn.viewable.Viewable:
        if self.sel.image is None:
            return pn.pane.Markdown("Select an image to see its top-5 predictions under pruning.")
        return pn.pane.HTML(top5_html(self.data, self.sel.image, self.sel.layer, self.sel.head, self.sel.mode))

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.Row(self.metric_select, pn.Column("pruning mode", self.mode_select)),
            pane(self.line_map, sizing_mode="stretch_width", css_classes=["vs-importance-line"]),
            pn.Row(pane(hv.DynamicMap(self.mode_bars), sizing_mode="stretch_width"), self.top5),
        )
