"""The Panel app: one class per view (plain Bokeh figures built once, fed new data), one shared selection,
and the assembly (`Explorer`)."""

from vitscope.app.explorer import Explorer, serve

__all__ = ["Explorer", "serve"]
