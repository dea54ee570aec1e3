"""The Panel app: one class per view (plain Bokeh figures built once, fed new data), one shared selection,
and the assembly (`Explorer`).

`Explorer` is imported on first use: `vitscope serve` checks its address, port, login and store before the
app's heavy stack (datashader, numba, torch) loads, so a user error stays one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitscope.app.server import Login, serve

if TYPE_CHECKING:
    from vitscope.app.explorer import Explorer

__all__ = ["Explorer", "Login", "serve"]


def __getattr__(name: str):
    if name == "Explorer":
        from vitscope.app.explorer import Explorer

        return Explorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
