"""`vitscope figure`: every view and summary of a store as a separate print file (SVG, PDF or PNG), offline.

The registry's figures, for one image and one head; the views of the image's attention recompute it with the
store's model once (as `vitscope export` does), as do those of its explanation (its patch maps and faithfulness
curves), the others read the store alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vitscope.errors import VitscopeError, replacing, writing
from vitscope.heads import Head, parse_head
from vitscope.plots.figures import build, print_file
from vitscope.readout.figures import FIGURES, NO_EFFECTS
from vitscope.readout.importance import default_head
from vitscope.readout.store_data import store_data
from vitscope.service.dispatch import ask_attention, ask_explain, shared_dispatcher
from vitscope.vocab import FIGURE_FORMATS, NO_BASIS

ONE_IMAGE = "show one image: give --image for them"
NO_TARGET = ("follow P[target], which this store's model cannot give (no classifier, and its images no usable labels: "
             "prob basis none)")
NEEDS_EFFECTS = f"need the heads' effects, {NO_EFFECTS}"


def write_figures(store: str | Path, out: str | Path, fmt: str = "svg", image: int | None = None,
                  head: Head | str | None = None, device: str = "cpu", names: list[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[list[Path], dict[str, str]]:
    """Write each figure (all of `FIGURES`, or `names`) of `store` for `image` and `head` into folder `out` as
    `<name>.<fmt>`; returns (the files written, {name skipped: why}: it shows one image and none was given
    (`ONE_IMAGE`), it follows P[target] and the store's model has no class basis (`NO_TARGET`), or it shows the
    heads' effects and the store was built before they were stored (`NEEDS_EFFECTS`))."""
    if fmt not in FIGURE_FORMATS:
        raise VitscopeError(f"--format {fmt}: choose from {', '.join(FIGURE_FORMATS)}")
    unknown = [n for n in names or [] if n not in FIGURES]
    if unknown:
        raise VitscopeError(f"no figure {unknown[0]!r}: the figures are {', '.join(FIGURES)}")
    path = str(Path(store).resolve())
    data = store_data(path)
    if image is not None:
        image = data.check_image(int(image))
    h = parse_head(head, modes=False) if head is not None else default_head(data, image)
    chosen = list(names or FIGURES)
    skipped = {n: ONE_IMAGE for n in chosen if FIGURES[n].needs_image and image is None}
    if data.prob_basis == NO_BASIS:
        skipped |= {n: NO_TARGET for n in chosen if FIGURES[n].needs_explain and n not in skipped}
    if not data.has_effects:
        skipped |= {n: NEEDS_EFFECTS for n in chosen if FIGURES[n].needs_effects and n not in skipped}
    todo = [n for n in chosen if n not in skipped]
    attention = explanation = None
    if image is not None and any(FIGURES[n].needs_attention for n in todo):
        attention = ask_attention(shared_dispatcher(path, device), "figure", image)  # [L, H, P, P], once
    if image is not None and any(FIGURES[n].needs_explain for n in todo):
        explanation = ask_explain(shared_dispatcher(path, device), "figure", image)  # the four maps, once
    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in todo:
        element = build(name, data, image=image, layer=h.layer, head=h.head, attention=attention,
                        explain=explanation)
        with replacing(out / f"{name}.{fmt}") as partial:  # the figures written before it stay
            print_file(element, partial, fmt)
        written.append(out / f"{name}.{fmt}")
        if progress:
            progress(name)
    return written, skipped
