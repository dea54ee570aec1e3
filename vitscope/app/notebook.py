"""What the app needs in Jupyter beyond Panel's defaults: offline stylesheets and cell output in its own cell.

Both work around Panel 1.9 / pyviz_comms 3 behaviour measured in JupyterLab 4.6 (issue 21, tests/test_jupyter.py):

- Offline: `pn.extension(inline=True)` inlines BokehJS, Panel's JS and the stylesheets of the first render, but a
  pane updated later (the ablation status line, the message line) gets `ImportedStyleSheet`s of cdn.holoviz.org
  (loading.css, the theme's default.css and native.css): an offline browser waits on them, and they leave the
  machine. `inline_stylesheets()` makes Panel's per-document stylesheet cache answer those urls with the files
  Panel ships, inline.
- Output: pyviz_comms handles every browser event with `sys.stdout` swapped for a StringIO (the output of the
  event's Python callbacks goes to the app's cell). ipykernel 7 can run a cell's code while that swap is in force
  (measured: the cell's `sys.stdout` was pyviz_comms' StringIO), so the cell's prints vanished or went to the app's
  cell. `capture_callback_output_per_context()` captures per context instead: what the event's handler prints still
  goes to the app's cell, what anything else prints goes where it would have gone.
"""

from __future__ import annotations

import contextvars
import io
import sys

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


class LocalStylesheets(dict):
    """Panel's per-document cache of stylesheet models (url → model), which it consults for every stylesheet of a
    model it creates or updates; this one answers Panel's CDN and server urls with the file Panel ships, inline."""

    def __init__(self, cache: dict) -> None:
        super().__init__()
        for url, sheet in cache.items():
            self[url] = self._inline(url) or sheet

    @staticmethod
    def _inline(url: str):
        from bokeh.models import InlineStyleSheet
        from panel.io.resources import CDN_DIST, DIST_DIR, LOCAL_DIST

        prefix = next((p for p in (CDN_DIST, LOCAL_DIST) if isinstance(url, str) and url.startswith(p)), None)
        if prefix is None:  # Panel rewrites its server path (static/extensions/panel/) to the CDN in Jupyter
            return None
        path = DIST_DIR / url[len(prefix):].split("?")[0]
        if not path.is_file():
            return None

        class _Inline(InlineStyleSheet):  # "_": not registered as a model of its own; BokehJS sees an inline sheet
            __view_model__, __view_module__ = "InlineStyleSheet", "bokeh.models.css"
            # Panel checks a cached sheet's url before reusing it (and replaces one without)
            url = property(lambda self: source)

        source = url
        return _Inline(css=path.read_text(encoding="utf-8"))

    def __contains__(self, url) -> bool:
        return super().__contains__(url) or self._inline(url) is not None

    def __missing__(self, url):
        sheet = self._inline(url)
        if sheet is None:
            raise KeyError(url)
        self[url] = sheet
        return sheet

    def __bool__(self) -> bool:  # Panel's themes skip an empty cache (`if cache and url in cache`)
        return True


def inline_stylesheets() -> None:
    """Every displayed document's stylesheet cache becomes a `LocalStylesheets` (after Panel's first render)."""
    import panel as pn

    for _, _, doc, _ in list(pn.state._views.values()):
        if doc is not None and not isinstance(pn.state._stylesheets.get(doc), LocalStylesheets):
            pn.state._stylesheets[doc] = LocalStylesheets(pn.state._stylesheets.get(doc, {}))
