"""Class-level trends (vitscope/classes.py) against a slow loop over images and heads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitscope.classes import class_report, match_class
from vitscope.errors import VitscopeError
from vitscope.vocab import METRICS, MODES

N, L, H, C, K = 40, 3, 4, 5, 5


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    label = rng.integers(0, C, N)
    valid = np.ones(N, bool)
    valid[[3, 17]] = False
    importance = rng.uniform(0, 1, (N, L, H, len(MODES), len(METRICS)))
    topk = rng.integers(0, C, (N, L, H, len(MODES), K))
    topk[:, :, :, 0] = topk[:, :1, :1, 0]  # the unpruned prediction is the same for every head
    topk[: N // 2, :, :, 1, 0] = topk[: N // 2, :, :, 0, 0]  # half the images keep their top-1 (flips vary)
    base = rng.uniform(0, 1, N)
    entropy = rng.uniform(0, 1, (N, L, H))
    for values in (importance, base, entropy):  # unreadable images hold NaN, as a build writes them
        values[~valid] = np.nan
    return dict(label=label, valid=valid, baseline_prob=base, importance=importance, topk_idx=topk,
                strength_entropy=entropy)


def slow_report(a, cls):
    mine = [i for i in range(N) if a["valid"][i] and a["label"][i] == cls]
    p, j = METRICS.index("prob"), METRICS.index("jsd")
    rows = []
    for layer in range(L):
        for head in range(H):
            drops = [float(a["baseline_prob"][i] - a["importance"][i, layer, head, 1, p]) for i in mine]
            mean = sum(drops) / len(drops)
            std = math.sqrt(sum((d - mean) ** 2 for d in drops) / len(drops))
            jsd = sum(float(a["importance"][i, layer, head, 1, j]) for i in mine) / len(mine)
            flips = sum(int(a["topk_idx"][i, layer, head, 1, 0] != a["topk_idx"][i, layer, head, 0, 0]) for i in mine)
            rows.append((layer, head, mean, std, jsd, flips))
    rows.sort(key=lambda r: -r[2])  # stable: ties keep head order
    correct = sum(int(a["topk_idx"][i, 0, 0, 0, 0] == a["label"][i]) for i in mine)
    everyone = [i for i in range(N) if a["valid"][i]]
    ent = [(sum(float(a["strength_entropy"][i, layer, h]) for i in mine for h in range(H)) / (len(mine) * H),
            sum(float(a["strength_entropy"][i, layer, h]) for i in everyone for h in range(H)) / (len(everyone) * H))
           for layer in range(L)]
    return len(mine), correct, rows, ent


@pytest.mark.parametrize("cls", range(C))
def test_class_report_matches_a_loop(arrays, cls):
    r = class_report(cls, **arrays, top=7)
    n, correct, rows, ent = slow_report(arrays, cls)
    assert (r.cls, r.images, r.correct) == (cls, n, correct) and r.accuracy == pytest.approx(correct / n)
    assert len(r.heads) == 7
    for got, want in zip(r.heads, rows[:7], strict=True):
        assert (got.layer, got.head, got.flips) == (want[0], want[1], want[5])
        np.testing.assert_allclose([got.drop_mean, got.drop_std, got.jsd_mean], want[2:5], rtol=1e-9, atol=1e-12)
        assert got.name == f"L{want[0]}H{want[1]}"
    assert [x.layer for x in r.layers] == list(range(L))
    np.testing.assert_allclose([(x.entropy_class, x.entropy_all) for x in r.layers], ent, rtol=1e-9)
    assert all(math.isfinite(x.drop_mean) for x in r.heads)  # unreadable images left out
    assert any(0 < x.flips < n for x in r.heads)


def test_all_heads_when_top_is_large(arrays):
    r = class_report(1, **arrays, top=100)
    assert sorted((x.layer, x.head) for x in r.heads) == [(i, h) for i in range(L) for h in range(H)]


NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "Tiger", "hammerhead"]


def test_match_class_exact_then_substring_any_case():
    present = [0, 1, 2, 3, 4, 5]
    assert match_class("Tiger", NAMES, present) == (4, [3, 4])  # exact beats the substring in "tiger shark"
    assert match_class("tiger", NAMES, present) == (4, [3, 4])  # exact in any case
    assert match_class("  SHARK ", NAMES, present) == (2, [2, 3])  # first containing it
    assert match_class("fish", NAMES, present) == (1, [1])
    assert match_class("shark", NAMES, [3, 5]) == (3, [3])  # only classes with images


def test_match_class_errors_are_one_line_with_close_names():
    with pytest.raises(VitscopeError, match=r"no class matches 'goldfsh'.*close: 'goldfish'") as e:
        match_class("goldfsh", NAMES, list(range(6)))
    assert "\n" not in str(e.value)
    with pytest.raises(VitscopeError, match=r"no class matches 'zebra' among the store's 6 classes$"):
        match_class("zebra", NAMES, list(range(6)))
    with pytest.raises(VitscopeError, match="'tench' has no readable image"):
        match_class("tench", NAMES, [1, 2])
    with pytest.raises(VitscopeError, match=r"no image of a class matching 'gold' in this store \('goldfish' have"):
        match_class("gold", NAMES, [0, 2])  # the name is right, the store has no image of it
    with pytest.raises(VitscopeError, match="give a class name"):
        match_class(" ", NAMES, list(range(6)))
