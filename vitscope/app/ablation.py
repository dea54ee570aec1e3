"""On-demand ablation in the app: the selected heads pruned together or patched from another image (`patching.py`),
pair interactions, pruning curves, patch saliency and a new image, each asked of the process's one service and
drawn when its answer comes.

The view never waits: it submits a request (the session's latest per channel wins), shows "computing…",
and pushes the answer into plots built once, on the session's own event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import panel as pn
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper, PrintfTickFormatter

from vitscope.app.patching import PatchPanel
from vitscope.app.session import guarded
from vitscope.app.style import bokeh_pane, div, downsized, figure, light_button, rgba_image, text_pane
from vitscope.errors import VitscopeError, one_line
from vitscope.heads import Head, top_heads
from vitscope.readout.palette import BLACK, BLUE, DIVERGING, PROXY, SELECTED, VERMILLION, YELLOW, rgb
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import CURVE_ORDERS, PAIR_COUNT, WHOLE_HEAD, curve_parts

WIDTH = 225
CRITERION_COLOURS = {"exact": BLACK, "proxy": PROXY, "random": "#999999"}


def order_style(order: str) -> dict:
    """A curve's line: one colour per criterion, solid harmful-first, dashed harmless-first; the legend says both."""
    criterion, direction = curve_parts(order)
    return {"color": CRITERION_COLOURS[criterion], "line_dash": "dashed" if direction == "harmless-first" else "solid",
            "line_width": 1.5 if criterion == "random" else 2,
            "legend_label": f"{criterion}, {direction.replace('-', ' ')}" if direction else criterion}


def prunable_text(r: dict) -> str:
    """The line under a set curve: per order, heads pruned before top-1 drops by more than the tolerance."""
    if r.get("prunable") is None:
        return ""
    rows = {}
    for o, n in r["prunable"].items():
        criterion, direction = curve_parts(o)
        rows.setdefault(criterion, []).append(f"{direction.removesuffix('-first')} <b>{n}</b>" if direction
                                              else f"<b>{n}</b>")
    return (f"<div style='font-size:11px'>heads prunable before top-1 ({r['baseline']:.3f}) drops by more than "
            f"{r['tol']:g}: " + "; ".join(f"{c} {', '.join(v)}" for c, v in rows.items()) + "</div>")
Submit = Callable[[dict, str, Callable[[int, int], None] | None], Future]


