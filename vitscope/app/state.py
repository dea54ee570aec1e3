"""The one selection every view reads and writes (one instance per browser session)."""

from __future__ import annotations

import param

from vitscope.engine.metrics import METRICS


class Selection(param.Parameterized):
    """What the user has selected; views watch it and redraw, streams write into it."""

    image = param.Integer(default=None, allow_None=True, doc="selected image; None = all images")
    layer = param.Integer(default=0, bounds=(0, None))
    head = param.Integer(default=0, bounds=(0, None))
    mode = param.Integer(default=1, bounds=(0, 5), doc="pruning mode of the importance views")
    metric = param.Selector(objects=list(METRICS), default="prob")
    threshold = param.Number(default=None, allow_None=True, doc="attention threshold; None = top 1 %")
    layout = param.Selector(objects=["cls", "patch"], default="cls", doc="Attention Pattern View layout")
    density = param.Boolean(default=False, doc="density with contours instead of points")
    message = param.String(default="", doc="a readable problem to show in the page (never a traceback)")
