"""Activation patching of heads: the engine against timm's own forward with hooks (not the adapter), the service's
patch requests batched with prune requests, and `vitscope ablate --patch` as a user types it."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import vitscope_here
from conftest import images_for, small_vit

from vitscope.engine.prune import baseline, run_pruned
from vitscope.errors import VitscopeError
from vitscope.heads import Head
from vitscope.service import Service

HEADS = [Head(0, 1), Head(1, 3), Head(1, 0), Head(2, 2)]  # several heads over every layer of the small models


def hooked_probs(model: torch.nn.Module, target: torch.Tensor, source: torch.Tensor, heads: list[Head]
                 ) -> torch.Tensor:
    """P [C] of `target` [1,3,h,w] through timm's forward with each head's A·V replaced by its A·V on `source`'s
    clean forward. Forward pre-hooks on each attention's output norm, whose input is the heads' outputs concatenated
    (the output projection's input where the norm is an identity): captured on `source`, then overwritten."""
    blocks = model.blocks
    layers = sorted({h.layer for h in heads})
    captured: dict[int, torch.Tensor] = {}

    def capture(i):
        def hook(module, args):
            captured[i] = args[0].clone()
        return hook

    def replace(i):
        def hook(module, args):
            x, dh = args[0].clone(), blocks[i].attn.head_dim
            for h in (h.head for h in heads if h.layer == i):
                x[..., h * dh:(h + 1) * dh] = captured[i][..., h * dh:(h + 1) * dh]
            return (x,)
        return hook

    with torch.no_grad():
        for make, x in ((capture, source), (replace, target)):
            handles = [blocks[i].attn.norm.register_forward_pre_hook(make(i)) for i in layers]
            try:
                probs = model(x).float().softmax(-1)[0]
            finally:
                for handle in handles:
                    handle.remove()
    return probs


def two_labels(probs: torch.Tensor) -> tuple[int, int]:
    """Two rows whose predictions differ: P[label of I] and P[label of J] are then different numbers."""
    top = probs.argmax(-1).tolist()
    return next((i, j) for i in range(len(top)) for j in range(len(top)) if top[i] != top[j])


def test_patching_an_image_from_itself_changes_nothing():
    ad = small_vit()
    base = baseline(ad, images_for(ad))
    reqs = [(b, HEADS) for b in range(3)] + [(1, [Head(2, 0)])]
    for (b, _), r in zip(reqs, run_pruned(ad, base, reqs, sources=[b for b, _ in reqs]), strict=True):
        assert r.prob == pytest.approx(r.baseline_prob, abs=1e-5) and r.source_prob == pytest.approx(r.prob, abs=1e-6)
        assert r.top_idx == base.probs[b].topk(5).indices.tolist()
        torch.testing.assert_close(torch.tensor(r.top_prob), base.probs[b].topk(5).values.cpu(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "registers", "qknorm_scalenorm", "avgpool"])
def test_patching_matches_timm_forward_with_hooks(variant):
    ad = small_vit(variant)
    x = images_for(ad, n=6)
    base = baseline(ad, x)
    i, j = two_labels(base.probs)
    li, lj = int(base.labels[i]), int(base.labels[j])
    head_sets = [HEADS, [Head(0, 2)], [Head(2, 1), Head(2, 3)], [Head(1, 1), Head(1, 1)]]  # the last: listed twice
    reqs = [(i, hs) for hs in head_sets] + [(j, hs) for hs in head_sets]
    sources = [j] * len(head_sets) + [i] * len(head_sets)
    moved = 0.0
    for (b, hs), s, r in zip(reqs, sources, run_pruned(ad, base, reqs, sources=sources, max_batch=3), strict=True):
        want = hooked_probs(ad.model, x[b:b + 1], x[s:s + 1], hs)
        assert r.prob == pytest.approx(float(want[base.labels[b]]), abs=1e-5), (b, hs)
        assert r.source_prob == pytest.approx(float(want[base.labels[s]]), abs=1e-5), (b, hs)
        torch.testing.assert_close(torch.tensor(r.top_prob), want.topk(5).values, atol=1e-5, rtol=0)
        moved = max(moved, abs(r.prob - r.baseline_prob))
    assert li != lj and moved > 1e-3  # patching must matter here, or the comparison proves nothing


def test_patch_and_prune_requests_share_forwards_and_answers():
    """A patch request batched with prune requests gets what it gets alone, and they get what they get without it."""
    ad = small_vit()
    base = baseline(ad, images_for(ad))
    prunes = [(0, [Head(1, 2, 5)]), (2, [Head(0, 0), Head(2, 1, 3)])]
    patches = [(1, HEADS), (0, [Head(2, 3)])]
    together = run_pruned(ad, base, [prunes[0], patches[0], prunes[1], patches[1]], sources=[None, 2, None, 1])
    alone = run_pruned(ad, base, prunes) + run_pruned(ad, base, patches, sources=[2, 1])
    for got, want in zip([together[0], together[2], together[1], together[3]], alone, strict=True):
        assert got.prob == pytest.approx(want.prob, abs=1e-6) and got.top_idx == want.top_idx
        assert got.source_prob == want.source_prob or got.source_prob == pytest.approx(want.source_prob, abs=1e-6)
    assert together[0].source_prob is None and together[1].source_prob is not None


def test_a_head_patched_in_part_is_refused():
    ad = small_vit()
    base = baseline(ad, images_for(ad))
    with pytest.raises(VitscopeError, match=r"L1H2 \(mode 5\): patching replaces a head's whole output"):
        run_pruned(ad, base, [(0, [Head(1, 2, 5)])], sources=[1])
    with pytest.raises(VitscopeError, match="image rows must be in 0..2"):
        run_pruned(ad, base, [(0, [Head(1, 2)])], sources=[3])


@pytest.fixture(scope="module")
def svc(demo16) -> Service:
    return Service(demo16)


def labelled_pair(svc: Service) -> tuple[int, int]:
    """Two readable images of the store with different true labels."""
    return next((i, j) for i in range(svc.images) for j in range(svc.images)
                if svc.valid[i] and svc.valid[j] and svc.labels[i] != svc.labels[j])


def test_a_patch_request_against_timm_forward_with_hooks(svc):
    i, j = labelled_pair(svc)
    heads = ["0:1", "2:3", "2:0", "5:2"]
    r = svc.compute({"kind": "patch", "image": i, "source": j, "heads": heads})
    assert "error" not in r, r
    want = hooked_probs(svc.adapter.model, svc.input(i), svc.input(j), [Head(*map(int, h.split(":"))) for h in heads])
    li, lj = int(svc.labels[i]), int(svc.labels[j])
    assert (r["kind"], r["image"], r["source"], r["label"], r["source_label"]) == ("patch", i, j, li, lj)
    assert r["heads"] == ["L0H1", "L2H3", "L2H0", "L5H2"]
    assert r["prob"] == pytest.approx(float(want[li]), abs=1e-5)
    assert r["source_prob"] == pytest.approx(float(want[lj]), abs=1e-5)
    assert r["topk_idx"] == want.topk(5).indices.tolist()
    assert r["topk_prob"] == pytest.approx(want.topk(5).values.tolist(), abs=1e-5)
    assert r["baseline_prob"] == pytest.approx(float(svc.ds["baseline_prob"][i]), abs=1e-5)
    assert r["source_baseline_prob"] == pytest.approx(float(svc.ds["baseline_prob"][j]), abs=1e-5)
    unpatched = svc.adapter.logits(svc.input(i)).softmax(-1)[0, lj]
    assert r["source_prob_before"] == pytest.approx(float(unpatched), abs=1e-5)
    assert abs(r["prob"] - r["baseline_prob"]) > 1e-3  # the patch matters here: a wrong one would show


def test_patch_and_prune_requests_in_one_batch_answer_as_alone(svc):
    i, j = labelled_pair(svc)
    reqs = [{"kind": "prune", "image": i, "heads": ["1:2:5", "3:0"]},
            {"kind": "patch", "image": i, "source": j, "heads": ["1:2", "4:1"]},
            {"kind": "patch", "image": 5, "source": i, "heads": ["0:0"]},
            {"kind": "prune", "image": j, "heads": ["4:1"]}]
    together = svc.compute_batch(reqs)
    for r, got in zip(reqs, together, strict=True):
        want = svc.compute(r)
        assert got.keys() == want.keys() and "error" not in got, got
        for key, value in want.items():
            if key == "top5":  # [[class name, probability], …]
                assert [c for c, _ in got[key]] == [c for c, _ in value]
                value, got[key] = [p for _, p in value], [p for _, p in got[key]]
            assert got[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("request_, says", [
    ({"kind": "patch", "image": 0, "source": 1, "heads": ["1:2:5"]},
     "L1H2 given with a mode or region: patching replaces a head's whole output, so give 1:2 alone"),
    ({"kind": "patch", "image": 0, "heads": ["1:2"]}, "a patch request needs an integer 'source'"),
    ({"kind": "patch", "image": 0, "source": 99, "heads": ["1:2"]}, "image 99 out of range"),
    ({"kind": "patch", "image": 0, "source": 1, "heads": ["1:9"]}, "unknown head L1H9"),
    ({"kind": "patch", "image": 0, "source": 1, "heads": []}, "a patch request needs 'heads'"),
])
def test_bad_patch_requests_are_one_line_and_the_rest_is_answered(svc, request_, says):
    bad, good = svc.compute_batch([request_, {"kind": "patch", "image": 0, "source": 1, "heads": ["1:1"]}])
    assert bad["kind"] == "patch" and says in bad["error"] and "\n" not in bad["error"]
    assert "error" not in good


def test_patch_requests_ride_the_fast_lane_with_prune_requests(svc):
    from test_service import GatedBackend

    from vitscope.service import Dispatcher

    backend = GatedBackend(svc)
    d = Dispatcher(backend)
    try:
        busy = d.submit("z", {"kind": "prune", "image": 5, "heads": ["0:1"]})
        assert backend.entered.acquire(timeout=60)  # the fast lane's thread waits at the gate with it
        patch = d.submit("a", {"kind": "patch", "image": 0, "source": 1, "heads": ["2:1"]})
        pruned = d.submit("b", {"kind": "prune", "image": 2, "heads": ["2:1"]})
        backend.gate.set()
        assert "error" not in patch.result(60) and "error" not in pruned.result(60) and "error" not in busy.result(60)
        assert sorted(backend.calls) == [["patch", "prune"], ["prune"]]  # queued together, answered in one call
    finally:
        d.close()


def test_cli_patch_json_and_the_block_a_person_reads(demo16, svc):
    i, j = labelled_pair(svc)
    res = vitscope_here("ablate", demo16, "--image", i, "--patch", "0:1", "2:3", "--source", j, "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    want = svc.compute({"kind": "patch", "image": i, "source": j, "heads": ["0:1", "2:3"]})
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-6) for k in want), got
    res = vitscope_here("ablate", demo16, "--image", i, "--patch", "0:1", "2:3", "--source", j)
    assert res.returncode == 0, res.stderr
    li, lj = (svc.class_names[int(svc.labels[k])] for k in (i, j))
    top = ", ".join(f"{svc.class_names[c]} {p:.3f}" for c, p in zip(want["topk_idx"], want["topk_prob"], strict=True))
    assert res.stdout.splitlines() == [
        f"image {i} ({li}) with L0H1, L2H3 patched from image {j} ({lj})",
        f"  P[{li}] {want['baseline_prob']:.4f} → {want['prob']:.4f}  (image {i} → image {i} patched; "
        f"{want['prob'] - want['baseline_prob']:+.4f})",
        f"  P[{lj}] {want['source_prob_before']:.4f} → {want['source_prob']:.4f}  (image {i} → image {i} patched; "
        f"{want['source_baseline_prob']:.4f} in image {j} itself)",
        f"  top-5: {top}"]


@pytest.mark.parametrize("args, says", [
    (["--patch", "2:9", "--source", 1], "unknown head L2H9: this model has layers 0..5 and heads 0..3"),
    (["--patch", "2:1", "--source", 99], "--source: image 99 out of range: {store} has 16 images (0..15)"),
    (["--patch", "2:1"], "--patch L:H [L:H ...] needs --source J, the image whose head outputs are patched in"),
    (["--prune", "2:1", "--source", 1], "--source J is for --patch: add --patch L:H [L:H ...]"),
    (["--patch", "2:1:5", "--source", 1],
     "L2H1 given with a mode or region: patching replaces a head's whole output, so give 2:1 alone"),
])
def test_cli_patch_bad_input_is_one_line(demo16, args, says):
    res = vitscope_here("ablate", demo16, "--image", 0, *args)
    assert res.returncode == 2 and not res.stdout
    assert res.stderr == f"vitscope ablate: error: {says.format(store=demo16)}\n"
