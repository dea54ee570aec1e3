"""The Panel app: one Viewer per view, one shared selection, and the assembly (`Explorer`)."""

from vitscope.app.explorer import Explorer, serve

__all__ = ["Explorer", "serve"]
