"""The paper's Head Importance View (Fig. 1 B): one metric over all layer × head, the selected head in
modes 0–5, and the top-5 under the current pruning.

Without an image the line is the mean over all images (or over the chosen class) with a ± std band.
Tap selects a head; a horizontal drag (box select) selects a range of heads, summarised below the line.
Beside the exact metric, dashed, a cheap proxy on its own right axis — the one that ranks heads closest to exact
pruning in the current scope unless the reader picks another (an older store without head effects has only the
gradient |∂CE/∂gate|, Michel et al. 2019) — and how well it ranks heads like exact pruning (Spearman ρ per layer
and overall): proxy-based tools show only the proxy, and on real ViTs it often disagrees with what pruning does.
"""

from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.events import SelectionGeometry, Tap
from bokeh.layouts import column, row
from bokeh.models import (
    BoxAnnotation,
    BoxSelectTool,
    ColumnDataSource,
    FixedTicker,
    HoverTool,
    LinearAxis,
    PrintfTickFormatter,
    Range1d,
    Span,
)

from vitscope.app.overview import top5_html
from vitscope.app.session import guarded
from vitscope.app.style import FONT, div, figure
from vitscope.readout.effects import best, proxy_scores
from vitscope.readout.importance import (
    agreement_values,
    default_proxy,
    effects_note,
    head_at,
    importance_values,
    kind_columns,
    mode_values,
    proxy_agreement,
    proxy_choices,
    proxy_range,
    value_range,
)
from vitscope.readout.palette import PROXY, SELECTED, layer_colours
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import METRIC_LABELS, MODES, NO_BASIS, PROXY_LABELS, SINK_RANKS, SINK_SHARE, harm, head_name

# a head's dot, by head_kind
KIND_MARKERS = {"positional": "square", "content": "circle", "mixed": "triangle", "sink": "diamond"}
KIND_KEY = "■ positional  ● content  ▲ mixed  ◆ sink"


def kind_columns_marked(data: StoreData) -> dict[str, list]:
    """`kind_columns` with each head's marker (by its kind), for a scatter of heads."""
    cols = kind_columns(data)
    return {**cols, "marker": [KIND_MARKERS.get(k, "x") for k in cols["kind"]]}


def rho(v: float) -> str:
    """A Spearman ρ as the view writes it; n/a where there is none (e.g. a class without readable images)."""
    return "n/a" if not np.isfinite(v) else f"{v:+.2f}"


def proxy_text(data: StoreData, proxy: str, image: int | None, cls: int | None = None) -> str:
    """The chosen proxy's rank agreement with exact pruning in this scope (`readout.effects.scope_table`: |proxy|
    against |total effect|; one image: its ρ) and, with ★, the proxy that ranks heads closest here."""
    if len(proxy_choices(data)) == 1:
        return f"<div style='font-size:11px;color:#666'>other proxies: {esc(effects_note(data))}</div>"
    m = proxy_agreement(data, proxy, image, cls).magnitude
    image = data.readable(image)
    if image is not None:
        what = f"image {image}: <b>{rho(m.median)}</b>"
    else:
        q25, q75 = m.quartiles
        what = (f"<b>{rho(m.median)}</b> [{rho(q25)}, {rho(q75)}] median [IQR] per image, of the means "
                f"{rho(m.of_means)} ({m.images} images)")
    top = best(data, image, cls)
    star = "" if top is None else (
        f"<br>★ best here: {esc(PROXY_LABELS[top])} ({rho(proxy_agreement(data, top, image, cls).magnitude.median)})")
    return f"<div style='font-size:11px'>dashed vs exact, ρ(|proxy|, |total effect|) {what}{star}</div>"


def agreement_title(data: StoreData, image: int | None, values: dict) -> str:
    """Two lines: ρ of the proxy with ΔCE and with |ΔCE|, for the image or the images in scope."""
    image = data.readable(image)
    lines = []
    for name, k in (("ΔCE", 0), ("|ΔCE|", 1)):
        if image is not None:
            lines.append(f"ρ(proxy, {name}) image {image}: {rho(values['overall'][k])}")
        else:
            lines.append(f"ρ(proxy, {name}): {rho(values['overall'][k])}/image, means {rho(values['means'][k])}")
    return "\n".join(lines)


def group_summary(data: StoreData, group: list[int], values: np.ndarray, metric: str) -> str:
    """One line on the drag-selected heads: their range, how many, and the metric's mean and extreme."""
    if not group:
        return ("<i>Drag across the line to select a range of heads, shift-tap to add one; the ablation panel "
                "prunes them together.</i>")
    v = values[group]
    worst = group[int(np.nanargmax(harm(metric, v)))]
    name = lambda k: head_name(*divmod(k, data.heads))  # noqa: E731
    span = f"{name(group[0])}–{name(group[-1])}" if group[-1] - group[0] == len(group) - 1 else \
        ", ".join(name(g) for g in group[:4]) + (" …" if len(group) > 4 else "")
    return (f"<b>{len(group)} heads</b> {span}: mean {METRIC_LABELS[metric]} "
            f"{np.nanmean(v):.3f}; most important {name(worst)} ({values[worst]:.3f})")


