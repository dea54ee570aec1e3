"""`panel serve apps/vitscope_app.py --args STORE`: the vitscope app for one store."""

import sys

from vitscope.app import Explorer
from vitscope.build import cache_root

store = sys.argv[1] if len(sys.argv) > 1 else str(cache_root() / "demo.zarr")
Explorer(store).template().servable()
