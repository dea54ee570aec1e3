"""`panel serve apps/vitscope_app.py --args STORE`: the vitscope app for one store (default: the demo store), as
`vitscope serve` starts it, "save figure" included."""

import sys

from vitscope.app import Explorer
from vitscope.app.style import alert
from vitscope.build import cache_root
from vitscope.cli.serve import figure_file
from vitscope.errors import VitscopeError

store = sys.argv[1] if len(sys.argv) > 1 else str(cache_root() / "demo.zarr")
try:
    page = Explorer(store, figures=figure_file).template()
except VitscopeError as e:  # a missing, foreign or old store: one readable line in the page, not a traceback
    page = alert(f"vitscope cannot open {store}: {e}", "danger")
page.servable(title="vitscope")
