"""The one selection every view reads and writes (one instance per browser session)."""

from __future__ import annotations

from collections.abc import Callable

import param

from vitscope.errors import one_line
from vitscope.vocab import DEFAULT_METRIC, LAYOUTS, METRICS, MODES, WHOLE_HEAD

COLOUR_BY = ("class", "correct", "P[true]")  # how the Image Overview colours its points
MAX_PINNED = 4  # heads compared side by side in the Attention Strength View (the paper's Fig. 9 D–E)


class Selection(param.Parameterized):
    """What the user has selected; the Explorer watches it and pushes new data into every plot."""

    image = param.Integer(default=None, allow_None=True, doc="selected image; None = all images")
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    mode = param.Selector(objects=list(MODES), default=WHOLE_HEAD, doc="pruning mode of the importance views")
    metric = param.Selector(objects=list(METRICS), default=DEFAULT_METRIC)
    threshold = param.Number(default=None, allow_None=True, doc="attention threshold; None = the store's top %")
    layout = param.Selector(objects=list(LAYOUTS), default="cls", doc="Attention Pattern View layout")
    density = param.Boolean(default=False, doc="contours of all heads' density over the map")
    colour_by = param.Selector(objects=list(COLOUR_BY), default="class", doc="Image Overview colouring")
    cls = param.Integer(default=None, allow_None=True, doc="class chosen in the class search; None = all")
    only_class = param.Boolean(default=False, doc="show only the chosen class's images in the Image Overview")
    group = param.List(default=[], item_type=int, doc="flat head indices (layer·H + head) drag-selected")
    pinned = param.List(default=[], item_type=int, doc=f"flat head indices pinned for comparison (≤ {MAX_PINNED})")
    source_token = param.Integer(default=0, bounds=(0, None), doc="token whose row is the source mask")
    target_token = param.Integer(default=0, bounds=(0, None), doc="token whose column is the target mask")
    message = param.String(default="", doc="a readable problem to show in the page (never a traceback)")

    def toggle_pin(self, flat: int) -> None:
        """Pin a head, or unpin it if pinned; the oldest pin makes room when MAX_PINNED are pinned."""
        pins = [p for p in self.pinned if p != flat]
        if len(pins) == len(self.pinned):
            pins = (pins + [flat])[-MAX_PINNED:]
        self.pinned = pins


def guarded(sel: Selection, what: str, callback: Callable) -> Callable:
    """A browser-event callback whose errors become one line in the page ("`what`: …"), never a traceback in
    the terminal."""
    def run(*args) -> None:
        try:
            callback(*args)
        except Exception as e:  # noqa: BLE001 - whatever broke, the page says so in one line and goes on
            sel.message = f"{what}: {one_line(e)}"
    return run
