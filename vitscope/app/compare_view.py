"""The compare view: two stores of the same images side by side, over one shared selection.

`vitscope serve A B` or `vitscope compare A B --serve`. Pure over store data (no model): its numbers are
`vitscope.readout.comparison`'s.

- a typed image number shared by both sides (k of the matched images, `compare.matched_images`; empty: their
  mean), its image id beside it: a dropdown of every matched image sent 10,000 options to each page;
- per model a head grid (layer × head) coloured by importance on the selected image, with kind markers, and the
  heads' strength entropy; a tap on a head of one model rings it and its matched head in the other, and says the
  pair's similarity, kinds, patterns and importance ranks;
- per model the pattern-kind summary per layer (head kinds; the selected image's pattern labels);
- layer trends (distance, entropy, drop) against relative depth with both models overlaid: `compare()`'s numbers;
- the images where the two unpruned models' top-1 differ; a tap on a row selects that image.

Like the single-store app: plain Bokeh figures built once per session, new data pushed into their sources inside one
held document change (docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import panel as pn
import param
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, DataTable, HoverTool, Legend, LegendItem, TableColumn

from vitscope.app.importance import KIND_KEY, kind_columns_marked
from vitscope.app.session import guarded
from vitscope.app.style import alert, bokeh_pane, div, figure, offline
from vitscope.compare import matched_images
from vitscope.errors import one_line
from vitscope.readout.comparison import (
    comparison,
    disagreements,
    kind_counts,
    over_matched,
    pattern_counts,
    shared_metric,
    top1,
    trend_lines,
)
from vitscope.readout.palette import MODELS, NO_VALUE, PURPLE, SELECTED, layer_colours, value_colours
from vitscope.readout.store_data import StoreData, store_data
from vitscope.readout.strength import ENTROPY_LABEL, head_x
from vitscope.text import esc, printable
from vitscope.vocab import HEAD_KINDS, METRIC_LABELS, WHOLE_HEAD, harm, head_name

SIDES = ("a", "b")
PARTNER = PURPLE  # the ring on the matched head of the other model
TRENDS = (("distance", "mean attention distance (patches)"), ("entropy", ENTROPY_LABEL),
          ("drop", "drop of P[true], one head pruned"))
NAME_LIMIT = 24  # characters of a store's name in titles and legends (300 px wide; the header has the whole path)
TEXT_LIMIT = 60  # characters of an image id or class name in the table and beside the typed image number



def summary_html(data: StoreData, images: np.ndarray) -> str:
    """The pattern-kind summary of one model: per layer its head kinds and the pattern labels on the images (one
    image, or the mean count over the matched images)."""
    initial = lambda s: s[:1].upper()  # noqa: E731
    who = "this image" if len(images) == 1 else "mean over the images"
    lines = [f"<b>layer</b> kinds ({' '.join(f'{initial(k)} {k}' for k in HEAD_KINDS)}) · patterns on {who}"]
    for layer, (kinds, pats) in enumerate(zip(kind_counts(data), pattern_counts(data, images), strict=True)):
        k = " ".join(f"{initial(n)}{v}" for n, v in kinds.items() if v)
        p = ", ".join(f"{n} {v:g}" for n, v in pats.items() if v)
        lines.append(f"<b>{layer}</b> {esc(k)} · {esc(p)}")
    return "<br>".join(lines)


class CompareSelection(param.Parameterized):
    """What the user selected in the compare view (one per browser session)."""

    image = param.Integer(default=None, allow_None=True, doc="index into the matched images; None = all images")
    side = param.Selector(objects=list(SIDES), default="a", doc="the model whose head was tapped")
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    message = param.String(default="")


class CompareView(pn.viewable.Viewer):
    """Two stores of the same images side by side over one selection (one CompareView per browser session)."""

    selection = param.ClassSelector(class_=CompareSelection)

    def __init__(self, a: str | Path, b: str | Path, names: tuple[str, str] | None = None, **params) -> None:
        super().__init__(selection=CompareSelection(), **params)
        self.paths = (str(Path(a).resolve()), str(Path(b).resolve()))
        self.names = tuple(names or (str(a), str(b)))
        self.data = (store_data(self.paths[0]), store_data(self.paths[1]))
        self.result = comparison(*self.paths)
        da, db = self.data
        self.images = dict(zip(SIDES, matched_images(da.ds, db.ds), strict=True))  # positions in A, in B
        self.metric = shared_metric(da, db)
        pairs = self.result["heads"]["pairs"]
        self.partner = {"a": {(p["a"]["layer"], p["a"]["head"]): p for p in pairs},
                        "b": {(p["b"]["layer"], p["b"]["head"]): p for p in pairs}}
        self._grids()
        self._trends()
        self._table()
        self._widgets()
        self.selection.param.watch(self._changed, ["image", "side", "layer", "head"])
        self.update()

    # -- building ----------------------------------------------------------------------------------

    def label(self, side: str) -> str:
        """A store's short name as canvas text (titles, legends: drawn, never read as markup): its folder's name
        without `.zarr`."""
        name = Path(self.names[SIDES.index(side)])
        return f"{side.upper()}: {printable(name.stem if name.suffix == '.zarr' else name.name, NAME_LIMIT)}"

    def _grids(self) -> None:
        self.grid, self.grid_source, self.ring, self.strength, self.strength_source = {}, {}, {}, {}, {}
        self.strength_ring, self.summary = {}, {}
        for side, data in zip(SIDES, self.data, strict=True):
            L, H = data.layers, data.heads
            layer, head = np.divmod(np.arange(L * H), H)
            src = ColumnDataSource({"x": head, "y": layer, "layer": layer, "head": head, "value": np.zeros(L * H),
                                    "colour": np.full(L * H, NO_VALUE), **kind_columns_marked(data)},
                                   name=f"vs-compare-grid-source-{side}")
            fig = figure(f"{self.label(side)} — head importance", 300, 40 + 26 * L + 40, tools="tap",
                         x_range=(-0.5, H - 0.5), y_range=(L - 0.5, -0.5), name=f"vs-compare-grid-{side}")
            cells = fig.rect("x", "y", 0.94, 0.94, source=src, fill_color="colour", line_color=None)
            marks = fig.scatter("x", "y", source=src, marker="marker", size=7, fill_color="white", line_color="#222222")
            for r in (cells, marks):  # a tap selects in the source: the ring shows it, nothing else greys out
                r.nonselection_glyph = r.glyph.clone()
            fig.add_tools(HoverTool(renderers=[cells], tooltips=[("head", "L@layer H@head"), ("value", "@value{0.000}"),
                                                                 ("kind", "@kind")]))
            ring = ColumnDataSource({"x": [], "y": [], "colour": []}, name=f"vs-compare-ring-{side}")
            fig.rect("x", "y", 0.94, 0.94, source=ring, fill_alpha=0, line_color="colour", line_width=3)
            fig.xaxis.axis_label, fig.yaxis.axis_label = f"head   {KIND_KEY}", "layer"
            fig.xaxis.ticker, fig.yaxis.ticker = list(range(H)), list(range(L))
            fig.grid.visible = False
            fig.on_event(Tap, guarded(self.selection, "head tap", lambda e, s=side: self.pick(s, e.x, e.y)))
            self.grid[side], self.grid_source[side], self.ring[side] = fig, src, ring

            x = head_x(L, H)
            ssrc = ColumnDataSource({"x": x, "layer": layer, "head": head, "y": np.zeros(L * H),
                                     "colour": np.array(layer_colours(L))[layer]})
            sfig = figure(f"{self.label(side)} — attention strength", 300, 160, tools="", x_range=(-0.5, L - 0.5),
                          y_range=(-0.03, 1.05), name=f"vs-compare-strength-{side}")
            sfig.toolbar_location = None
            dots = sfig.scatter("x", "y", source=ssrc, color="colour", size=7, line_color="white")
            sfig.add_tools(HoverTool(renderers=[dots], tooltips=[("head", "L@layer H@head"),
                                                                 ("entropy", "@y{0.000}")]))
            sring = ColumnDataSource({"x": [], "y": [], "colour": []})
            sfig.scatter("x", "y", source=sring, size=14, fill_alpha=0, line_color="colour", line_width=2.5)
            sfig.xaxis.ticker = list(range(L))
            sfig.xaxis.axis_label, sfig.yaxis.axis_label = "layer", ENTROPY_LABEL
            self.strength[side], self.strength_source[side], self.strength_ring[side] = sfig, ssrc, sring
            self.summary[side] = div(300, 44 + 19 * L)
        self.pair_info = div(620, 44, name="vs-compare-pair")

    def _trends(self) -> None:
        self.trend, self.trend_source = {}, {}
        for key, title in TRENDS:
            fig = figure(title, 300, 200, tools="", x_range=(-0.03, 1.03), name=f"vs-compare-{key}")
            fig.toolbar_location = None
            fig.xaxis.axis_label = "relative depth (layer / (L − 1))"
            items = []
            self.trend_source[key] = {}
            for side, colour, (xs) in zip(SIDES, MODELS, trend_lines(self.result, key), strict=True):
                src = ColumnDataSource(xs)
                line = fig.line("x", "y", source=src, color=colour, line_width=2)
                dots = fig.scatter("x", "y", source=src, color=colour, size=6)
                items.append(LegendItem(label=self.label(side), renderers=[line, dots]))
                fig.add_tools(HoverTool(renderers=[dots], tooltips=[("model", side.upper()), ("layer", "@layer"),
                                                                    ("value", "@y{0.0000}")]))
                self.trend_source[key][side] = src
            ys = np.asarray([v for s in self.trend_source[key].values() for v in s.data["y"]], dtype=float)
            ys = ys[np.isfinite(ys)]
            lo, hi = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
            pad = max(hi - lo, 1e-6) * 0.1
            fig.y_range.update(start=lo - pad, end=hi + pad)
            fig.add_layout(Legend(items=items, location="top_left", label_text_font_size="10px", padding=2, spacing=0,
                                  background_fill_alpha=0.6))
            self.trend[key] = fig

    def _table(self) -> None:
        da, db = self.data
        ia, ib = self.images["a"], self.images["b"]
        comparable = self.result["top1_agreement"] is not None
        rows = disagreements(da, db, ia, ib) if comparable else np.zeros(0, dtype=int)
        ta, tb = top1(da, ia), top1(db, ib)
        cname = lambda d, c: printable(d.class_names[c], TEXT_LIMIT) if 0 <= c < len(d.class_names) else "?"  # noqa: E731
        self.disagree = [int(k) for k in rows]
        self.table_source = ColumnDataSource({
            "k": self.disagree, "index": [int(ia[k]) for k in rows],
            "image_id": [printable(da.image_ids[ia[k]], TEXT_LIMIT) for k in rows],
            "label": [cname(da, int(da.label[ia[k]])) for k in rows],
            "a": [cname(da, int(ta[k])) for k in rows], "b": [cname(db, int(tb[k])) for k in rows]})
        self.table = DataTable(source=self.table_source, width=620, height=180, index_position=None,
                               columns=[TableColumn(field="index", title="#", width=40),
                                        TableColumn(field="image_id", title="image", width=220),
                                        TableColumn(field="label", title="label"),
                                        TableColumn(field="a", title="top-1 A"),
                                        TableColumn(field="b", title="top-1 B")], css_classes=["vs-compare-table"])
        self.table_source.selected.on_change("indices", lambda attr, old, new: self._row_tapped(new))
        n = len(ia)
        self.table_title = ("<b>images where the two models' top-1 differ</b>: "
                            + (f"{len(rows)} of {n} (agreement {self.result['top1_agreement']:.1%}); tap a row"
                               if comparable else "not comparable (a store without class probabilities, or "
                               "different bases)"))

    def _row_tapped(self, indices: list[int]) -> None:
        if indices:
            try:
                self.selection.image = self.disagree[indices[0]]
            except Exception as e:  # noqa: BLE001 - one line in the page
                self.selection.message = f"image list: {one_line(e)}"

    def _widgets(self) -> None:
        n = len(self.images["a"])
        self.image_id = pn.widgets.IntInput(label=f"image (of the {n} matched in both stores; empty: all)",
                                            start=0, end=n - 1, value=None, placeholder=f"0..{n - 1}, Enter",
                                            css_classes=["vs-compare-image"], width=300)
        self.image_id.param.watch(lambda e: setattr(self.selection, "image", e.new), "value")
        self.image_name = pn.pane.HTML(self._image_name(), css_classes=["vs-compare-image-name"], width=320,
                                       margin=(28, 5, 5, 5))

    def _image_name(self) -> str:
        """The selected image's id in A (and its class), or that the grids show the mean."""
        k = self.selection.image
        if k is None:
            return "<i>all matched images (mean)</i>"
        da, i = self.data[0], int(self.images["a"][k])
        label = int(da.label[i])
        name = da.class_names[label] if 0 <= label < len(da.class_names) else "?"
        return (f"<code>{esc(printable(da.image_ids[i], TEXT_LIMIT))}</code> · "
                f"{esc(printable(name, TEXT_LIMIT))}")

    # -- interaction -------------------------------------------------------------------------------

    def pick(self, side: str, x: float | None, y: float | None) -> tuple[int, int] | None:
        """Select the head of `side`'s model under (x, y) in its grid (a tap)."""
        if x is None or y is None:
            return None
        data = self.data[SIDES.index(side)]
        layer = int(np.clip(round(y), 0, data.layers - 1))
        head = int(np.clip(round(x), 0, data.heads - 1))
        self.selection.param.update(side=side, layer=layer, head=head)
        return layer, head

    def select_image(self, k: int | None) -> None:
        """Select the k-th matched image (None: all images)."""
        self.selection.image = k

    def matched(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(head of A, head of B) of the selection: the tapped head and its partner (None where it has none)."""
        s = self.selection
        pair = self.partner[s.side].get((s.layer, s.head))
        other = "b" if s.side == "a" else "a"
        mine = (s.layer, s.head)
        theirs = (pair[other]["layer"], pair[other]["head"]) if pair else None
        return (mine, theirs) if s.side == "a" else (theirs, mine)

    def _changed(self, *events: param.parameterized.Event) -> None:
        names = {e.name for e in events}
        with pn.io.hold():
            try:
                self.update(names)
            except Exception as e:  # noqa: BLE001 - one readable line in the page, never a traceback
                self.selection.message = f"compare view: {one_line(e)}"
            if "image" in names:
                if self.image_id.value != self.selection.image:  # a row tap: the typed number follows
                    self.image_id.value = self.selection.image
                self.image_name.object = self._image_name()

    def image_of(self, side: str) -> int | None:
        """The selected image's position in `side`'s store (None: all images)."""
        k = self.selection.image
        return None if k is None else int(self.images[side][k])

    def update(self, changed: set[str] | None = None) -> None:
        """Push the selection into the figures that depend on it."""
        s = self.selection
        if changed is None or "image" in changed:
            for side, data in zip(SIDES, self.data, strict=True):
                image = self.image_of(side)
                m = data.metrics.index(self.metric)
                values = (data.importance[image, :, :, WHOLE_HEAD, m] if image is not None else
                          over_matched(data, "importance", self.images[side])[:, :, WHOLE_HEAD, m]).reshape(-1)
                v = harm(self.metric, np.asarray(values, dtype=float))
                finite = v[np.isfinite(v)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
                self.grid_source[side].data.update(value=values,
                                                   colour=value_colours((v - lo) / max(hi - lo, 1e-12)))
                who = f"image {s.image}" if image is not None else "mean of the images"
                self.grid[side].title.text = f"{self.label(side)} — {who}"
                self.strength_source[side].data.update(
                    y=(data.strength_entropy[image] if image is not None else
                       over_matched(data, "strength_entropy", self.images[side])).reshape(-1))
                self.summary[side].text = summary_html(data, self.images[side] if image is None else
                                                       np.array([image]))
        heads = dict(zip(SIDES, self.matched(), strict=True))
        for side, data in zip(SIDES, self.data, strict=True):
            at = heads[side]
            colour = SELECTED if side == s.side else PARTNER
            if at is None:
                self.ring[side].data = self.strength_ring[side].data = {"x": [], "y": [], "colour": []}
                continue
            layer, head = at
            k = data.head_index(layer, head)
            self.ring[side].data = {"x": [head], "y": [layer], "colour": [colour]}
            ys = self.strength_source[side].data["y"]
            self.strength_ring[side].data = {"x": [float(self.strength_source[side].data["x"][k])],
                                             "y": [float(ys[k])], "colour": [colour]}
        self.pair_info.text = self.pair_text()

    def pair_text(self) -> str:
        """The tapped head and its partner: similarity, kinds, patterns and importance ranks (HTML, escaped)."""
        s = self.selection
        name = head_name(s.layer, s.head)
        pair = self.partner[s.side].get((s.layer, s.head))
        if pair is None:
            return (f"{s.side.upper()} {name}: no partner in {'B' if s.side == 'a' else 'A'} (the other model has "
                    "fewer heads)")
        sim = "n/a" if pair["similarity"] is None else f"{pair['similarity']:.3f}"
        good = "a good partner" if pair["good"] else "<b>no good partner</b>" + (
            " (a sink paired with no sink)" if pair["sink_role"] else "")
        arrow = lambda v: esc(v[0]) if v[0] == v[1] else f"{esc(v[0])} → {esc(v[1])}"  # noqa: E731
        rank = pair["importance_rank"]
        return (f"<b>A {pair['a']['name']} ↔ B {pair['b']['name']}</b>: similarity {sim}, {good}"
                f"{'; in another layer of B' if pair['moved'] else ''}<br>kind {arrow(pair['kind'])} · pattern "
                f"{arrow(pair['pattern'])} · importance rank {rank[0]:.2f} → {rank[1]:.2f}"
                f"{' (changed)' if pair['importance_changed'] else ''}")

    # -- layout ------------------------------------------------------------------------------------

    @param.depends("selection.message")
    def message(self) -> pn.viewable.Viewable:
        text = self.selection.message
        return alert(text, margin=(0, 4)) if text else pn.Spacer(height=0)

    def header(self) -> pn.pane.HTML:
        r = self.result
        (la, ha, ga), (lb, hb, gb) = r["shape"]
        da, db = self.data
        return pn.pane.HTML(
            f"<b>A</b> {esc(self.names[0])}: {esc(da.model_spec)}, {la} layers × {ha} heads, {ga}×{ga} patches<br>"
            f"<b>B</b> {esc(self.names[1])}: {esc(db.model_spec)}, {lb} layers × {hb} heads, {gb}×{gb} patches<br>"
            f"{r['images']} images in both; layers: {esc(r['layer_alignment']['rule'])}; "
            f"{sum(p['good'] for p in r['heads']['pairs'])} of {len(r['heads']['pairs'])} head pairs good<br>"
            f"head grids: {esc(METRIC_LABELS[self.metric])}, whole head pruned (yellow: most important in its own "
            "model, blue: least); tap a head to ring its matched head in the other model",
            width=620)

    def main(self) -> pn.Column:
        side = lambda s: pn.Column(bokeh_pane(self.grid[s], f"vs-compare-grid-{s}"),  # noqa: E731
                                   bokeh_pane(self.strength[s]), bokeh_pane(self.summary[s]))
        trends = pn.Row(*(bokeh_pane(self.trend[k], f"vs-compare-{k}") for k, _ in TRENDS))
        return pn.Column(self.message, self.header(), pn.Row(self.image_id, self.image_name),
                         bokeh_pane(self.pair_info),
                         pn.Row(side("a"), side("b"), pn.Column(pn.pane.HTML(self.table_title, width=620),
                                                                self.table_pane())),
                         trends)

    def table_pane(self) -> pn.pane.Bokeh:
        """The disagreement list; the Fast theme paints a selected row's text in the accent blue of its background
        (Panel sets the stylesheets of a pane's model: given here, not on the DataTable)."""
        pane = bokeh_pane(self.table)
        pane.stylesheets = [".slick-cell.selected { color: #ffffff; }"]
        return pane

    def __panel__(self) -> pn.viewable.Viewable:
        return self.main()

    def template(self) -> pn.template.BaseTemplate:
        """The served page."""
        return offline(pn.template.FastListTemplate(title="vitscope — two models compared", main=[self.main()],
                                                    busy_indicator=None, main_layout=None,
                                                    header_background="#3b4252"))
