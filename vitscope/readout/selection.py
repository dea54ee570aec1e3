"""The one selection every view reads and writes: one per browser session of the app, one per notebook dashboard
(`vitscope.plots.linked`). Parameters only; the views that draw it watch it."""

from __future__ import annotations

import param

from vitscope.vocab import DEFAULT_METRIC, HEAD_LAYOUTS, METRICS, MODES, WHOLE_HEAD

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
    layout = param.Selector(objects=list(HEAD_LAYOUTS), default="cls", doc="Attention Pattern View layout")
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

