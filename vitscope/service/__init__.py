"""On-demand computations for the app, Jupyter and the CLI: `Service` (the computations, plain data in and
out) behind a `Dispatcher` (one queue per server process, in-process or on a Dask worker)."""

from vitscope.service.core import CURVE_ORDERS, Service
from vitscope.service.dispatch import DaskBackend, Dispatcher, LocalBackend, make_dispatcher

__all__ = ["CURVE_ORDERS", "DaskBackend", "Dispatcher", "LocalBackend", "Service", "make_dispatcher"]
