"""What the app needs in Jupyter beyond Panel's defaults: offline stylesheets, cell output in its own cell, and
taps that do not wait on the page's echo.

Each works around Panel 1.9 / pyviz_comms 3 behaviour seen in JupyterLab 4.6 (tests/test_jupyter.py):

- Offline: `pn.extension(inline=True)` inlines BokehJS, Panel's JS and the stylesheets of the first render, but a
  pane updated later (the ablation status line, the message line) gets `ImportedStyleSheet`s of cdn.holoviz.org
  (loading.css, the theme's default.css and native.css): an offline browser waits on them, and they leave the
  machine. `inline_stylesheets()` makes Panel's per-document stylesheet cache answer those urls with the files
  Panel ships, inline; `share_inline_stylesheets()` makes the first render use those same sheets (Panel's render
  gives every model its own inline copy, so a pane's first update replaced them with the cache's: new models, and
  a walk of the document's ~900 models on the first tap).
- Output: pyviz_comms handles every browser event with `sys.stdout` swapped for a StringIO (the output of the
  event's Python callbacks goes to the app's cell). ipykernel 7 can run a cell's code while that swap is in force
  (the cell's `sys.stdout` was seen to be pyviz_comms' StringIO), so the cell's prints vanished or went to the app's
  cell. `capture_callback_output_per_context()` captures per context instead: what the event's handler prints still
  goes to the app's cell, what anything else prints goes where it would have gone.
- Echo: Panel's page-side CommManager sends every change the page applies back to the kernel, the kernel's own
  changes included (Bokeh's server client skips those, `event.sync`), and sends nothing more until the kernel
  acknowledges. For each column data change in a message from the page, Panel's `patch_cds_msg` searches the
  whole model graph for the data source (`root.select_one`, ~900 models here), once per changed source (19 per
  tap), during which the next tap waits in the page. `index_comm_data_lookups()` finds the source by id in the
  document's index instead (docs/performance.md has the times).
- Stale echoes: an echo can reach the kernel after Python has changed the same property again (a tap's push, then a
  cell's `app.selection.image = 3`): applied, it would set the image id box back to the tapped image, which selects
  that image again (and the newer echo then the other: the selection flips). `serialize_comms()` notes each property
  value the kernel sends and drops the page's echo of it, in order; a value the kernel never sent is the user's.
- Two threads: JupyterLab sends the page's messages to a kernel subshell, so ipykernel 7 handles them on a thread of
  their own while a cell runs on the main thread. Panel applies a message between `doc.hold()` and `doc.unhold()`,
  which hands every held event to the document's callbacks, in Jupyter to nobody: a cell's changes held in the
  document at that moment would never reach the page (the kernel on the cell's image, the page on the tapped one,
  for good). `serialize_comms()` makes Panel handle a message under a lock that the app's own updates also take
  (`serialized()`), and those send what they changed before they let go of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import sys
import threading

_capture: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar("vitscope_comm_stdout", default=None)


class _ContextStdout:
    """sys.stdout that writes to the current context's capture when there is one, else to the stream it replaced."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        target = _capture.get()
        return (target if target is not None else self.stream).write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class CommOutput(list):
    """pyviz_comms' `StandardOutput` (a list of the lines printed in its block), captured for the block's own
    context only: sys.stdout is not swapped, so code that runs meanwhile in another context prints as usual."""

    def __enter__(self) -> CommOutput:
        if not isinstance(sys.stdout, _ContextStdout):
            sys.stdout = _ContextStdout(sys.stdout)
        self._buffer = io.StringIO()
        self._token = _capture.set(self._buffer)
        return self

    def __exit__(self, *exc) -> None:
        _capture.reset(self._token)
        self.extend(self._buffer.getvalue().splitlines())


def capture_callback_output_per_context() -> None:
    import pyviz_comms

    pyviz_comms.StandardOutput = CommOutput


