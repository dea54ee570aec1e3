"""The app's on-demand ablation panel: heads pruned together (drag or shift-tap), pairs, curves, saliency, a
new image — each answer drawn from the service, and a store whose model cannot be loaded says so in one line."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from app_helpers import make_store
from PIL import Image

from vitscope.app.ablation import heat_rgba
from vitscope.app.explorer import Explorer
from vitscope.heads import Head
from vitscope.service import Service
from vitscope.vocab import MODES


def wait_for(condition, timeout: float = 120.0):
    """Answers are drawn on the service's thread, just after the future resolves."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the answer was never drawn")


@pytest.fixture(scope="module")
def app(demo16):
    return Explorer(demo16)


def test_heads_pruned_together_against_the_sum_of_singles(app, demo16):
    s, ab = app.selection, app.ablation
    s.image = 2
    app.importance.pick(1.0, shift=True)  # L0H1
    app.importance.pick(9.0, shift=True)  # L2H1
    app.importance.pick(14.0, shift=True)  # L3H2
    assert s.group == [1, 9, 14]
    app.importance.pick(9.0, shift=True)  # a second shift-tap takes it out again
    assert s.group == [1, 14]
    want = Service(demo16).compute({"kind": "prune", "image": 2, "heads": ["0:1:1", "3:2:1"]})
    wait_for(lambda: ab.joint_source.data["top"][0] == pytest.approx(want["drop"], abs=1e-6))
    assert ab.joint_source.data["top"][1] == pytest.approx(want["sum_of_single_drops"], abs=1e-6)
    assert "2 heads pruned together" in ab.joint.title.text
    assert list(app.importance.group_marks.data["x"]) == [1, 14]


def test_one_head_is_answered_from_the_store_as_the_service_computes_it(app, demo16):
    """A single head in a stored mode: the build's own ablation, drawn at once without asking the model, and equal
    to what the service computes by pruning it now (every mode, heads in the first and last layer)."""
    service, d = Service(demo16), app.data
    for image, layer, head in [(1, 0, 2), (4, d.layers - 1, 0), (7, 1, 1)]:
        for mode in MODES[1:]:
            got = d.stored_prune(image, Head(layer, head, mode))
            want = service.compute({"kind": "prune", "image": image, "heads": [[layer, head, mode]]})
            assert got["heads"] == want["heads"] and [c for c, _ in got["top5"]] == [c for c, _ in want["top5"]]
            for k in ("prob", "baseline_prob", "drop", "jsd", "cls_dist", "patch_dist", "sum_of_single_drops"):
                assert got[k] == pytest.approx(want[k], abs=2e-5), (image, layer, head, mode, k)
            assert [p for _, p in got["top5"]] == pytest.approx([p for _, p in want["top5"]], abs=2e-5)
    assert d.stored_prune(1, Head(0, 2, 0)) is None  # mode 0 prunes nothing: not an ablation the store holds

    asked = []
    submit, app.ablation.submit = app.ablation.submit, lambda *a: asked.append(a) or submit(*a)
    try:
        s = app.selection
        s.param.update(image=3, group=[], layer=2, head=1, mode=MODES[-1])
        want = d.stored_prune(3, Head(2, 1, MODES[-1]))
        assert not asked and app.ablation.joint_source.data["top"][0] == pytest.approx(want["drop"])
        assert "as the build measured it" in app.ablation.joint_text.text
    finally:
        app.ablation.submit = submit
        app.selection.mode = 1


