"""The proxy's agreement with exact pruning, against slow obviously-correct references: a Python loop with
scipy.stats.spearmanr, and ΔCE from one naive timm forward per pruned head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import images_for, small_vit

from vitscope import engine
from vitscope.analysis.proxy import (
    agreement,
    average_ranks,
    delta_ce,
    exact_delta_ce,
    spearman,
    summary_lines,
)
from vitscope.engine.reference import ablated
from vitscope.vocab import METRICS, MODES


def slow_spearman(a, b) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or len(set(a[ok])) < 2 or len(set(b[ok])) < 2:
        return math.nan
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


def same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-9


def test_average_ranks_are_scipys_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (6, 11)).astype(float)
    np.testing.assert_array_equal(average_ranks(x), scipy.stats.rankdata(x, axis=1))
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_spearman_is_scipys_along_any_axis_with_ties_and_nans(axis):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, (9, 12)).astype(float)  # many ties
    b = rng.normal(size=(9, 12)) + 0.3 * a
    a[3, :] = np.nan  # an unreadable image: its whole row
    b[:, 4] = np.nan
    a[5, 7] = np.nan  # a lone missing value drops that pair only
    a[6, :] = 2.0  # constant
    got = spearman(a, b, axis=axis)
    a2, b2 = (np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1))
    want = [slow_spearman(a2[i], b2[i]) for i in range(a2.shape[0])]
    assert got.shape == (len(want),)
    assert all(same(float(g), w) for g, w in zip(got, want, strict=True)), (got, want)
    with np.errstate(all="raise"):  # no warning for NaN or constant rows
        spearman(a, b, axis=axis)


def test_agreement_figures_match_a_loop():
    rng = np.random.default_rng(2)
    N, L, H = 14, 3, 4
    exact = rng.exponential(size=(N, L, H))
    proxy = exact * rng.lognormal(sigma=1.0, size=(N, L, H))
    proxy[2] = np.nan  # unreadable
    exact[5] = np.nan
    scope = np.ones(N, bool)
    scope[[0, 9]] = False
    a = agreement(proxy, exact, scope)
    kept = [i for i in range(N) if scope[i] and i not in (2, 5)]
    assert a.images == len(kept)
    for i in range(N):
        want = slow_spearman(proxy[i], exact[i]) if i in kept else math.nan
        assert same(float(a.per_image[i]), want), i
    assert same(a.median, float(np.median([slow_spearman(proxy[i], exact[i]) for i in kept])))
    means_p = [sum(proxy[i, j, h] for i in kept) / len(kept) for j in range(L) for h in range(H)]
    means_e = [sum(exact[i, j, h] for i in kept) / len(kept) for j in range(L) for h in range(H)]
    assert same(a.of_means, slow_spearman(means_p, means_e))
    for layer in range(L):
        p = [proxy[i, layer, h] for i in kept for h in range(H)]
        e = [exact[i, layer, h] for i in kept for h in range(H)]
        assert same(float(a.per_layer[layer]), slow_spearman(p, e)), layer
    one = agreement(proxy, exact, np.arange(N) == 7)  # one image: its layers over its own heads
    assert one.images == 1 and same(one.median, slow_spearman(proxy[7], exact[7]))
    for layer in range(L):
        assert same(float(one.per_layer[layer]), slow_spearman(proxy[7, layer], exact[7, layer]))
    none = agreement(proxy, exact, np.zeros(N, bool))
    assert none.images == 0 and math.isnan(none.median) and math.isnan(none.of_means)


def test_delta_ce_clips_an_underflowed_probability():
    assert delta_ce(0.5, 0.25) == pytest.approx(math.log(2))
    assert delta_ce(0.25, 0.5) == pytest.approx(-math.log(2))
    assert np.isfinite(delta_ce(0.9, 0.0)) and delta_ce(0.9, 0.0) > 80


def test_exact_delta_ce_is_a_naive_forward_with_the_head_pruned():
    ad = small_vit("vit", seed=3)
    x = images_for(ad, n=3, seed=4)
    labels = torch.tensor([1, 5, 7])
    r = engine.run(ad, x, labels, grad=True)
    assert r.modes == MODES
    importance = r.importance.numpy()
    base = r.probs[torch.arange(3), labels].numpy()
    got_abs, got = exact_delta_ce(importance, base), exact_delta_ce(importance, base, signed=True)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(ad.model(x).float(), labels, reduction="none")
        for layer in range(ad.num_layers):
            for head in range(ad.num_heads):
                with ablated(ad, layer, head, 1):
                    pruned = torch.nn.functional.cross_entropy(ad.model(x).float(), labels, reduction="none")
                want = (pruned - ce).numpy()  # ΔCE = CE' − CE = log P − log P'
                np.testing.assert_allclose(got[:, layer, head], want, rtol=1e-3, atol=1e-5)
                np.testing.assert_allclose(got_abs[:, layer, head], np.abs(want), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(np.abs(got), got_abs)
    proxy = r.grad_importance.numpy()
    a = agreement(proxy, got_abs)
    for i in range(3):
        assert same(float(a.per_image[i]), slow_spearman(proxy[i], got_abs[i]))


def test_summary_lines_name_both_targets_and_skip_unreadable_images():
    rng = np.random.default_rng(5)
    N, L, H = 8, 2, 3
    importance = rng.uniform(0.05, 0.95, (N, L, H, len(MODES), len(METRICS)))
    base = rng.uniform(0.05, 0.95, N)
    grad = rng.exponential(size=(N, L, H))
    valid = np.ones(N, bool)
    valid[3] = False
    importance[3], base[3], grad[3] = np.nan, np.nan, np.nan
    lines = summary_lines(importance, base, grad, valid)
    assert len(lines) == 3 and "over 7 images" in lines[0]
    assert lines[1].startswith("vs |ΔCE|") and lines[2].startswith("vs ΔCE ")
    for line, signed in ((lines[1], False), (lines[2], True)):
        a = agreement(grad, exact_delta_ce(importance, base, signed=signed), valid)
        assert f"median per image {a.median:+.2f}" in line and f"dataset means {a.of_means:+.2f}" in line
        assert line.endswith(" ".join(f"{r:+.2f}" for r in a.per_layer))
    assert summary_lines(importance, base, grad, np.zeros(N, bool)) == [
        "no readable image with both the proxy and exact pruning"]