def _patch_cds_msg(model, msg: dict) -> None:
    """Panel 1.9's `panel.io.model.patch_cds_msg` (columns the page sent as {index: value} become lists), with the
    data source found by id in the document's index rather than by a search of the model graph; the page's echoes of
    what the kernel sent are dropped first (module docstring: Stale echoes)."""
    from bokeh.models import ColumnDataSource

    drop_echoes(msg)
    doc = model.document
    for event in msg.get("content", {}).get("events", []):
        if event.get("kind") != "ModelChanged" or event.get("attr") != "data":
            continue
        ref = event.get("model", {}).get("id")
        cds = doc.get_model_by_id(ref) if doc is not None else None
        if cds is None:  # not in the index (no document, or added while its models were frozen): Panel's search
            cds = model.select_one({"id": ref})
        if not isinstance(cds, ColumnDataSource):
            continue
        for col, values in event.get("new", {}).items():
            if isinstance(values, dict):
                event["new"][col] = [v for _, v in sorted(values.items())]


def index_comm_data_lookups() -> None:
    """Messages from the page find their data sources in the document's index (module docstring: Echo)."""
    import panel.viewable

    if getattr(panel.viewable, "patch_cds_msg", None) is not None:  # the name Panel 1.9's _on_msg calls
        panel.viewable.patch_cds_msg = _patch_cds_msg


# -- stale echoes and two threads (module docstring) ---------------------------------------------------------------

SCALAR = (bool, int, float, str, type(None))  # property values compared with the page's echo (data is not)
MAX_SENT = 64  # unechoed values kept per property: a page that went away sends no echo
_sent: dict[tuple[str, str], list] = {}  # (model id, property) → values sent to the page, oldest first
_sent_lock = threading.Lock()
_lock = threading.RLock()  # a page message, or an update of the app, at a time
_serializing = False


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in the page
        return a is b
    return (type(a) is type(b) or isinstance(a, int | float) and isinstance(b, int | float)) and a == b


def note_sent(events) -> None:
    """Remember the scalar property values among Bokeh document `events` just sent to the page."""
    from bokeh.document.events import ModelChangedEvent

    with _sent_lock:
        for e in events:
            if isinstance(e, ModelChangedEvent) and isinstance(e.new, SCALAR):
                sent = _sent.setdefault((e.model.id, e.attr), [])
                sent.append(e.new)
                del sent[:-MAX_SENT]


def drop_echoes(msg: dict) -> None:
    """Remove from a message of the page the property changes that echo a value the kernel sent; an echo also
    settles the values sent before it (the page had them already, so it echoed none)."""
    events = msg.get("content", {}).get("events") if isinstance(msg.get("content"), dict) else None
    if not events:
        return
    kept = []
    with _sent_lock:
        for event in events:
            key = (event.get("model", {}).get("id"), event.get("attr"))
            sent = _sent.get(key) if event.get("kind") == "ModelChanged" else None
            at = next((i for i, v in enumerate(sent) if _same(v, event.get("new"))), None) if sent else None
            if at is None:
                kept.append(event)
                continue
            del sent[: at + 1]
            if not sent:
                del _sent[key]
    events[:] = kept


@contextlib.contextmanager
def serialized():
    """An update of the app from Python (a cell, a service thread) in Jupyter: not at the same time as Panel handles a
    message of the page, and what it changed is sent before the next one. Outside Jupyter it does nothing."""
    if not _serializing:
        yield
        return
    with _lock:
        yield
        _flush()


def _flush() -> None:
    """Send each displayed document's held events to its page (what Panel sends after an update of its own)."""
    import panel as pn
    from panel.io.notebook import push

    for _, _, doc, comm in list(pn.state._views.values()):
        if comm is not None and doc is not None and doc.callbacks._held_events:
            push(doc, comm)


def serialize_comms() -> None:
    """Messages of the page are handled one at a time with the app's updates, and their echoes of what the kernel
    sent are dropped (module docstring: Stale echoes, Two threads)."""
    global _serializing
    import panel.io.notebook
    import panel.viewable

    if _serializing:
        return
    diff, on_msg = panel.io.notebook.diff, panel.viewable.MimeRenderMixin._on_msg

    def noting_diff(doc, binary: bool = True, events=None):
        pending = list(doc.callbacks._held_events) if events is None else list(events)
        msg = diff(doc, binary=binary, events=events)
        if msg is not None:
            note_sent(pending)
        return msg

    def locked_on_msg(self, ref, manager, msg) -> None:
        with _lock:
            on_msg(self, ref, manager, msg)

    panel.io.notebook.diff = noting_diff  # the name Panel 1.9's push calls
    panel.viewable.MimeRenderMixin._on_msg = locked_on_msg  # looked up when a view is rendered
    _serializing = True


