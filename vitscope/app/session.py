"""What a browser session's callbacks share: errors become one line in the page, and layouts that land while the
page is open are drawn."""

from __future__ import annotations

from collections.abc import Callable

import panel as pn

from vitscope.errors import VitscopeError, one_line
from vitscope.readout import Selection, StoreData


def guarded(sel: Selection, what: str, callback: Callable) -> Callable:
    """A browser-event callback whose errors become one line in the page ("`what`: …"), never a traceback in
    the terminal."""
    def run(*args) -> None:
        try:
            callback(*args)
        except Exception as e:  # noqa: BLE001 - whatever broke, the page says so in one line and goes on
            sel.message = f"{what}: {one_line(e)}"
    return run


def poll_layouts(data: StoreData, names: set[str], on_arrival, on_error=None) -> bool:
    """While any of `names` is pending, look for it every second in this browser session and call
    `on_arrival(arrived)` (in the session's document, so it can update its figures); stops when all arrived, or when
    the store is removed (`on_error(line)` then says so: a periodic callback's error would be a traceback a second).

    Only in a served session (Jupyter and exports draw what the store has), and only once the page has loaded:
    changes made before its websocket is connected did not reach the browser (seen: a layout that landed while
    the page loaded stayed "computing layout…"). Returns whether it polls."""
    waiting = set(names) & data.layouts_pending
    if not waiting:
        return False
    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return False
    periodic: list = []

    def look() -> None:
        try:
            data.refresh_layouts()  # loads what landed (once, for all sessions)
        except VitscopeError as e:
            waiting.clear()
            if periodic:
                periodic[0].stop()
            if on_error is not None:
                on_error(str(e))
            return
        arrived = waiting - data.layouts_pending
        if arrived:
            waiting.difference_update(arrived)
            with pn.io.hold():
                on_arrival(arrived)
        if not waiting and periodic:
            periodic[0].stop()

    def loaded() -> None:
        look()  # what landed while the page loaded
        if waiting:
            periodic.append(pn.state.add_periodic_callback(look, period=1000))

    pn.state.onload(loaded)
    return True
