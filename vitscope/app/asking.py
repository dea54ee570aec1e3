"""One channel of a view's requests to the service, as every on-demand part of the app asks: the view never waits.

`Asker.ask` submits (the session's latest request per channel wins, in the dispatcher and here), shows what is
being computed with a progress bar that moves, and draws the answer with the caller's `show` on the session's own
event loop; an error, or a store whose model cannot be loaded, is one line under the bar.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import panel as pn

from vitscope.errors import VitscopeError, one_line
from vitscope.readout.palette import SELECTED
from vitscope.text import esc

Submit = Callable[[dict, str, Callable[[int, int], None] | None], Future]
STEPS = 50  # the bar moves in steps of 2 %: a report per masked batch would be a message each


class Asker:
    """The requests of one channel: `status` (what is computing, or why it failed) and `progress` go in the page."""

    def __init__(self, submit: Submit, schedule: Callable[[Callable[[], None]], None], channel: str,
                 width: int, css: str, on_fail: Callable[[], None] | None = None) -> None:
        """`on_fail()`: called after an error is set (the view may show `error` elsewhere than `status`)."""
        self.submit, self.schedule, self.channel, self.on_fail = submit, schedule, channel, on_fail
        self.status = pn.pane.HTML("", width=width, css_classes=[css], margin=(0, 4))
        self.progress = pn.indicators.Progress(value=0, max=STEPS, width=width, visible=False, bar_color="info",
                                               margin=(0, 4))
        self.latest: Future | None = None
        self._asked = 0  # counts the asks: the progress of an earlier one moves no bar
        self._step = 0  # where the bar of the latest ask is
        self.error = ""

    def ask(self, request: dict, show: Callable[[dict], None], what: str) -> Future | None:
        """Submit `request`; `show(answer)` when it comes, unless another was asked since (or `forget`)."""
        self._asked += 1
        asked, self._step = self._asked, 0
        self.error = ""
        self.status.object = f"<i>{esc(what)}: computing…</i>"
        self.progress.param.update(value=0, visible=True)
        try:
            fut = self.submit(request, self.channel, lambda done, total: self._moved(asked, done, total))
        except VitscopeError as e:  # no service (the model cannot be loaded here): said in this view
            self.fail(what, one_line(e))
            return None
        self.latest = fut

        def done(f: Future) -> None:
            if not f.cancelled() and self.latest is f:
                self.schedule(lambda: self._answer(f, show, what))

        fut.add_done_callback(done)
        return fut

    def forget(self) -> None:
        """An answer still computing draws nothing; the bar and the status clear."""
        self._asked += 1
        self.latest, self.error = None, ""
        self.progress.visible = False
        self.status.object = ""

    @property
    def computing(self) -> bool:
        return self.latest is not None and not self.latest.done()

    def _moved(self, asked: int, done: int, total: int) -> None:
        step = min(STEPS, int(STEPS * done / max(int(total), 1)))
        if asked != self._asked or step == self._step:
            return
        self._step = step

        def show() -> None:
            if asked == self._asked:
                self.progress.value = step

        self.schedule(show)

    def _answer(self, f: Future, show: Callable[[dict], None], what: str) -> None:
        if self.latest is not f:
            return
        self.progress.visible = False
        try:
            result = f.result()
        except Exception as e:  # noqa: BLE001 - the service's own failure: one line in the page
            result = {"error": one_line(e)}
        if "error" in result:
            self.fail(what, result["error"])
            return
        self.status.object = ""
        with pn.io.hold():
            show(result)

    def fail(self, what: str, line: str) -> None:
        self.progress.visible = False
        self.error = f"{what}: {line}"
        self.status.object = f"<span style='color:{SELECTED}'>{esc(self.error, limit=300)}</span>"
        if self.on_fail is not None:
            self.on_fail()
