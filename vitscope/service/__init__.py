"""On-demand computations for the app, Jupyter and the CLI: `Service` (the computations, plain data in and
out) behind a `Dispatcher` (one queue per server process, in-process or on a Dask worker).

Imported on first use, so that `vitscope --help` and early CLI errors never load torch.
"""

from __future__ import annotations

import importlib

_WHERE = {"Service": "core", "DaskBackend": "dispatch", "Dispatcher": "dispatch", "LocalBackend": "dispatch",
          "make_dispatcher": "dispatch", "shared_dispatcher": "dispatch", "warm": "dispatch",
          "ask_attention": "dispatch"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"vitscope.service.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'vitscope.service' has no attribute {name!r}")
