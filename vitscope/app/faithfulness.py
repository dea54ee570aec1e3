"""The side panel's store-wide faithfulness benchmark: which of the four maps follows the model's decision best, over
a seeded sample of images (`vitscope explain --images N` in the page), asked of the model on a button press.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import panel as pn

from vitscope.app.asking import Asker, Submit
from vitscope.app.style import light_button
from vitscope.readout.input_maps import DIRECTION_NAMES, benchmark_table
from vitscope.readout.palette import MAP_COLOURS
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import EXPLAIN_DIRECTIONS

SAMPLE = 20  # images in the seeded sample: enough for an interval, few enough to wait for
SEED = 0


class FaithfulnessBenchmark:
    """A button, its progress, and the answer as a table of mean AUCs with their 95 % intervals."""

    def __init__(self, data: StoreData, sel: Selection, submit: Submit,
                 schedule: Callable[[Callable[[], None]], None], width: int) -> None:
        self.data, self.sel = data, sel
        self.asker = Asker(submit, schedule, "explain_set", width, "vs-benchmark-status")
        self.button = pn.widgets.Button(label="which map is faithful?", width=width, **light_button(),
                                        css_classes=["vs-benchmark"])
        self.button.on_click(lambda _: self.ask())
        self.result = pn.pane.HTML("", width=width, css_classes=["vs-benchmark-table"], margin=(0, 4))
        self.width = width

    def ask(self) -> Future | None:
        """explain_set on a seeded sample of the selected class's images (of all images without a class)."""
        cls = self.sel.cls
        scope = "" if cls is None else f" of class {self.data.class_names[cls]}"
        return self.asker.ask({"kind": "explain_set", "images": SAMPLE, "cls": cls, "seed": SEED}, self.show,
                              f"{SAMPLE} images{scope}")

    def show(self, r: dict) -> None:
        self.result.object = benchmark_html(r, self.data.class_names)

    def panel(self) -> pn.Column:
        return pn.Column(self.button, self.asker.progress, self.asker.status, self.result, margin=0)


def benchmark_html(r: dict, class_names: list[str]) -> str:
    """Per method and direction the mean AUC [95 % interval]; ★ on the most faithful method of each direction."""
    who = f"{len(r['images'])} of {r['of']} images" + (
        f" of class {esc(class_names[r['cls']])}" if r.get("cls") is not None else "") + f", seed {r['seed']}"
    rows = []
    for m, values, wins in benchmark_table(r):
        cells = "".join(f"<td>{'★ ' if d in wins else ''}<b>{mean:.3f}</b> [{lo:.3f}, {hi:.3f}]</td>"
                        for d, (mean, lo, hi) in values.items())
        rows.append(f"<tr><td style='color:{MAP_COLOURS[m]}'><b>{esc(m)}</b></td>{cells}</tr>")
    head = "".join(f"<th>{esc(DIRECTION_NAMES[d])}</th>" for d in EXPLAIN_DIRECTIONS)
    return (f"<div style='font-size:11px'>mean AUC [95 % interval], {who}</div>"
            f"<table style='font-size:10px;border-collapse:collapse'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
            "<div style='font-size:10px;color:#666'>★ most faithful: lowest AUC most relevant first, highest least "
            "relevant first</div>")
