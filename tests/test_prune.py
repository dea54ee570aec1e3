"""Heads pruned together, pairs, progressive pruning and patch saliency against one timm forward per request."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import images_for, small_vit

from vitscope import engine
from vitscope.engine.metrics import cosine_distance, jsd
from vitscope.engine.prune import (
    HeadPrune,
    Region,
    baseline,
    pair_interactions,
    parse_prune,
    patch_saliency,
    prefixes,
    run_pruned,
    zero_masks,
)
from vitscope.engine.reference import pruned
from vitscope.errors import VitscopeError
from vitscope.heads import Head

LABELS = torch.tensor([1, 2, 3])


def random_requests(ad, count: int, seed: int = 0) -> list[tuple[int, list[HeadPrune]]]:
    """Requests of 1–5 heads over several layers, in random modes or random custom regions."""
    rng = random.Random(seed)
    g = ad.grid
    out = []
    for _ in range(count):
        heads = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.3:
                r0, c0 = rng.randrange(g), rng.randrange(g)
                mode = Region(source=(r0, c0, rng.randint(r0 + 1, g), rng.randint(c0 + 1, g)),
                              target=None if rng.random() < 0.5 else (0, 0, g, rng.randint(1, g)),
                              cls_rows=rng.random() < 0.5, cls_cols=rng.random() < 0.5)
            else:
                mode = rng.randint(1, 5)
            heads.append(HeadPrune(rng.randrange(ad.num_layers), rng.randrange(ad.num_heads), mode))
        out.append((rng.randrange(3), heads))
    out.append((0, [HeadPrune(1, 2, 1)]))  # one head alone: its distances are defined
    out.append((1, [HeadPrune(2, 0, 5), HeadPrune(2, 3, Region(cls_cols=True))]))  # two heads of one layer
    return out


def reference(ad, x, labels, heads):
    """P′ and, when every head is in one layer, that layer's z and z′ — through timm's own forward."""
    zero = zero_masks(ad, heads)
    with torch.no_grad():
        p = ad.model(x).float().softmax(-1)
        with pruned(ad, {i: torch.zeros_like(m) for i, m in zero.items()}) as cap0:
            ad.model(x)
        with pruned(ad, zero) as cap:
            p_new = ad.model(x).float().softmax(-1)
    z = (cap0[next(iter(zero))][0], cap[next(iter(zero))][0]) if len(zero) == 1 else None
    return p, p_new, z


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_heads_pruned_together_match_timm_forward(variant, fused):
    ad = small_vit(variant, fused=fused)
    x = images_for(ad)
    base = baseline(ad, x, LABELS)
    reqs = random_requests(ad, 12)
    got = run_pruned(ad, base, reqs, max_batch=5)  # chunks that mix start layers
    n = ad.num_prefix
    moved = 0.0
    for (b, heads), r in zip(reqs, got, strict=True):
        p, p_new, z = reference(ad, x[b:b + 1], LABELS[b:b + 1], heads)
        assert r.baseline_prob == pytest.approx(float(p[0, LABELS[b]]), abs=1e-5)
        assert r.prob == pytest.approx(float(p_new[0, LABELS[b]]), abs=1e-5)
        assert r.jsd == pytest.approx(float(jsd(p, p_new)[0]), abs=1e-5)
        torch.testing.assert_close(torch.tensor(r.top_prob), p_new[0].topk(5).values, atol=1e-5, rtol=0)
        if z is None:
            assert r.cls_dist != r.cls_dist and r.patch_dist != r.patch_dist  # NaN: not defined
        else:
            assert r.cls_dist == pytest.approx(float(cosine_distance(z[0][0, 0], z[1][0, 0])), abs=1e-5)
            assert r.patch_dist == pytest.approx(float(cosine_distance(z[0][0, n:], z[1][0, n:]).mean()), abs=1e-5)
        moved = max(moved, abs(r.prob - r.baseline_prob))
    assert moved > 1e-2  # the pruning must matter, or the comparison proves nothing


def test_one_head_equals_the_leave_one_out_engine():
    ad = small_vit()
    x = images_for(ad)
    base = baseline(ad, x, LABELS)
    full = engine.run(ad, x, LABELS)
    reqs = [(b, [HeadPrune(i, h, m)]) for b in range(3) for i in range(ad.num_layers) for h in range(ad.num_heads)
            for m in (1, 3, 5)]
    for (b, [hp]), r in zip(reqs, run_pruned(ad, base, reqs), strict=True):
        want = full.importance[b, hp.layer, hp.head, full.modes.index(hp.mode)]
        torch.testing.assert_close(torch.tensor([r.prob, r.jsd, r.cls_dist, r.patch_dist]), want, atol=1e-5, rtol=0)


def test_no_heads_is_the_unpruned_model():
    ad = small_vit()
    base = baseline(ad, images_for(ad), LABELS)
    [r] = run_pruned(ad, base, [(2, [])])
    assert r.prob == r.baseline_prob and r.jsd == 0 and r.cls_dist == 0


def test_pairs_and_progressive_are_the_joint_prunings():
    ad = small_vit()
    x = images_for(ad)
    base = baseline(ad, x, LABELS)
    heads = [(0, 1), (1, 3), (2, 0), (2, 2)]
    single, pair = pair_interactions(ad, base, 1, [Head(*h) for h in heads])
    assert torch.equal(pair, pair.T) and torch.equal(pair.diagonal(), single)
    for i, j in [(0, 1), (1, 3), (2, 3)]:
        _, p_new, _ = reference(ad, x[1:2], LABELS[1:2], [HeadPrune(*heads[i]), HeadPrune(*heads[j])])
        assert float(pair[i, j]) == pytest.approx(float(base.probs[1, 2] - p_new[0, 2]), abs=1e-5)
    interaction = pair - single[:, None] - single[None, :]
    assert interaction.abs().max() > 1e-3  # heads do interact in this model: the test can see it

    order = [(2, 1), (0, 0), (1, 1), (1, 2), (0, 3)]
    [(prob, correct)] = prefixes(ad, base, [order], [[0, 2, 5]])
    assert torch.allclose(prob[:, 0], base.probs.gather(1, LABELS[:, None])[:, 0], atol=1e-6)
    for b in range(3):
        _, p_new, _ = reference(ad, x[b:b + 1], LABELS[b:b + 1], [HeadPrune(*h) for h in order])
        assert float(prob[b, 2]) == pytest.approx(float(p_new[0, LABELS[b]]), abs=1e-5)
        assert bool(correct[b, 2]) == (int(p_new[0].argmax()) == int(LABELS[b]))


@pytest.mark.parametrize("block", [1, 2])
def test_patch_saliency_is_occlusion_one_square_at_a_time(block):
    ad = small_vit()
    x = images_for(ad, 1)
    sal = patch_saliency(ad, x[0], 4, block=block, max_batch=3)
    g, ps = ad.grid, ad.model.patch_embed.patch_size[0]
    assert sal.shape == (g // block, g // block)
    with torch.no_grad():
        p0 = ad.model(x).softmax(-1)[0, 4]
        for r in range(g // block):
            for c in range(g // block):
                y = x.clone()
                y[..., r * ps * block:(r + 1) * ps * block, c * ps * block:(c + 1) * ps * block] = 0
                assert float(sal[r, c]) == pytest.approx(float(p0 - ad.model(y).softmax(-1)[0, 4]), abs=1e-5)
    assert sal.abs().max() > 1e-3


def hand_mask(text: str) -> torch.Tensor:
    """Rows of '.' and 'x' (zeroed) → bool [P,P]; row = source (query) token, column = target (key) token."""
    return torch.tensor([[c == "x" for c in row.strip()] for row in text.strip().splitlines()])


# On a 3 × 3 patch grid with CLS, token 0 is CLS and token 1 + 3·row + col the patch (row, col). Each region's
# zeroed entries of A written out by hand (rectangles (row0, col0, row1, col1), half-open), not by the engine.
HAND_REGIONS = {
    # source: patches (0, 1), (0, 2) = tokens 2, 3; target: patches (1, 0), (2, 0) = tokens 4, 7
    "block": (Region(source=(0, 1, 1, 3), target=(1, 0, 3, 1)), """
        ..........
        ..........
        ....x..x..
        ....x..x..
        ..........
        ..........
        ..........
        ..........
        ..........
        .........."""),
    # source: patch (1, 2) = token 6; target: patches (0, 0), (0, 1), (1, 0), (1, 1) = tokens 1, 2, 4, 5
    "one source": (Region(source=(1, 2, 2, 3), target=(0, 0, 2, 2)), """
        ..........
        ..........
        ..........
        ..........
        ..........
        ..........
        .xx.xx....
        ..........
        ..........
        .........."""),
    # source: row 2 = tokens 7, 8, 9, to every patch; and what every token takes from CLS (column 0)
    "source row, CLS columns": (Region(source=(2, 0, 3, 3), cls_cols=True), """
        x.........
        x.........
        x.........
        x.........
        x.........
        x.........
        x.........
        xxxxxxxxxx
        xxxxxxxxxx
        xxxxxxxxxx"""),
    # target: column 2 = tokens 3, 6, 9, from every patch; and everything CLS takes in (row 0)
    "target column, CLS rows": (Region(target=(0, 2, 3, 3), cls_rows=True), """
        xxxxxxxxxx
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x
        ...x..x..x"""),
}


def test_regions_zero_the_entries_written_out_by_hand():
    ad = small_vit(img_size=24)  # 3 × 3 patches and CLS: 10 tokens
    assert (ad.grid, ad.num_tokens) == (3, 10)
    for name, (region, text) in HAND_REGIONS.items():
        want = torch.zeros(ad.num_heads, 10, 10, dtype=torch.bool)
        want[2] = hand_mask(text)
        got = zero_masks(ad, [HeadPrune(1, 2, region)])
        assert list(got) == [1] and torch.equal(got[1], want), name


def test_regions_prune_as_a_forward_with_the_hand_written_masks():
    ad = small_vit(img_size=24)
    x = images_for(ad)
    base = baseline(ad, x, LABELS)
    masks = {name: hand_mask(text) for name, (_, text) in HAND_REGIONS.items()}
    regions = {name: region for name, (region, _) in HAND_REGIONS.items()}
    # (image, heads as (layer, head, region name)): alone, across layers, two heads of a layer, one head twice;
    # patch-only regions in layers 0-1 (the last layer's patch rows never reach the class token)
    cases = [(1, [(1, 2, "block")]), (1, [(0, 1, "source row, CLS columns"), (2, 3, "target column, CLS rows")]),
             (2, [(0, 0, "one source"), (0, 3, "block")]), (0, [(0, 1, "block"), (0, 1, "one source")]),
             (1, [(0, 0, "target column, CLS rows")])]
    got = run_pruned(ad, base, [(b, [HeadPrune(i, h, regions[r]) for i, h, r in heads]) for b, heads in cases])
    for (b, heads), r in zip(cases, got, strict=True):
        def forward(transpose: bool, b=b, heads=heads) -> torch.Tensor:
            zero = {i: torch.zeros(ad.num_heads, 10, 10, dtype=torch.bool) for i, _, _ in heads}
            for i, h, name in heads:
                zero[i][h] |= masks[name].T if transpose else masks[name]
            with torch.no_grad(), pruned(ad, zero):
                return ad.model(x[b:b + 1]).float().softmax(-1)[0]

        p_new = forward(False)
        assert (p_new - base.probs[b]).abs().max() > 1e-3, heads  # the pruning matters
        assert r.prob == pytest.approx(float(p_new[LABELS[b]]), abs=1e-5), heads
        torch.testing.assert_close(torch.tensor(r.top_prob), p_new.topk(5).values, atol=1e-5, rtol=0)
        # a region read with rows and columns swapped gives another answer here: the comparison can tell them apart
        assert (forward(True) - p_new).abs().max() > 1e-3, heads


@pytest.mark.parametrize("bad, says", [
    (lambda ad: [HeadPrune(9, 0)], "unknown head L9H0"),
    (lambda ad: [HeadPrune(0, 4)], "heads 0..3"),
    (lambda ad: [HeadPrune(0, 0, 7)], "mode 7 out of range"),
    (lambda ad: [HeadPrune(0, 0, Region())], "empty region"),
    (lambda ad: [HeadPrune(0, 0, Region(source=(2, 2, 2, 3)))], "source rectangle"),
    (lambda ad: [HeadPrune(0, 0, Region(target=(0, 0, 9, 1)))], "outside the 4×4 patch grid"),
])
def test_bad_requests_are_one_line(bad, says):
    ad = small_vit()
    with pytest.raises(VitscopeError, match=says) as e:
        zero_masks(ad, bad(ad))
    assert "\n" not in str(e.value)


def test_parse_prune():
    assert parse_prune("3:1") == HeadPrune(3, 1, 1)
    assert parse_prune(" 10:2:5 ") == HeadPrune(10, 2, 5)
    for text in ("3", "3:1:", "a:b", "3:1:2:4", "-1:0"):
        with pytest.raises(VitscopeError, match="LAYER:HEAD"):
            parse_prune(text)