def no_values_note(data: StoreData, metric: str) -> str:
    """What the view says instead of an empty line when the metric has no value in the store: a backbone store
    without labels has no class probabilities (prob, jsd are NaN), and which metrics it does offer."""
    why = ("this store has no class probabilities (a backbone without labels: prob and jsd are undefined)"
           if data.prob_basis == NO_BASIS else "this store holds no value of it")
    return f"<i>{METRIC_LABELS[metric]}: {why}; it offers {', '.join(data.metrics_shown)}.</i>"


class HeadImportanceView:
    """Line of a metric over all heads (with a ± std band for all images), mode bars, top-5."""

    watches = ("image", "metric", "mode", "layer", "head", "cls", "group")

    def _sink_tooltip(self) -> list[tuple[str, str]]:
        if not self.data.has_sinks:
            return [("sinks", "not in this store (rebuild it to add them)")]
        return [(f"on {SINK_RANKS} targets", f"@sink{{0%}} of its maps' 1s (sink: ≥ {SINK_SHARE:.0%})")]

    def __init__(self, data: StoreData, sel: Selection, width: int = 880, height: int = 215) -> None:
        self.data, self.sel = data, sel
        n = data.layers * data.heads
        x = np.arange(n)
        colours = np.array(layer_colours(data.layers))[x // data.heads]
        self.source = ColumnDataSource({"x": x, "y": np.zeros(n), "lo": np.zeros(n), "hi": np.zeros(n),
                                        "proxy": np.zeros(n), "layer": x // data.heads, "head": x % data.heads,
                                        "colour": colours, **kind_columns_marked(data)}, name="vs-importance-source")
        fig = figure("Head Importance View", width, height, name="vs-importance-fig",
                     tools="xpan,xwheel_zoom,reset", x_range=(-0.5, n - 0.5))
        fig.varea("x", "lo", "hi", source=self.source, fill_color="#888888", fill_alpha=0.25)
        fig.line("x", "y", source=self.source, color="#333333")
        self.metric_axis = fig.yaxis[0]
        fig.extra_y_ranges = {"proxy": Range1d(0, 1)}
        self.proxy_axis = LinearAxis(y_range_name="proxy", axis_label="", ticker=FixedTicker(), name="vs-proxy-axis",
                                     formatter=PrintfTickFormatter(format="%.2g"),
                                     axis_label_text_font_size=FONT, major_label_text_font_size=FONT,
                                     axis_label_text_font_style="normal", axis_label_text_color=PROXY,
                                     major_label_text_color=PROXY, axis_line_color=PROXY)
        fig.add_layout(self.proxy_axis, "right")
        fig.line("x", "proxy", source=self.source, color=PROXY, line_dash="dashed", line_width=1.5,
                 y_range_name="proxy")
        dots = fig.scatter("x", "y", source=self.source, color="colour", marker="marker", size=7, line_color=None)
        fig.vspan(x=list(np.arange(1, data.layers) * data.heads - 0.5), line_color="#bbbbbb", line_dash="dashed")
        self.group_box = BoxAnnotation(fill_color=SELECTED, fill_alpha=0.08, line_color=SELECTED, visible=False,
                                       name="vs-group")
        fig.add_layout(self.group_box)
        self.ring = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.ring, size=14, fill_alpha=0, line_color=SELECTED, line_width=3)
        drag = BoxSelectTool(dimensions="width", renderers=[dots])
        self.hover = HoverTool(renderers=[dots])
        fig.add_tools(self.hover, drag)
        fig.toolbar.active_drag = drag  # dragging selects a range of heads; the wheel still zooms
        fig.xaxis.axis_label = f"head (layer × heads + head)   {KIND_KEY}"
        dots.nonselection_glyph = dots.glyph.clone()  # a drag shows as the band, not as greyed-out dots
        self.group_marks = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.group_marks, marker="square", size=11, fill_alpha=0, line_color=SELECTED,
                    line_width=1.5)
        fig.on_event(Tap, guarded(sel, "head tap", lambda e: self.pick(e.x, shift=bool((e.modifiers or {})
                                                                                       .get("shift")))))
        fig.on_event(SelectionGeometry, guarded(sel, "head range", self._on_box))
        self.figure = fig

        self.bar_source = ColumnDataSource({"x": list(MODES), "top": np.zeros(len(MODES))})
        bars = figure("modes", 300, 145, tools="", x_range=(-0.6, len(MODES) - 0.4))
        bars.toolbar_location = None
        self.bar_glyph = bars.vbar("x", top="top", width=0.7, source=self.bar_source, color="#888888").glyph
        bars.xaxis.ticker = list(MODES)
        bars.xaxis.axis_label = "pruning mode"
        self.mode_bars = bars

        layers = np.arange(data.layers)
        self.agree_source = ColumnDataSource({"layer": layers, "signed": np.zeros(data.layers),
                                              "abs": np.zeros(data.layers), "colour": layer_colours(data.layers)})
        agree = figure("", 270, 145, tools="", x_range=(-0.6, data.layers - 0.4), y_range=(-1.05, 1.05),
                       name="vs-proxy-agreement")
        agree.toolbar_location = None
        agree.title.text_font_size = "11px"
        agree_bars = agree.vbar("layer", top="signed", width=0.7, source=self.agree_source, color="colour")
        rings = agree.scatter("layer", "abs", source=self.agree_source, size=6, fill_color=None, line_color="#222222")
        agree.add_layout(Span(location=0, dimension="width", line_color="#999999", line_width=1))
        self.by_total = len(proxy_choices(data)) > 1  # ranked against the total effect, else (older) against ΔCE
        exact = ("total", "|total|") if self.by_total else ("ΔCE", "|ΔCE|")
        agree.add_tools(HoverTool(renderers=[agree_bars, rings], tooltips=[
            ("layer", "@layer"), (f"ρ with {exact[0]}", "@signed{+0.00}"), (f"ρ with {exact[1]}", "@abs{+0.00}")]))
        agree.xaxis.ticker = list(layers)
        agree.xaxis.axis_label = f"layer: bars {exact[0]}, ○ {exact[1]}"
        agree.yaxis.ticker = [-1, 0, 1]
        self.agreement = agree
        # The mode bars and the proxy agreement side by side: the block the Explorer shows left of the top-5.
        self.bars = row(bars, agree)
        # The dashed line's proxy: the best in the current scope until the reader picks one (`chosen`).
        self.chosen: str | None = None
        self._following = False
        choices = proxy_choices(data)
        self.proxy_select = pn.widgets.Select(options={PROXY_LABELS[p]: p for p in choices},
                                              value=default_proxy(data, sel.cls), width=300,
                                              disabled=len(choices) == 1, css_classes=["vs-proxy"], margin=(1, 3))
        self.proxy_select.param.watch(guarded(sel, "proxy", self._proxy_picked), "value")
        self.proxy_text = div(300, 58, css_classes=["vs-proxy-text"])
        self.top5 = div(300, 100)
        self.summary = div(width, 22)
        self.update()

    # -- interaction ---------------------------------------------------------------------------------

    def pick(self, x: float | None, shift: bool = False) -> tuple[int, int] | None:
        """Select the head at x (a tap on the line); with shift, add it to the group (or take it out), the heads
        the ablation view prunes together."""
        if x is None:
            return None
        layer, head = head_at(self.data, x)
        k = self.data.head_index(layer, head)
        if shift:
            group = sorted(set(self.sel.group) ^ {k})
            self.sel.param.update(layer=layer, head=head, group=group)
        else:
            self.sel.param.update(layer=layer, head=head)
        return layer, head

    def select_range(self, x0: float, x1: float) -> list[int]:
        """Select the heads whose x lies in [x0, x1] as the group (the first becomes the selected head)."""
        n = self.data.layers * self.data.heads
        lo, hi = int(np.clip(np.ceil(min(x0, x1)), 0, n)), int(np.clip(np.floor(max(x0, x1)), -1, n - 1))
        group = list(range(lo, hi + 1))
        update = {"group": group}
        if group:
            update.update(zip(("layer", "head"), divmod(group[0], self.data.heads), strict=True))
        self.sel.param.update(**update)
        return group

    @property
    def proxy(self) -> str:
        """The proxy the dashed line shows: the reader's pick, else the best over all images (or the class's)."""
        return self.chosen or default_proxy(self.data, self.sel.cls)

    def pick_proxy(self, name: str) -> None:
        """Draw proxy `name` (one of `proxy_choices`) from now on, whatever the scope."""
        self.chosen = name
        self.proxy_select.value = name  # the watcher draws it, as when the reader picks it in the page

    def _proxy_picked(self, event) -> None:
        if self._following:  # the view itself follows the scope's best: not the reader's choice
            return
        self.chosen = event.new
        with pn.io.hold():
            self.update({"proxy"})

    def _on_box(self, event: SelectionGeometry) -> None:
        g = event.geometry
        if event.final and g.get("type") == "rect":
            self.select_range(g["x0"], g["x1"])

    # -- drawing -------------------------------------------------------------------------------------

    def update(self, changed: set[str] | None = None) -> None:
        d, s = self.data, self.sel
        y, std = importance_values(d, s.metric, s.mode, s.image, s.cls)
        lo, hi = (y, y) if std is None else (y - std, y + std)
        k = d.head_index(s.layer, s.head)
        name = self.proxy
        if self.proxy_select.value != name:
            self._following = True
            try:
                self.proxy_select.value = name
            finally:
                self._following = False
        if changed is None or changed & {"image", "metric", "mode", "cls", "proxy"}:
            proxy = proxy_scores(d, name, s.image, s.cls)
            self.source.data.update(y=y, lo=lo, hi=hi, proxy=proxy)
            bottom, top = value_range(np.concatenate([lo, hi])) or (0.0, 1.0)  # hi ≥ lo: min of lo, max of hi
            pad = 0.05 * max(top - bottom, 1e-6)
            start, end = bottom - pad, top + pad
            self.figure.y_range.update(start=start, end=end)
            p0, p1 = proxy_range(proxy, y, start, end, s.metric)
            self.figure.extra_y_ranges["proxy"].update(start=p0, end=p1)
            # ticks only where the proxy is (the axis runs on past it, below 0 too, to line up with the metric)
            ticks = np.linspace(np.nanmin(proxy), np.nanmax(proxy), 3) if np.isfinite(proxy).any() else []
            self.proxy_axis.ticker.ticks = [float(v) for v in ticks]
            self.proxy_axis.axis_label = f"{PROXY_LABELS[name]} (dashed)"
            self.hover.tooltips = [("head", "L@layer H@head"), ("value", "@y{0.000}"),
                                   (PROXY_LABELS[name], "@proxy{0.0000}"), ("kind", "@kind (maps agree @agree{0.00})"),
                                   *self._sink_tooltip()]
            self.metric_axis.axis_label = METRIC_LABELS[s.metric]
            image = d.readable(s.image)
            who = (f"image {image}" if image is not None else
                   "all images (mean ± std)" if s.cls is None else f"class {d.class_names[s.cls]!r} (mean ± std)")
            self.figure.title.text = (f"Head Importance View — {METRIC_LABELS[s.metric]}, {who}, mode {s.mode}"
                                      if np.isfinite(y).any() else
                                      f"Head Importance View — {METRIC_LABELS[s.metric]}: not in this store")
        if changed is None or changed & {"image", "cls", "proxy"}:
            self._draw_agreement(name)
        self.ring.data = {"x": [k], "y": [float(y[k])]}
        vals = mode_values(d, s.metric, s.layer, s.head, s.image, s.cls)
        self.bar_source.data = {"x": list(MODES), "top": vals}
        low, high = value_range(vals, floor=0.0) or (0.0, 1.0)
        self.mode_bars.y_range.update(start=low, end=high + 0.08 * max(high - low, 1e-9))  # JSD ~1e-4 visible
        self.bar_glyph.fill_color = layer_colours(d.layers)[s.layer]
        self.mode_bars.title.text = f"{head_name(s.layer, s.head)} in modes {MODES[0]}–{MODES[-1]}"
        group = [g for g in s.group if 0 <= g < len(y)]
        contiguous = bool(group) and group[-1] - group[0] == len(group) - 1
        self.group_box.update(left=group[0] - 0.5 if group else 0, right=group[-1] + 0.5 if group else 0,
                              visible=contiguous)
        self.group_marks.data = {"x": group, "y": [float(y[g]) for g in group]}
        self.summary.text = (group_summary(d, group, y, s.metric) if np.isfinite(y).any() else
                             no_values_note(d, s.metric))
        image = d.readable(s.image)
        self.top5.text = ("<i>Select an image to see its top-5 under pruning.</i>" if image is None else
                          top5_html(d, image, s.layer, s.head, s.mode))

    def _draw_agreement(self, proxy: str) -> None:
        """Per layer and overall, how well the proxy ranks heads like exact pruning: against the total effect where
        the store has it, else (an older store: the gradient alone) against whole-head pruning's ΔCE."""
        d, s = self.data, self.sel
        self.proxy_text.text = proxy_text(d, proxy, s.image, s.cls)
        if self.by_total:
            a = proxy_agreement(d, proxy, s.image, s.cls)
            self.agree_source.data.update(signed=a.signed.per_layer, abs=a.magnitude.per_layer)
            self.agreement.title.text = f"ρ per layer with the total effect\n{PROXY_LABELS[proxy]}"
            return
        values = agreement_values(d, s.image, s.cls)
        self.agree_source.data.update(signed=values["signed"], abs=values["abs"])
        self.agreement.title.text = agreement_title(d, s.image, values)

    def bokeh(self):
        return column(self.figure, self.summary, row(self.bars, column(self.proxy_text, self.top5)))
