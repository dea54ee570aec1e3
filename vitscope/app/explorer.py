"""The assembly: four linked views over one store on one screen, served, in Jupyter, or exported.

Every plot is a plain Bokeh figure built once per session; a selection change pushes new data into the
figures that depend on it, all inside one held document change (one message to the browser). This is
what makes a change settle in the browser in well under a second (docs/performance.md).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import panel as pn
import param

from vitscope.app.ablation import AblationView
from vitscope.app.effects import DirectTotalView
from vitscope.app.faithfulness import FaithfulnessBenchmark
from vitscope.app.importance import HeadImportanceView
from vitscope.app.input_maps import InputMapPanel
from vitscope.app.overview import ImageOverview
from vitscope.app.pattern_view import AttentionPatternView
from vitscope.app.save_figure import SaveFigure
from vitscope.app.strength import AttentionStrengthView
from vitscope.app.style import alert, bokeh_pane, light_button, offline, text_pane
from vitscope.config import TOP_PERCENT
from vitscope.errors import VitscopeError, one_line
from vitscope.readout.figures import Renderer
from vitscope.readout.selection import COLOUR_BY, Selection
from vitscope.readout.store_data import store_data
from vitscope.service.dispatch import Dispatcher, ask_attention, ask_explain, shared_dispatcher, warm
from vitscope.text import esc
from vitscope.vocab import MODE_NAMES

SIDEBAR = 250  # px; the template's sidebar collapses with its ☰ button
IMPORTANCE_WIDTH = 640  # px; the direct-vs-total scatter (240) stands beside the Head Importance View's line


class Explorer(pn.viewable.Viewer):
    """All views of one store with one shared selection (one Explorer per browser session)."""

    selection = param.ClassSelector(class_=Selection, doc="this session's selection")

    def __init__(self, store: str | Path, device: str = "cpu", scheduler: str | None = None,
                 figures: Renderer | None = None, **params) -> None:
        super().__init__(selection=Selection(), **params)
        self._doc = pn.state.curdoc
        self.path = str(Path(store).resolve())
        self.device, self.scheduler = device, scheduler
        self.data = d = store_data(self.path)
        self._asked: tuple[tuple[int, int], Future] | None = None  # (image, layer) asked without waiting, its answer
        s = self.selection
        self.overview = ImageOverview(d, s)
        self.importance = HeadImportanceView(d, s, width=IMPORTANCE_WIDTH)
        self.effects = DirectTotalView(d, s)
        self.strength = AttentionStrengthView(d, s)
        self.pattern = AttentionPatternView(d, s, self.attention, self.overview.thumb_source)
        self.ablation = AblationView(d, s, self.submit, self.schedule, self.overview.figure, self.pattern.map.figure)
        self.input_maps = InputMapPanel(d, s, self.pattern.masks.figure, self.submit, self.schedule)
        self.benchmark = FaithfulnessBenchmark(d, s, self.submit, self.schedule, SIDEBAR - 40)
        self.save = SaveFigure(d, s, self.all_attention, figures, SIDEBAR - 30, self.explanation) if figures else None
        self.views = [self.overview, self.importance, self.effects, self.strength, self.pattern, self.input_maps,
                      self.ablation, *([self.save] if self.save else [])]
        watched = sorted({name for v in self.views for name in v.watches})
        s.param.watch(self._changed, watched)
        self._widgets()

    def service(self) -> Dispatcher:
        """The process's one route to this store's model (loaded on first use)."""
        return shared_dispatcher(self.path, self.device, self.scheduler)

    def attention(self, image: int, layer: int) -> np.ndarray:
        """[H, P, P] attention of one image in one layer, computed by the store's model through the dispatcher
        (errors become a page message); the answer to `_ask_attention` when that asked for it."""
        asked = self._asked
        if asked is not None and asked[0] == (image, layer) and not asked[1].cancelled():
            r = asked[1].result()
            if "error" in r:
                raise VitscopeError(r["error"])
            return r["attention"]
        return ask_attention(self.service(), str(id(self)), image, layer)

    def all_attention(self, image: int) -> np.ndarray:
        """[L, H, P, P] of one image (figures that show every head)."""
        return ask_attention(self.service(), str(id(self)), image)

    def explanation(self, image: int) -> dict:
        """One image's patch maps and faithfulness curves (`Service.explain`), for the figures that show them."""
        return ask_explain(self.service(), str(id(self)), image)

    def _ask_attention(self) -> tuple[int, int] | None:
        """Served: ask the model for the selected image's attention in the selected layer without waiting for it,
        and draw the plots of A when it answers (`_attention_arrived`, on this session's event loop), so the views
        that need only the store reach the page first. The (image, layer) asked for, or None: nothing to ask (no
        image, or the pattern view has it) or no server loop (Jupyter, tests: the views ask and wait)."""
        doc, image, layer = self._doc, self.data.readable(self.selection.image), self.selection.layer
        if (doc is None or doc.session_context is None or image is None or not 0 <= layer < self.data.layers
                or self.pattern.has_attention_of(image, layer)):
            return None
        try:
            future = self.service().submit(
                str(id(self)), {"kind": "attention", "image": int(image), "layer": int(layer)})
        except VitscopeError:  # no model here: the pattern view asks, and says why in the page
            return None
        key = (image, layer)
        self._asked = (key, future)
        future.add_done_callback(lambda _: self.schedule(lambda: self._attention_arrived(key)))
        return key

    def _attention_arrived(self, key: tuple[int, int]) -> None:
        """The plots of A for (image, layer), unless another was selected since (its own answer draws that)."""
        if self.pattern.pending != key:
            return
        self.pattern.pending = None
        with pn.io.hold():
            try:
                self.pattern.show_attention()
            except Exception as e:  # noqa: BLE001 - one readable line in the page, never a traceback
                self.selection.message = f"{type(self.pattern).__name__}: {one_line(e)}"
            self._sync_widgets({"threshold"})

    def submit(self, request: dict, channel: str, progress=None):
        """Ask the process's service on behalf of this session (its latest request per channel wins)."""
        return self.service().submit(str(id(self)), request, channel, progress)

    def schedule(self, callback) -> None:
        """Run `callback` on this session's event loop (answers arrive on the service's thread)."""
        doc = self._doc
        if doc is not None and doc.session_context is not None:
            doc.add_next_tick_callback(callback)
        else:  # Jupyter or a test: no server loop to hand over to
            from vitscope.app.notebook import serialized

            with serialized():
                callback()

    def _changed(self, *events: param.parameterized.Event) -> None:
        """Push the new selection into every view that depends on it, as one document change."""
        names = {e.name for e in events}
        s = self.selection
        if names & {"image", "layer", "head"} and "threshold" not in names and s.threshold is not None:
            with param.parameterized.discard_events(s):  # a value of the old head's A: back to the store's cut
                s.threshold = None
            names.add("threshold")
        if names & {"image", "layer"}:  # asked before the ablation view's request, so the queue answers it first
            self.pattern.pending = self._ask_attention()
        from vitscope.app.notebook import serialized

        with serialized(), pn.io.hold():  # in Jupyter: not while Panel handles a page message on another thread
            for view in self.views:
                if names & set(view.watches):
                    try:
                        view.update(names)
                    except Exception as e:  # noqa: BLE001 - one readable line in the page, never a traceback
                        self.selection.message = f"{type(view).__name__}: {one_line(e)}"
            self._sync_widgets(names)

    # -- widgets ------------------------------------------------------------------------------------

    def _widgets(self) -> None:
        d, s = self.data, self.selection
        self.image_id = pn.widgets.IntInput(label="image id", start=0, end=d.images - 1, value=None,
                                            placeholder=f"0..{d.images - 1}, Enter", css_classes=["vs-image-id"],
                                            width=SIDEBAR - 40)
        self.image_id.param.watch(lambda e: e.new is not None and e.new != s.image and self.overview.select(e.new),
                                  "value")
        names = [d.class_names[c] for c in d.classes_present]
        self.class_search = pn.widgets.AutocompleteInput(
            label="class (type to search)", options=names, case_sensitive=False, search_strategy="includes",
            min_characters=1, restrict=False, placeholder=f"{len(names)} classes", css_classes=["vs-class-search"],
            width=SIDEBAR - 40)
        self.class_search.param.watch(self._class_typed, "value")
        if d.metrics_shown != list(s.param.metric.objects):  # a backbone without labels: feature metrics only
            s.param.metric.objects = d.metrics_shown
            s.metric = d.metrics_shown[0]
        self.metric = pn.widgets.Select.from_param(s.param.metric, label="metric", css_classes=["vs-metric"],
                                                   width=SIDEBAR - 40)
        self.mode = pn.widgets.RadioButtonGroup.from_param(s.param.mode, css_classes=["vs-mode"], **light_button(),
                                                           width=SIDEBAR - 40)
        self.colour_by = pn.widgets.Select.from_param(s.param.colour_by, label="colour images by",
                                                      options=list(COLOUR_BY), css_classes=["vs-colour-by"],
                                                      width=SIDEBAR - 40)
        self.head_layout = pn.widgets.RadioButtonGroup.from_param(s.param.layout, css_classes=["vs-layout"],
                                                                  **light_button(), width=SIDEBAR - 40)
        self.threshold = pn.widgets.FloatSlider(label="threshold (or tap the histogram)", start=0.0, end=1.0,
                                                step=0.001, format="0.[0000]", css_classes=["vs-threshold"], width=170)
        self.threshold.param.watch(self._slider_moved, "value_throttled")
        self.top_button = pn.widgets.Button(label=f"top {self.data.top * TOP_PERCENT:g} %", width=60,
                                            **light_button())
        self.top_button.on_click(lambda _: setattr(s, "threshold", None))
        self.pin = pn.widgets.Button(label="pin L0H0", width=110, **light_button(), css_classes=["vs-pin"])
        self.pin.on_click(lambda _: s.toggle_pin(d.head_index(s.layer, s.head)))
        self.unpin = pn.widgets.Button(label="clear pins", width=90, **light_button())
        self.unpin.on_click(lambda _: setattr(s, "pinned", []))
        self._syncing = False
        self._sync_widgets(None)

    def _class_typed(self, event: param.parameterized.Event) -> None:
        cls = self.data.find_class(event.new or "")
        if event.new and cls is None:
            self.selection.message = f"no class matches {event.new!r} in this store"
            return
        self.selection.param.update(cls=cls, message="")

    def _slider_moved(self, event: param.parameterized.Event) -> None:
        if not self._syncing:
            self.selection.threshold = float(event.new)

    def _sync_widgets(self, names: set[str] | None) -> None:
        """Widgets that show the selection follow it (without writing it back)."""
        s, d = self.selection, self.data
        self._syncing = True
        try:
            if names is None or "image" in names:
                self.image_id.value = s.image
            if self.pattern.pending is None and (names is None or names & {"image", "layer", "head", "threshold"}):
                A = self.pattern.attention_matrix()
                top = max(float(A.max()), 1e-6) if A is not None else 1.0
                used = self.pattern.matrix.threshold_line.location  # drawn by the pattern view just now
                self.threshold.param.update(end=top, step=top / 500, value=float(np.clip(used, 0, top)))
            if names is None or names & {"layer", "head", "pinned"}:
                pinned = d.head_index(s.layer, s.head) in s.pinned
                self.pin.label = f"{'unpin' if pinned else 'pin'} L{s.layer}H{s.head}"
                self.unpin.disabled = not s.pinned
        finally:
            self._syncing = False

    @param.depends("selection.message")
    def message(self) -> pn.viewable.Viewable:
        text = self.selection.message
        return alert(text, margin=(0, 4)) if text else pn.Spacer(height=0)

    # -- layout -------------------------------------------------------------------------------------

    def controls(self) -> pn.Column:
        d = self.data
        modes = "<br>".join(f"{m}: {name}" for m, name in MODE_NAMES.items())
        return pn.Column(
            pn.pane.HTML(f"<b>{esc(d.model_spec)}</b><br>{d.layers} layers × {d.heads} heads, "
                         f"{d.grid}×{d.grid} patches, {int(d.valid.sum())} images<br>"
                         f"<small class='vs-basis'>{esc(d.basis_text)}</small>", width=SIDEBAR - 30),
            self.image_id,
            pn.widgets.Button(label="show all images", **light_button(), width=SIDEBAR - 40,
                              on_click=lambda e: self.selection.param.update(image=None)),
            self.class_search,
            pn.widgets.Checkbox.from_param(self.selection.param.only_class, label="show only this class"),
            self.colour_by, self.metric, "pruning mode", self.mode,
            pn.pane.HTML(f"<small>{modes}</small>", width=SIDEBAR - 30),
            "pattern map layout", self.head_layout,
            pn.widgets.Checkbox.from_param(self.selection.param.density, label="density contours of all heads"),
            pn.pane.HTML("<b>on-demand ablation</b>", width=SIDEBAR - 30), self.ablation.panel(),
            pn.pane.HTML("<b>where the decision comes from</b> (maps on the image: Attention Pattern View)",
                         width=SIDEBAR - 30), self.input_maps.side(), self.benchmark.panel(),
            *([pn.pane.HTML("<b>save figure</b> (for print: a view or summary of this selection)",
                            width=SIDEBAR - 30), self.save.panel()] if self.save else []),
        )

    def main(self) -> pn.Column:
        """The four views on one screen (1600 × 1000), in the paper's Fig. 1 arrangement."""
        o, i, st, p = self.overview, self.importance, self.strength, self.pattern
        pin_row = pn.Row(self.pin, self.unpin, margin=0)
        top = pn.Row(
            pn.Column(bokeh_pane(o.figure, "vs-image-overview"), pn.Row(bokeh_pane(o.thumb), text_pane(o.detail))),
            pn.Column(pn.Row(bokeh_pane(i.figure, "vs-importance-line"), self._effects_pane()), text_pane(i.summary),
                      pn.Row(bokeh_pane(i.bars), pn.Column(i.proxy_select, text_pane(i.proxy_text),
                                                           text_pane(i.top5)))),
        )
        m, image_panel = p.matrix, pn.Column(bokeh_pane(p.masks.figure, "vs-masks"), self.input_maps.controls())
        bottom = pn.Row(
            pn.Column(bokeh_pane(st.figure, "vs-strength-scatter"), pin_row, bokeh_pane(st.bars),
                      bokeh_pane(st.hist)),
            bokeh_pane(p.map.figure, "vs-pattern-map"),
            pn.Column(text_pane(p.info), pn.Row(bokeh_pane(m.heatmap, "vs-heatmap"), image_panel),
                      pn.Row(bokeh_pane(m.axes, "vs-two-axes"),
                             pn.Column(bokeh_pane(m.hist, "vs-histogram"), pn.Row(self.threshold, self.top_button)))),
        )
        return pn.Column(self.message, top, bottom)

    def _effects_pane(self) -> pn.viewable.Viewable:
        """The direct-vs-total scatter, or for a store without head effects the line saying so."""
        e = self.effects
        return bokeh_pane(e.figure, "vs-effects-scatter") if e.figure is not None else text_pane(e.note)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Row(self.controls(), self.main())

    def template(self) -> pn.template.BaseTemplate:
        """The served page: the global controls in a collapsible sidebar, the four views in the main area."""
        return offline(pn.template.FastListTemplate(
            title="vitscope — how this ViT uses attention", sidebar=[self.controls()], main=[self.main()],
            sidebar_width=SIDEBAR, busy_indicator=None, main_layout=None, header_background="#3b4252"))

    @classmethod
    def open(cls, store: str | Path, device: str = "cpu") -> Explorer:
        """For Jupyter: `Explorer.open(STORE)` displays the views inline (no template), offline: BokehJS, Panel's JS
        and every stylesheet come inline with the output, nothing from a CDN. The model and the map's lookup load
        now, in a thread, so the first tap does not wait for them."""
        from vitscope.app import notebook

        pn.extension(inline=True)
        notebook.capture_callback_output_per_context()
        app = cls(store, device)
        app.warming = threading.Thread(target=lambda: (app.data.prepare(), warm(app.path, device)), daemon=True,
                                       name="vitscope-warm")
        app.warming.start()
        return app

    def _repr_mimebundle_(self, include=None, exclude=None):
        """Jupyter's display: Panel's, then the document's stylesheet cache answers Panel's CDN urls inline; the
        render shares those sheets, and messages from the page find their data sources by id (notebook.py)."""
        from vitscope.app import notebook

        notebook.share_inline_stylesheets()
        notebook.index_comm_data_lookups()
        notebook.serialize_comms()
        bundle = super()._repr_mimebundle_(include, exclude)
        notebook.inline_stylesheets()
        return bundle
