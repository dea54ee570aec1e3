"""The numbers under every picture: what the app, the notebook figures (`vitscope.plots`) and the report read
from a store, and the one selection they share. No Bokeh, Panel or HoloViews here: a number shown by the app, a
paper figure and the report is computed once, in one function of this package.

Modules: `store_data` (a store's arrays and aggregates, loaded once per process), `selection` (what is
selected), `importance`, `strength`, `attention` (one head's matrix), `pattern_map`, `comparison` (two stores),
`figures` (the figure registry), `palette` (the colours every picture uses).
"""

from vitscope.readout.figures import FIGURES, FigureSpec, Target, target
from vitscope.readout.selection import COLOUR_BY, MAX_PINNED, Selection
from vitscope.readout.store_data import ENTROPY_BINS, Store, StoreData, store_data

__all__ = ["COLOUR_BY", "ENTROPY_BINS", "FIGURES", "MAX_PINNED", "FigureSpec", "Selection", "Store", "StoreData",
           "Target", "store_data", "target"]