def test_pairs_curve_saliency_and_a_new_image(app, demo16):
    s, ab = app.selection, app.ablation
    s.image = 5
    assert not any(slot.objects for slot in ab.slots.values())  # no empty figure in the page before its answer
    ab.ask_pairs()
    wait_for(lambda: len(ab.pair_source.data["value"]) == 144 and ab.slots["pairs"].objects)
    assert ab.slots["pairs"].objects[0].object is ab.pairs and not ab.slots["curve"].objects
    group = ab.pick_pair(3.0, 0.0)  # row 0 (the top head) × column 3
    assert len(group) == 2 and s.group == group

    ab.ask_curve()
    wait_for(lambda: len(ab.curve_sources["exact-harmful-first"].data["y"]) == 25 and ab.slots["curve"].objects)
    assert ab.slots["curve"].objects[0].object is ab.curve
    assert ab.curve_sources["exact-harmful-first"].data["y"][0] == pytest.approx(float(app.data.baseline_prob[5]),
                                                                                 abs=1e-5)
    assert all(len(src.data["y"]) == 25 for src in ab.curve_sources.values()) and ab.curve_text.text == ""
    styles = {o: (g.glyph.line_color, g.glyph.line_dash) for o in ab.curve_sources for g in ab.curve.renderers
              if g.data_source is ab.curve_sources[o]}  # same colour per criterion, dashed harmless-first
    assert styles["exact-harmful-first"][0] == styles["exact-harmless-first"][0] != styles["proxy-harmful-first"][0]
    assert styles["proxy-harmful-first"][1] == [] and styles["proxy-harmless-first"][1] == [6]  # solid, dashed
    labels = [item.label.value for item in ab.curve.legend[0].items]
    assert "exact, harmless first" in labels and "proxy, harmful first" in labels

    s.image, s.cls = None, int(app.data.label[0])  # a class: top-1 and the prunable counts under the curve
    want = Service(demo16).compute({"kind": "curve", "cls": s.cls})
    ab.ask_curve()
    wait_for(lambda: "heads prunable" in ab.curve_text.text)
    assert ab.curve_sources["random"].data["y"] == pytest.approx(want["curves"]["random"])
    n = want["prunable"]["exact-harmless-first"]
    assert f"exact harmful <b>{want['prunable']['exact-harmful-first']}</b>, harmless <b>{n}</b>" in ab.curve_text.text
    s.image = 5

    ab.ask_saliency()
    wait_for(lambda: ab.saliency_source.data["image"][0].shape[0] > 1 and ab.slots["saliency"].objects)
    assert [len(slot.objects) for slot in ab.slots.values()] == [1, 1, 1]  # each figure joined the page once
    assert not ab.progress.visible

    buf = io.BytesIO()
    Image.fromarray(app.data.thumbnail(5)).save(buf, format="PNG")
    ab.ask_new_image(buf.getvalue(), "mine.png")
    wait_for(lambda: len(ab.temp_image.data["x"]) == 1)
    assert len(ab.temp_head.data["x"]) == 1 and "mine.png" in ab.status.object

    ab.ask_new_image(b"garbage", "bad.png")
    wait_for(lambda: "cannot use bad.png as an image" in ab.status.object)


def test_heat_overlay_marks_where_occlusion_hurts():
    thumb = np.full((8, 8, 3), 128, np.uint8)
    drops = np.array([[0.2, 0.0], [0.0, -0.1]])
    out = heat_rgba(thumb, drops)
    assert out.shape == (8, 8, 3)
    assert out[0, 0, 0] > out[0, 0, 2] and out[7, 7, 2] > out[7, 7, 0]  # red where P[true] falls, blue where it rises
    assert (out[0, 7] == out[7, 0]).all()  # no change: the same grey


def test_a_store_without_a_loadable_model_says_so_in_the_panel(tmp_path):
    path = make_store(tmp_path / "s.zarr", images=6, layers=2, heads=2, grid=4, classes=3)
    ex = Explorer(path)
    ex.selection.image = 1  # one head: the store's own ablation, shown without the model
    assert ex.ablation.joint_source.data["top"][0] == pytest.approx(ex.data.stored_prune(1, Head(0, 0))["drop"])
    assert ex.ablation.status.object == ""
    ex.selection.group = [0, 3]  # two heads together: only the model can answer
    assert "unknown model spec" in ex.ablation.status.object
    assert "AblationView" not in ex.selection.message  # said once, in the panel, not as a view failure


def test_patching_the_panel_heads_from_another_image(app, demo16):
    """The panel's heads (the group) patched from a typed source into the selected image: the answer shows both
    labels' probabilities as the service computes them; a bad source is one line in the panel, nothing asked."""
    s, pp = app.selection, app.ablation.patching
    d = app.data
    target, source = 2, next(i for i in range(d.images) if d.valid[i] and int(d.label[i]) != int(d.label[2]))
    s.param.update(image=target, group=[1, 14], mode=1)
    assert pp.button.label == "patch 2 heads"
    want = Service(demo16).compute({"kind": "patch", "image": target, "source": source, "heads": ["0:1", "3:2"]})
    pp.source.value = source
    pp.ask()
    wait_for(lambda: f"from image {source}" in pp.answer.text)
    text = pp.answer.text
    names = d.class_names
    assert f"P[{names[want['label']]}] {want['baseline_prob']:.3f} → <b>{want['prob']:.3f}</b>" in text
    assert (f"P[{names[want['source_label']]}] {want['source_prob_before']:.3f} → <b>{want['source_prob']:.3f}</b> "
            f"(in image {source}: {want['source_baseline_prob']:.3f})") in text
    assert f"top-5: {names[want['topk_idx'][0]]} {want['topk_prob'][0]:.2f}" in text and "L0H1, L3H2" in text
    assert pp.asker.status.object == ""

    for bad, why in ((d.images + 3, "is not in this store"), (target, "is the selected image itself"),
                     (None, "Type the id")):
        pp.source.value = bad
        assert pp.ask() is None and why in pp.asker.status.object and "Traceback" not in pp.asker.status.object
    assert s.message == ""
    s.group = []
    pp.take_selected()  # the selected image becomes the source
    assert pp.source.value == target and pp.button.label == f"patch L{s.layer}H{s.head}"