class LocalStylesheets(dict):
    """Panel's per-document cache of stylesheet models (url → model), which it consults for every stylesheet of a
    model it creates or updates; this one answers Panel's CDN and server urls with the file Panel ships, inline."""

    def __init__(self, cache: dict) -> None:
        super().__init__()
        self._files: dict = {}  # one sheet per file: Panel names loading.css by its server path and by the CDN's
        for url, sheet in cache.items():
            self[url] = self._inline(url) or sheet

    @staticmethod
    def _path(url):
        from panel.io.resources import CDN_DIST, DIST_DIR, LOCAL_DIST

        prefix = next((p for p in (CDN_DIST, LOCAL_DIST) if isinstance(url, str) and url.startswith(p)), None)
        if prefix is None:  # Panel rewrites its server path (static/extensions/panel/) to the CDN in Jupyter
            return None
        path = DIST_DIR / url[len(prefix):].split("?")[0]
        return path if path.is_file() else None

    def _inline(self, url: str):
        from bokeh.models import InlineStyleSheet

        path = self._path(url)
        if path is None:
            return None
        if path not in self._files:

            class _Inline(InlineStyleSheet):  # "_": not registered as a model of its own; BokehJS sees an inline sheet
                __view_model__, __view_module__ = "InlineStyleSheet", "bokeh.models.css"
                # Panel checks a cached sheet's url before reusing it (and replaces one without)
                url = property(lambda self: source)

            source = url
            self._files[path] = _Inline(css=path.read_text(encoding="utf-8"))
        return self._files[path]

    def __contains__(self, url) -> bool:
        return super().__contains__(url) or self._path(url) is not None

    def __missing__(self, url):
        sheet = self._inline(url)
        if sheet is None:
            raise KeyError(url)
        self[url] = sheet
        return sheet

    def __bool__(self) -> bool:  # Panel's themes skip an empty cache (`if cache and url in cache`)
        return True


def _share_inline_sheets(model) -> None:
    """Panel 1.9's `panel.io.notebook.patch_inline_stylesheets` (a rendered model's sheets from Panel's CDN become
    inline), taking each sheet from the document's `LocalStylesheets`: one model per url, the same that Panel's later
    updates of the model resolve to."""
    import panel as pn
    from bokeh.models import ImportedStyleSheet
    from panel.io.notebook import patch_inline_stylesheets

    doc = model.document
    if doc is None:
        patch_inline_stylesheets(model)
        return
    cache = pn.state._stylesheets.get(doc)
    if not isinstance(cache, LocalStylesheets):
        cache = pn.state._stylesheets[doc] = LocalStylesheets(cache or {})
    sheets = [cache[s.url] if isinstance(s, ImportedStyleSheet) and s.url in cache else s for s in model.stylesheets]
    if sheets != model.stylesheets:
        model.stylesheets = sheets


def share_inline_stylesheets() -> None:
    """Rendered models share their document's inline sheets (module docstring: Offline)."""
    import panel.viewable

    if getattr(panel.viewable, "patch_inline_stylesheets", None) is not None:  # the name Panel 1.9's render calls
        panel.viewable.patch_inline_stylesheets = _share_inline_sheets


def inline_stylesheets() -> None:
    """Every displayed document's stylesheet cache becomes a `LocalStylesheets` (after Panel's first render)."""
    import panel as pn

    for _, _, doc, _ in list(pn.state._views.values()):
        if doc is not None and not isinstance(pn.state._stylesheets.get(doc), LocalStylesheets):
            pn.state._stylesheets[doc] = LocalStylesheets(pn.state._stylesheets.get(doc, {}))
