"""Direct vs total effect of every head on the label's logit (an image's, or the mean over all images or a class).

The direct effect is the head's own share of the logit; the total effect is what the logit loses when the head is
pruned whole. A head on the diagonal acts only directly; its height above (or below) the diagonal is its indirect
effect, what it does through the later layers — where pruning and attribution part ways. Tap selects a head.
"""

from __future__ import annotations

import numpy as np
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, HoverTool, Slope

from vitscope.app.session import guarded
from vitscope.app.style import div, figure
from vitscope.readout.effects import effect_values
from vitscope.readout.importance import effects_note, has_values
from vitscope.readout.palette import SELECTED, layer_colours
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import head_name


def effect_range(direct: np.ndarray, total: np.ndarray) -> tuple[float, float]:
    """One (start, end) for both axes, over every finite value and 0, padded: the diagonal stays at 45°, so a
    head's distance above it reads as its indirect effect on the same scale."""
    values = np.concatenate([direct, total, [0.0]])
    values = values[np.isfinite(values)]
    low, high = float(values.min()), float(values.max())
    pad = 0.06 * max(high - low, 1e-6)
    return low - pad, high + pad


class DirectTotalView:
    """Scatter of the heads' direct (x) against total effect (y), coloured by layer, the selected head ringed."""

    watches = ("image", "cls", "layer", "head")

    def __init__(self, data: StoreData, sel: Selection, width: int = 240, height: int = 215) -> None:
        self.data, self.sel = data, sel
        L, H = data.layers, data.heads
        layer, head = np.divmod(np.arange(L * H), H)
        self.note = div(width, 60, css_classes=["vs-effects-missing"])
        self.note.text = f"<div style='font-size:11px;color:#666'>{esc(effects_note(data, 'direct vs total'))}</div>"
        self.figure = None
        if not (has_values(data, "direct_effect") and has_values(data, "total_effect")):  # the note stands in
            return
        zeros = np.zeros(L * H)
        self.source = ColumnDataSource({"x": zeros, "y": zeros, "indirect": zeros, "layer": layer,
                                        "name": [head_name(int(a), int(b)) for a, b in zip(layer, head, strict=True)],
                                        "colour": np.array(layer_colours(L))[layer]})
        fig = figure("direct vs total effect", width, height, name="vs-effects-fig", tools="pan,wheel_zoom,reset")
        fig.add_layout(Slope(gradient=1, y_intercept=0, line_color="#999999", line_dash="dashed", line_width=1))
        dots = fig.scatter("x", "y", source=self.source, color="colour", size=7, line_color=None)
        tips = [("head", "@name"), ("direct", "@x{+0.000}"), ("total", "@y{+0.000}"), ("indirect", "@indirect{+0.000}")]
        fig.add_tools(HoverTool(renderers=[dots], tooltips=tips))
        self.ring = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.ring, size=14, fill_alpha=0, line_color=SELECTED, line_width=3)
        fig.xaxis.axis_label, fig.yaxis.axis_label = "direct effect (logit)", "total effect (logit)"
        fig.on_event(Tap, guarded(sel, "head tap", lambda e: self.pick(e.x, e.y)))
        self.figure = fig
        self.update()

    def pick(self, x: float | None, y: float | None) -> tuple[int, int] | None:
        """Select the head nearest to (x, y) on screen (a head without values is never picked)."""
        if x is None or y is None or self.figure is None:
            return None
        xs, ys = (np.asarray(self.source.data[k], float) for k in ("x", "y"))
        f = self.figure
        sx = f.width / (f.x_range.end - f.x_range.start)  # pixels per data unit
        sy = f.height / (f.y_range.end - f.y_range.start)
        dist = (sx * (xs - x)) ** 2 + (sy * (ys - y)) ** 2
        if not np.isfinite(dist).any():
            return None
        layer, head = divmod(int(np.nanargmin(dist)), self.data.heads)
        self.sel.param.update(layer=layer, head=head)
        return layer, head

    def update(self, changed: set[str] | None = None) -> None:
        if self.figure is None:
            return
        d, s = self.data, self.sel
        if changed is None or changed & {"image", "cls"}:
            direct, total = effect_values(d, s.image, s.cls)
            self.source.data.update(x=direct, y=total, indirect=total - direct)
            if np.isfinite(direct).any() or np.isfinite(total).any():
                start, end = effect_range(direct, total)
                self.figure.x_range.update(start=start, end=end)
                self.figure.y_range.update(start=start, end=end)
            image = d.readable(s.image)
            who = (f"image {image}" if image is not None else "all images" if s.cls is None else
                   f"class {d.class_names[s.cls]!r}")
            self.figure.title.text = f"direct vs total — {who}"
        k = d.head_index(s.layer, s.head)
        self.ring.data = {"x": [float(self.source.data["x"][k])], "y": [float(self.source.data["y"][k])]}
