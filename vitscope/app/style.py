"""Sizes, Bokeh images and the one figure factory shared by all views (the colours: `vitscope.readout.palette`)."""

from __future__ import annotations

from functools import cache
from html import escape

import numpy as np
from bokeh.models import Div, GlyphRenderer, Range1d, WheelZoomTool
from bokeh.plotting import figure as bokeh_figure
from PIL import Image

MAX_LEGEND = 20  # the Image Overview shows a class legend only up to this many classes
FONT = "11px"
SHOWN_SIDE = 128  # pixels a side of the images sent to the page


def rgba_image(pixels: np.ndarray) -> np.ndarray:
    """[h, w, 3|4] uint8 (row 0 = top) → [h, w] uint32 for Bokeh's image_rgba (row 0 = bottom)."""
    if pixels.shape[-1] == 3:
        pixels = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    return np.ascontiguousarray(np.flipud(pixels)).view(np.uint32)[..., 0]


def downsized(pixels: np.ndarray, side: int = SHOWN_SIDE) -> np.ndarray:
    """[h, w, 3] uint8 scaled down to at most `side` pixels a side: the page draws images at ~100–130 px, and a
    224 × 224 thumbnail would send three times the bytes of one that looks the same there."""
    h, w = pixels.shape[:2]
    if max(h, w) <= side:
        return pixels
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def div(width: int, height: int, **kw) -> Div:
    """A fixed-size text box that never shows a scrollbar: a box whose size follows its text, or a scrollbar
    that comes and goes, makes the browser lay the page out again (and tell the server) on every change."""
    return Div(text="", width=width, height=height, styles={"overflow": "hidden"}, **kw)


def figure(title: str, width: int, height: int, tools: str = "pan,wheel_zoom,reset", x_range=(0, 1),
           y_range=(0, 1), bare: bool = False, **kw):
    """A fixed-size Bokeh figure with explicit ranges: a DataRange1d sends range updates back to the server
    on every change, and responsive plots with a fixed aspect kept Bokeh's layout from settling (texts: `div`).
    `bare`: no axes and no grid (images, maps), not even hidden ones: their ~10 models a figure each cost the page
    load time."""
    if bare:
        kw.update(x_axis_type=None, y_axis_type=None)
    fig = bokeh_figure(title=title, width=width, height=height, tools=tools, toolbar_location="above",
                       x_range=Range1d(*x_range), y_range=Range1d(*y_range), output_backend="canvas", **kw)
    fig.toolbar.logo = None
    # On a one-screen dashboard the wheel zooms the plot under the pointer (Bokeh leaves it off by default).
    fig.toolbar.active_scroll = next((t for t in fig.tools if isinstance(t, WheelZoomTool)), None)
    fig.title.text_font_size = "12px"
    fig.min_border_left = fig.min_border_right = 4
    for axis in (fig.xaxis, fig.yaxis):
        axis.axis_label_text_font_size = FONT
        axis.major_label_text_font_size = FONT
        axis.axis_label_text_font_style = "normal"
    return fig


ALERT_COLOURS = {"warning": ("#fff3cd", "#664d03"), "danger": ("#f8d7da", "#842029")}


def alert(text: str, kind: str = "warning", **kw):
    """A message box whose text is shown literally (escaped): Panel's Alert pane renders Markdown, which would
    read a file name's `*`, backticks or brackets as formatting."""
    import panel as pn

    from vitscope.text import esc

    background, colour = ALERT_COLOURS[kind]
    return pn.pane.HTML(esc(text, limit=600), styles={"background": background, "color": colour, "padding": "6px 10px",
                                                      "border-radius": "4px"}, **kw)


def bokeh_pane(obj, css: str | None = None):
    """A Bokeh model as a Panel pane; `css` names it for tests and the browser benchmark (on the model itself:
    Panel renders a Bokeh pane as the model, without a wrapper of its own)."""
    import panel as pn

    if css:
        obj.css_classes = [*obj.css_classes, css]
    for r in getattr(obj, "renderers", ()):
        if isinstance(r, GlyphRenderer):  # nothing is ever muted: a glyph model per renderer less to build and send
            r.muted_glyph = "auto"
    return pn.pane.Bokeh(obj, margin=(1, 3))


def text_pane(div: Div):
    """A view's text box as the served page shows it: Panel's HTML model, kept to the Div's text.

    The Div stays the view's model (the views write it, exports and tests read it); the page shows a copy that
    a new text updates in place. A Bokeh Div re-renders on every new text and lays the whole page out again
    (every figure measured and repainted, several times per selection change); Panel's HTML replaces its inner HTML
    only (same size: fixed width and height)."""
    import panel as pn
    from panel.models.markup import HTML

    shown = HTML(text=escape(div.text), width=div.width, height=div.height, styles=dict(div.styles),
                 css_classes=list(div.css_classes), disable_math=True)  # Panel's HTML model decodes its text once
    div.on_change("text", lambda _attr, _old, new: setattr(shown, "text", escape(new)))
    return pn.pane.Bokeh(shown, margin=(1, 3))


@cache
def light_button() -> dict[str, str]:
    """The keyword for a light button: `color` where Panel has it (1.9.4 deprecates `button_type` with a warning on
    every button), `button_type` on the Panels before it."""
    import panel as pn

    return {"color": "light"} if "color" in pn.widgets.Button.param else {"button_type": "light"}


def offline(template):
    """The served page asks nothing of another machine: Panel's Fast design (FastListTemplate's) links its web font
    from Google (fonts.googleapis.com/css?family=Open+Sans; offline that request waits until it fails), once from
    the template's design and once from the session's `config.design` (the design's class). Here both are a Fast
    that links none; the font stays "Open Sans, sans-serif" (Open Sans where installed, else sans-serif)."""
    template.design = _fast_without_web_font()
    return template


@cache
def _fast_without_web_font():
    """Fast without the font resource. Named Fast too: Panel finds the design's bundled files by its class name."""
    from panel.theme.fast import Fast

    return type("Fast", (Fast,), {"_resources": {k: v for k, v in Fast._resources.items() if k != "font"},
                                  "__module__": Fast.__module__})
