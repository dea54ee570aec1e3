"""The assembly: four linked views over one store, served, in Jupyter, or exported."""

from __future__ import annotations

import gc
import html
import sys
from functools import lru_cache
from pathlib import Path

import holoviews as hv
import panel as pn
import param

from vitscope.app.data import StoreData
from vitscope.app.overview_views import HeadImportanceView, ImageOverview
from vitscope.app.pattern_view import AttentionPatternView
from vitscope.app.state import Selection
from vitscope.app.strength_view import AttentionStrengthView
from vitscope.errors import VitscopeError
from vitscope.service import Service

hv.extension("bokeh", logo=False)


@lru_cache(maxsize=4)
def store_data(path: str) -> StoreData:
    """One copy of a store's arrays per process, shared by every session."""
    return StoreData(path)


@lru_cache(maxsize=4)
def service(path: str, device: str) -> Service:
    """One model per process and device, shared by every session (loading it takes seconds)."""
    return Service(path, device)


class Explorer(pn.viewable.Viewer):
    """All views of one store with one shared selection (one Explorer per browser session)."""

    selection = param.ClassSelector(class_=Selection, doc="this session's selection")

    def __init__(self, store: str | Path, device: str = "cpu", **params) -> None:
        super().__init__(selection=Selection(), **params)
        self.path = str(Path(store).resolve())
        self.device = device
        self.data = store_data(self.path)
        self.views = [ImageOverview(self.data, self.selection), HeadImportanceView(self.data, self.selection),
                      AttentionStrengthView(self.data, self.selection),
                      AttentionPatternView(self.data, self.selection, self.attention)]

    def attention(self, image: int):
        """[L, H, P, P] attention of one image, recomputed by the store's model (errors become a page message)."""
        return service(self.path, self.device).attention(image)

    @param.depends("selection.message")
    def message(self) -> pn.viewable.Viewable:
        text = self.selection.message
        return pn.pane.Alert(html.escape(text), alert_type="warning") if text else pn.Spacer(height=0)

    def controls(self) -> pn.viewable.Viewable:
        d = self.data
        s = self.selection
        return pn.Column(
            pn.pane.Markdown(f"**{self.data.ds.attrs['model_spec']}** — {d.layers} layers × {d.heads} heads, "
                             f"{d.grid}×{d.grid} patches, {int(d.valid.sum())} images"),
            pn.widgets.IntSlider.from_param(s.param.layer, end=d.layers - 1, label="layer"),
            pn.widgets.IntSlider.from_param(s.param.head, end=d.heads - 1, label="head"),
            pn.widgets.Select.from_param(s.param.metric, label="metric"),
            pn.widgets.IntSlider.from_param(s.param.mode, label="pruning mode"),
            pn.widgets.Button(label="show all images", button_type="light",
                              on_click=lambda e: s.param.update(image=None)),
        )

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.message, *self.views, sizing_mode="stretch_width")

    def template(self) -> pn.template.BaseTemplate:
        """The served page: a sidebar with the global controls, the views in the main area."""
        return pn.template.FastListTemplate(title="vitscope — how this ViT uses attention",
                                            sidebar=[self.controls()],
                                            main=[pn.Column(self.message, self.views[0]), *self.views[1:]])

    @classmethod
    def open(cls, store: str | Path, device: str = "cpu") -> Explorer:
        """For Jupyter: `Explorer.open(STORE)` displays the views inline (no template)."""
        pn.extension()
        return cls(store, device)


def serve(store: str | Path, port: int = 5006, address: str = "127.0.0.1", device: str = "cpu",
          show: bool = False) -> None:
    """Serve the app; every browser session gets its own Explorer (selection) over shared data."""
    path = Path(store)
    key = str(path.resolve())
    store_data(key)  # fail early, in the terminal, on a missing/foreign/old store
    try:
        service(key, device)  # load the model once now, so the first tap is quick
    except VitscopeError as e:  # the page still works from the store; its pattern view says why attention is off
        print(f"vitscope: warning: on-demand attention is unavailable: {e}", file=sys.stderr)
    gc.freeze()  # the store's arrays and the model are long-lived: keep them out of every full collection
    loopback = address in ("127.0.0.1", "localhost")
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"] if loopback else ["*"]
    try:
        server = pn.serve({"/": lambda: Explorer(path, device).template()}, port=port, address=address, show=show,
                          title="vitscope", allow_websocket_origin=origins, start=False, verbose=False)
    except OSError as e:
        raise VitscopeError(f"cannot serve on {address}:{port}: {e.strerror or e} (try another --port)") from None
    host = "localhost" if loopback or address == "0.0.0.0" else address
    print(f"vitscope app for {path}: http://{host}:{port}/  (Ctrl+C stops it)", flush=True)
    server.start()
    server.io_loop.start()
