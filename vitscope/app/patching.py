"""Activation patching in the ablation panel: the panel's heads in the selected image (the target) given the output
they have on another image (the source), and what that does to both images' labels.

Pruning asks what a head contributes; patching asks whether the head carries what makes the source the source: if
patching a few heads moves P[the source's label] up in the target, those heads carry it. The heads are the panel's
(the group dragged or shift-tapped in the Head Importance View, else the selected head), always whole heads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import panel as pn

from vitscope.app.asking import Asker, Submit
from vitscope.app.session import guarded
from vitscope.app.style import div, light_button, text_pane
from vitscope.heads import Head
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.text import esc
from vitscope.vocab import head_name


def source_problem(data: StoreData, image: int | None, source: int | None) -> str | None:
    """Why (target `image`, `source`) cannot be patched, as one line; None when they can."""
    if data.readable(image) is None:
        return "Select an image first: the heads are patched into it."
    if source is None:
        return "Type the id of the image to patch from (or select it and press ← this image)."
    if not 0 <= source < data.images:
        return f"image {source} is not in this store (0..{data.images - 1})"
    if data.readable(source) is None:
        return f"image {source} could not be read when the store was built: choose another source"
    if source == image:
        return f"image {source} is the selected image itself: patching from it changes nothing"
    return None


def patch_html(data: StoreData, r: dict) -> str:
    """The patch answer: P[the target's label] and P[the source's label] in the target, unpatched → patched, and
    the patched run's top-5."""
    name = lambda c: esc(str(data.class_names[c])) if 0 <= c < len(data.class_names) else str(c)  # noqa: E731
    image, source, yi, yj = r["image"], r["source"], int(r["label"]), int(r["source_label"])
    top = ", ".join(f"{name(int(c))} {p:.2f}" for c, p in zip(r["topk_idx"][:5], r["topk_prob"][:5], strict=True))
    n = len(r["heads"])
    lines = [f"image {image} with {n} head{'s' if n > 1 else ''} from image {source}:",
             f"P[{name(yi)}] {r['baseline_prob']:.3f} → <b>{r['prob']:.3f}</b>"]
    if yj != yi:
        lines.append(f"P[{name(yj)}] {r['source_prob_before']:.3f} → <b>{r['source_prob']:.3f}</b> "
                     f"(in image {source}: {r['source_baseline_prob']:.3f})")
    lines += [f"top-5: {top}", f"<span style='color:#666'>{esc(', '.join(r['heads'][:6]))}{' …' if n > 6 else ''}"
                               "</span>"]
    return f"<div style='font-size:11px'>{'<br>'.join(lines)}</div>"


class PatchPanel:
    """A source image id, a button to take the selected image as the source, and one to patch the heads."""

    def __init__(self, data: StoreData, sel: Selection, submit: Submit, schedule: Callable[[Callable[[], None]], None],
                 heads: Callable[[], list[Head]], width: int) -> None:
        """`heads()`: the ablation panel's heads (their mode is ignored: patching replaces a head's whole output)."""
        self.data, self.sel, self.heads = data, sel, heads
        self.source = pn.widgets.IntInput(label="patch from image", value=None, placeholder="source image id",
                                          width=width // 2 - 5, css_classes=["vs-patch-source"])
        self.take = pn.widgets.Button(label="← this image", width=width // 2 - 5, **light_button(),
                                      css_classes=["vs-patch-take"])
        self.take.on_click(guarded(sel, "patch source", lambda _: self.take_selected()))
        self.button = pn.widgets.Button(label="patch", width=width, **light_button(), css_classes=["vs-patch"])
        self.button.on_click(guarded(sel, "patch", lambda _: self.ask()))
        self.asker = Asker(submit, schedule, "patch", width, "vs-patch-status")
        self.answer = div(width, 84, css_classes=["vs-patch-answer"])
        self.update()

    def take_selected(self) -> None:
        """The selected image becomes the source: select it, press this, then select the target."""
        if self.sel.image is not None:
            self.source.value = int(self.sel.image)

    def whole_heads(self) -> list[str]:
        """The panel's heads as LAYER:HEAD, each once, in order."""
        return list(dict.fromkeys(f"{h.layer}:{h.head}" for h in self.heads()))

    def ask(self) -> Future | None:
        """Patch the panel's heads from the source into the selected image; a bad source is one line, not a request."""
        image, source = self.sel.image, self.source.value
        problem = source_problem(self.data, image, source)
        if problem is not None:
            self.asker.forget()
            self.asker.status.object = f"<i>{esc(problem)}</i>"
            return None
        request = {"kind": "patch", "image": int(image), "source": int(source), "heads": self.whole_heads()}
        return self.asker.ask(request, self.show, f"patching from image {source}")

    def show(self, r: dict) -> None:
        self.answer.text = patch_html(self.data, r)

    def update(self, changed: set[str] | None = None) -> None:
        """The button names the heads it patches (they follow the selection)."""
        heads = self.whole_heads()
        self.button.label = (f"patch {head_name(*map(int, heads[0].split(':')))}" if len(heads) == 1 else
                             f"patch {len(heads)} heads")

    def panel(self) -> pn.Column:
        return pn.Column(pn.Row(self.source, pn.Column(pn.Spacer(height=18), self.take, margin=0), margin=0),
                         self.button, self.asker.status, self.asker.progress, text_pane(self.answer), margin=0)