def heat_rgba(thumb: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """The image under its saliency: vermillion where occluding a square lowers P[true], blue where it raises it."""
    h, w = thumb.shape[:2]
    s = drops.shape[0]
    scale = max(float(np.abs(drops).max()), 1e-9)
    cell = np.kron(drops / scale, np.ones((-(-h // s), -(-w // s))))[:h, :w]  # [h, w] in [-1, 1]
    out = thumb.astype(np.float64) * 0.55 + 255 * 0.45
    lower, raise_ = rgb(VERMILLION) * 255, rgb(BLUE) * 255
    a = np.abs(cell)[..., None] * 0.85
    out = out * (1 - a) + np.where(cell[..., None] > 0, lower, raise_) * a
    return np.clip(out, 0, 255).astype(np.uint8)


class AblationView:
    """Joint pruning of the selected heads vs the sum of their single effects, and the on-demand analyses."""

    watches = ("image", "group", "mode", "layer", "head", "layout")

    def __init__(self, data: StoreData, sel: Selection, submit: Submit,
                 schedule: Callable[[Callable[[], None]], None], overview_fig=None, map_fig=None) -> None:
        self.data, self.sel, self.submit, self.schedule = data, sel, submit, schedule
        self._latest: dict[str, Future] = {}
        self.new_image: dict | None = None

        self.joint_source = ColumnDataSource({"x": [0, 1], "top": [0.0, 0.0], "colour": [SELECTED, "#999999"],
                                              "what": ["pruned together", "sum of single drops"]})
        joint = figure("", WIDTH, 130, tools="", x_range=(-0.6, 1.6), y_range=(-0.05, 0.05), name="vs-joint")
        joint.toolbar_location = None
        bars = joint.vbar("x", top="top", width=0.6, color="colour", source=self.joint_source)
        joint.add_tools(HoverTool(renderers=[bars], tooltips=[("", "@what"), ("drop of P[true]", "@top{+0.0000}")]))
        joint.xaxis.ticker = [0, 1]
        joint.xaxis.major_label_overrides = {0: "together", 1: "Σ singles"}
        joint.yaxis.formatter = PrintfTickFormatter(format="%+.3f")  # not 1.000e-3: the sidebar is narrow
        self.joint = joint
        self.joint_text = div(WIDTH, 96)

        self.pair_source = ColumnDataSource({"x": [], "y": [], "value": [], "a": [], "b": []})
        self.pair_mapper = LinearColorMapper(palette=list(DIVERGING), low=-1e-3, high=1e-3)
        pairs = figure("pair interactions", WIDTH, WIDTH, tools="", x_range=(-0.5, PAIR_COUNT - 0.5),
                       y_range=(PAIR_COUNT - 0.5, -0.5), name="vs-pairs", bare=True)
        pairs.toolbar_location = None
        cells = pairs.rect("x", "y", 1, 1, source=self.pair_source, line_color=None,
                           fill_color={"field": "value", "transform": self.pair_mapper})
        pairs.add_tools(HoverTool(renderers=[cells], tooltips=[("pair", "@a + @b"),
                                                               ("Δ(i,j) − Δ(i) − Δ(j)", "@value{+0.0000}")]))
        pairs.on_event(Tap, guarded(sel, "pair tap", lambda e: self.pick_pair(e.x, e.y)))
        self.pairs = pairs
        self._pair_heads: list[tuple[int, int]] = []

        self.curve_sources = {o: ColumnDataSource({"x": [], "y": []}) for o in CURVE_ORDERS}
        curve = figure("pruning curve", WIDTH, 250, tools="", x_range=(0, 1), y_range=(0, 1.02), name="vs-curve")
        curve.toolbar_location = None
        for o, src in self.curve_sources.items():
            curve.line("x", "y", source=src, **order_style(o))
        legend = curve.legend[0]
        curve.add_layout(legend, "below")  # five entries would hide the harmless-first curves inside the plot
        legend.update(ncols=2, label_text_font_size="9px", padding=1, spacing=1, margin=2, glyph_width=16,
                      label_standoff=2)
        curve.xaxis.axis_label = "heads pruned"
        self.curve = curve
        self.curve_text = div(WIDTH, 44)

        self.saliency_source = ColumnDataSource({"image": [np.zeros((1, 1), np.uint32)]})
        sal = figure("patch saliency", WIDTH, WIDTH, tools="", name="vs-saliency", bare=True)
        sal.toolbar_location = None
        sal.image_rgba("image", x=0, y=0, dw=1, dh=1, source=self.saliency_source)
        self.saliency = sal
        self.slots = {name: pn.Column(margin=0) for name in ("pairs", "curve", "saliency")}  # filled by _reveal

        self.status = pn.pane.HTML("", width=WIDTH, height=36, css_classes=["vs-ablation-status"])
        self.progress = pn.indicators.Progress(value=0, max=1, width=WIDTH, visible=False, bar_color="info")
        self.pairs_button = pn.widgets.Button(label=f"pairs of top {PAIR_COUNT}", width=WIDTH // 2 - 5,
                                              **light_button())
        self.pairs_button.on_click(guarded(sel, "pairs", lambda _: self.ask_pairs()))
        self.curve_button = pn.widgets.Button(label="pruning curve", width=WIDTH // 2 - 5, **light_button())
        self.curve_button.on_click(guarded(sel, "curve", lambda _: self.ask_curve()))
        self.saliency_button = pn.widgets.Button(label="patch saliency", width=WIDTH // 2 - 5, **light_button())
        self.saliency_button.on_click(guarded(sel, "saliency", lambda _: self.ask_saliency()))
        self.upload = pn.widgets.FileInput(accept="image/*", width=WIDTH, css_classes=["vs-upload"])
        self.upload.param.watch(guarded(sel, "upload", lambda e: self.ask_new_image(e.new, self.upload.filename)),
                                "value")

        self.patching = PatchPanel(data, sel, submit, schedule, self.heads, WIDTH)

        # the new image, shown as a temporary point (a star) in the Image Overview and the pattern map
        self.temp_image = ColumnDataSource({"x": [], "y": [], "name": []})
        self.temp_head = ColumnDataSource({"x": [], "y": [], "name": []})
        for fig, src in ((overview_fig, self.temp_image), (map_fig, self.temp_head)):
            if fig is not None:
                fig.scatter("x", "y", source=src, marker="star", size=20, fill_color=YELLOW,
                            line_color="#222222", line_width=1.5)
        self.update()

    # -- requests ---------------------------------------------------------------------------------------

    def _ask(self, channel: str, request: dict, show: Callable[[dict], None], what: str,
             progress: bool = False) -> Future | None:
        """Submit; draw the answer with `show` if it is still this session's latest for the channel."""
        self.status.object = f"<i>{esc(what)}: computing…</i>"
        if progress:
            self.progress.param.update(value=0, visible=True)
        report = self._progress if progress else None
        try:
            fut = self.submit(request, channel, report)
        except VitscopeError as e:  # no service (e.g. the model cannot be loaded here): say so in this view
            self.progress.visible = False
            self._error(what, one_line(e))
            return None
        self._latest[channel] = fut

        def done(f: Future) -> None:
            if f.cancelled() or self._latest.get(channel) is not f:
                return
            self.schedule(lambda: self._answer(f, show, what, progress))

        fut.add_done_callback(done)
        return fut

    def _progress(self, done: int, total: int) -> None:
        def show() -> None:
            self.progress.max = max(int(total), 1)
            self.progress.value = min(int(done), self.progress.max)

        self.schedule(show)

    def _answer(self, f: Future, show: Callable[[dict], None], what: str, progress: bool) -> None:
        if progress:
            self.progress.visible = False
        try:
            result = f.result()
        except Exception as e:  # noqa: BLE001 - the service's own failure: one line in the page
            result = {"error": one_line(e)}
        if "error" in result:
            self._error(what, result["error"])
            return
        self.status.object = ""
        with pn.io.hold():
            show(result)

    def _error(self, what: str, line: str) -> None:
        self.status.object = f"<span style='color:{SELECTED}'>{esc(what)}: {esc(line)}</span>"

    def heads(self) -> list[Head]:
        """The heads to prune together, in the selected mode: the group (drag or shift-tap in the Head Importance
        View), else the selected head."""
        H = self.data.heads
        group = self.sel.group or [self.data.head_index(self.sel.layer, self.sel.head)]
        return [Head(*divmod(int(k), H), self.sel.mode) for k in group]

    def ask_joint(self) -> Future | None:
        s = self.sel
        image = self.data.readable(s.image)
        if image is None or s.mode == 0:
            self.joint_source.data.update(top=[0.0, 0.0])
            self.joint_text.text = ("<i>Select an image, then drag or shift-tap heads in the Head Importance View "
                                    "to prune them together.</i>")
            return None
        heads = self.heads()
        stored = self.data.stored_prune(image, heads[0]) if len(heads) == 1 else None
        if stored is not None:  # the build's own ablation of this head: drawn now, nothing asked of the model
            self._latest.pop("joint", None)  # an earlier group's answer, still computing, draws nothing
            self.status.object = ""
            self.show_joint(stored)
            return None
        return self._ask("joint", {"kind": "prune", "image": image, "heads": heads}, self.show_joint,
                         f"{len(heads)} heads pruned together")

    def ask_pairs(self) -> Future | None:
        image = self.data.readable(self.sel.image)
        if image is None:
            self.status.object = "<i>Select an image first.</i>"
            return None
        d = self.data
        heads = top_heads(d.importance[image, :, :, WHOLE_HEAD, d.metrics.index("prob")], PAIR_COUNT)
        return self._ask("pairs", {"kind": "pairs", "image": image, "heads": heads},
                         lambda r: self.show_pairs(r, heads), "pair interactions", progress=True)

    def ask_curve(self) -> Future:
        s = self.sel
        image = self.data.readable(s.image)
        cls = s.cls if image is None else None
        return self._ask("curve", {"kind": "curve", "image": image, "cls": cls}, self.show_curve,
                         "pruning curve", progress=True)

    def ask_saliency(self) -> Future | None:
        image = self.data.readable(self.sel.image)
        if image is None:
            self.status.object = "<i>Select an image first.</i>"
            return None
        return self._ask("saliency", {"kind": "saliency", "image": image}, self.show_saliency, "patch saliency",
                         progress=True)

    def ask_new_image(self, data: bytes | None, name: str | None) -> Future | None:
        if not data:
            return None
        return self._ask("new_image", {"kind": "new_image", "data": data, "name": name}, self.show_new_image,
                         f"analysing {name or 'the upload'}")

    # -- answers ----------------------------------------------------------------------------------------

    def show_joint(self, r: dict) -> None:
        together = r["drop"]
        singles = r["sum_of_single_drops"]
        self.joint_source.data.update(top=[together, singles if singles is not None else 0.0])
        lo, hi = min(0.0, together, singles or 0.0), max(0.0, together, singles or 0.0)
        pad = 0.1 * max(hi - lo, 1e-4)
        self.joint.y_range.update(start=lo - pad, end=hi + pad)
        n = len(r["heads"])
        self.joint.title.text = f"{n} head{'s' if n > 1 else ''} pruned together: drop"
        top5 = ", ".join(f"{esc(str(c))} {p:.2f}" for c, p in r["top5"][:3])
        self.joint_text.text = (
            f"<div style='font-size:11px'>P[true] {r['baseline_prob']:.3f} → <b>{r['prob']:.3f}</b>, "
            f"JSD {r['jsd']:.4f}<br>" + (f"together − Σ singles: <b>{together - singles:+.4f}</b><br>"
                                         if singles is not None else "") +
            f"top-3: {top5}<br><span style='color:#666'>{esc(', '.join(r['heads'][:6]))}"
            f"{' …' if n > 6 else ''}{' · as the build measured it' if r.get('stored') else ''}</span></div>")

    def show_pairs(self, r: dict, heads: list[Head]) -> None:
        """The interactions of `heads`, the pairs request's heads in its order."""
        inter = np.asarray(r["interaction"])
        k = len(r["heads"])
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        names = np.asarray(r["heads"], dtype=object)
        self.pair_source.data = {"x": j.ravel(), "y": i.ravel(), "value": inter.ravel(), "a": names[i.ravel()],
                                 "b": names[j.ravel()]}
        m = max(float(np.abs(inter).max()), 1e-6)
        self.pair_mapper.update(low=-m, high=m)
        self.pairs.x_range.update(start=-0.5, end=k - 0.5)
        self.pairs.y_range.update(start=k - 0.5, end=-0.5)
        self.pairs.title.text = f"pairs, image {r['image']} (±{m:.2g})"
        self._pair_heads = [(h.layer, h.head) for h in heads]
        self._reveal("pairs")

    def pick_pair(self, x: float | None, y: float | None) -> list[int] | None:
        """Tap on a cell: that pair becomes the group (and is pruned together)."""
        k = len(self._pair_heads)
        if x is None or y is None or not k:
            return None
        a, b = self._pair_heads[int(np.clip(round(y), 0, k - 1))], self._pair_heads[int(np.clip(round(x), 0, k - 1))]
        group = sorted({self.data.head_index(*a), self.data.head_index(*b)})
        self.sel.param.update(group=group, layer=a[0], head=a[1])
        return group

    def show_curve(self, r: dict) -> None:
        for o, src in self.curve_sources.items():
            src.data = {"x": r["steps"], "y": r["curves"][o]} if o in r["curves"] else {"x": [], "y": []}
        self.curve.x_range.update(start=0, end=max(r["steps"]))
        who = f"image {r['image']}" if r["image"] is not None else (
            f"class {self.data.class_names[r['cls']]}" if r["cls"] is not None else "all images")
        if r["image"] is None and r["images"] < r["of"]:
            who += f" ({r['images']} of {r['of']})"
        self.curve.yaxis.axis_label = "P'[true]" if r["y"] == "prob" else "top-1 accuracy"
        self.curve.title.text = f"pruning curve, {who}"
        self.curve_text.text = prunable_text(r)
        self._reveal("curve")

    def show_saliency(self, r: dict) -> None:
        thumb = downsized(self.data.thumbnail(r["image"]))
        self.saliency_source.data = {"image": [rgba_image(heat_rgba(thumb, np.asarray(r["drops"])))]}
        self.saliency.title.text = f"patch saliency, image {r['image']}"
        self._reveal("saliency")

    def show_new_image(self, r: dict) -> None:
        self.new_image = r
        self.status.object = (f"<div style='font-size:11px'><b>{esc(r['name'])}</b>: predicted "
                              f"{esc(r['top5'][0][0])} ({r['top5'][0][1]:.2f}); the ★ in the views</div>")
        self._place_new()

    def _place_new(self) -> None:
        r = self.new_image
        if r is None:
            return
        if r.get("image_xy") is not None:
            self.temp_image.data = {"x": [r["image_xy"][0]], "y": [r["image_xy"][1]], "name": [r["name"]]}
        heads = r.get("head_xy_cls" if self.sel.layout == "cls" else "head_xy_patch")
        if heads is not None:
            xy = heads[self.sel.layer][self.sel.head]
            self.temp_head.data = {"x": [xy[0]], "y": [xy[1]], "name": [r["name"]]}

    def update(self, changed: set[str] | None = None) -> None:
        if changed is None or changed & {"image", "group", "mode", "layer", "head"}:
            if changed is None or changed & {"image", "group", "mode"} or not self.sel.group:
                self.ask_joint()
        if changed is None or changed & {"layer", "head", "layout"}:
            self._place_new()
        if changed is None or changed & {"group", "layer", "head"}:
            self.patching.update(changed)

    def _reveal(self, name: str) -> None:
        """Put the figure `name` in the page on its first answer: three empty figures would be ~130 of the page's
        Bokeh models, and each costs the page load time (built, sent and drawn) although most sessions never ask."""
        slot = self.slots[name]
        if not slot.objects:
            slot.append(bokeh_pane(getattr(self, name)))

    def panel(self) -> pn.Column:
        return pn.Column(
            bokeh_pane(self.joint), text_pane(self.joint_text), self.status, self.progress,
            pn.Row(self.pairs_button, self.curve_button, margin=0), self.slots["pairs"], self.slots["curve"],
            text_pane(self.curve_text), self.patching.panel(),
            self.saliency_button, self.slots["saliency"],
            pn.pane.HTML("<small>new image (not stored):</small>", width=WIDTH), self.upload,
            width=WIDTH + 10)

