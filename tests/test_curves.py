"""Pruning curves: the orders named by direction against a plain sort of the store's arrays, the curves
against explicit forwards with the heads' masks applied one by one, the prunable count against a brute-force count
over every step, the old names as aliases, and bad names as one line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import images_for, small_vit

from vitscope.cli.ablate import readable
from vitscope.engine import prune
from vitscope.engine.prune import zero_masks
from vitscope.engine.reference import pruned
from vitscope.errors import VitscopeError
from vitscope.heads import Head
from vitscope.service import Service
from vitscope.service.curves import order_heads, prunable_count
from vitscope.service.requests import NO_BASIS_WHY
from vitscope.vocab import CURVE_ALIASES, CURVE_ORDERS, METRICS, WHOLE_HEAD, curve_order


@pytest.fixture(scope="module")
def svc(demo16):
    return Service(demo16)


def reference_order(svc: Service, order: str, scope: list[int]) -> list[str]:
    """The order as a plain Python sort of the store's per-head means (ties: head order)."""
    L, H = svc.adapter.num_layers, svc.adapter.num_heads
    if order.startswith("exact"):
        arr = svc.ds["importance"].values[scope][:, :, :, WHOLE_HEAD, METRICS.index("prob")]
    else:
        arr = svc.ds["grad_importance"].values[scope]
    mean = [sum(float(arr[i].reshape(-1)[j]) for i in range(len(scope))) / len(scope) for j in range(L * H)]
    # exact: a high P'[true] when pruned alone is harmless; proxy: a small gradient is harmless
    harmless = [-m for m in mean] if order.startswith("exact") else mean
    key = (lambda j: (-harmless[j], j)) if order.endswith("harmful-first") else (lambda j: (harmless[j], j))
    return [f"L{j // H}H{j % H}" for j in sorted(range(L * H), key=key)]


def explicit_top1(svc: Service, scope: list[int], heads: list[str]) -> np.ndarray:
    """Top-1 correct of each image through timm's own forward with the heads' attention zeroed."""
    hs = [Head(int(h[1:].split("H")[0]), int(h.split("H")[1])) for h in heads]
    with torch.no_grad(), pruned(svc.adapter, zero_masks(svc.adapter, hs)):
        p = svc.adapter.model(svc.inputs(scope)).float()
    return (p.argmax(-1).numpy() == svc.labels[scope]).astype(int)


def brute_force_prunable(counts: list[int], m: int, tol: float) -> int:
    """Heads pruned before top-1 (m images, counts at every step 0..N) falls more than tol below step 0's."""
    for n in range(1, len(counts)):
        if counts[0] - counts[n] > tol * m + 1e-9:
            return n - 1
    return len(counts) - 1


def test_orders_are_the_store_sorted_in_their_direction(svc):
    cls = int(svc.labels[0])
    for scope, request in ((list(range(16)), {}), (np.flatnonzero(svc.labels == cls).tolist(), {"cls": cls})):
        r = svc.compute({"kind": "curve", "orders": list(CURVE_ORDERS), "steps": [0], **request})
        assert "error" not in r, r
        assert list(r["orders"]) == list(CURVE_ORDERS)
        for o in CURVE_ORDERS[:4]:
            assert r["orders"][o] == reference_order(svc, o, scope), o
        assert sorted(r["orders"]["random"]) == sorted(r["orders"][CURVE_ORDERS[0]])
    # the two directions are not each other's reverse where heads tie: both keep head order among the tied
    tied = copy.copy(svc)
    imp = svc.ds["importance"].values.copy()
    imp[..., WHOLE_HEAD, METRICS.index("prob")] = np.arange(6)[None, :, None] * 0.1  # one value per layer
    tied.ds = svc.ds.assign(importance=(svc.ds["importance"].dims, imp))
    harmful = order_heads(tied, "exact-harmful-first", list(range(16)), 0)
    harmless = order_heads(tied, "exact-harmless-first", list(range(16)), 0)
    assert harmful == [(layer, h) for layer in range(6) for h in range(4)]
    assert harmless == [(layer, h) for layer in reversed(range(6)) for h in range(4)]


def test_curves_and_prunable_counts_match_explicit_forwards(svc):
    scope = list(range(16))
    n_heads = 24
    r = svc.compute({"kind": "curve", "orders": list(CURVE_ORDERS)})
    assert r["steps"] == list(range(25)) and r["y"] == "top1" and r["images"] == 16
    counts = {}
    for o in CURVE_ORDERS:
        counts[o] = [int(explicit_top1(svc, scope, r["orders"][o][:n]).sum()) for n in range(n_heads + 1)]
        np.testing.assert_allclose(r["curves"][o], np.array(counts[o]) / 16, atol=1e-12, err_msg=o)
        assert r["prunable"][o] == brute_force_prunable(counts[o], 16, 0.01), o
    assert r["baseline"] == pytest.approx(counts[CURVE_ORDERS[0]][0] / 16) and r["tol"] == 0.01
    # coarse steps (and none at 0): the count is still computed from every step up to the first drop
    seen = []
    for tol in (0.0, 0.07, 0.2, 0.99):
        coarse = svc.compute({"kind": "curve", "orders": list(CURVE_ORDERS), "steps": [5, 24], "tol": tol},
                             progress=lambda d, t: seen.append((d, t)))
        assert coarse["steps"] == [5, 24]
        for o in CURVE_ORDERS:
            assert coarse["curves"][o] == pytest.approx([counts[o][5] / 16, counts[o][24] / 16]), o
            assert coarse["prunable"][o] == brute_force_prunable(counts[o], 16, tol), (o, tol)
    assert all(d <= t for d, t in seen) and seen[-1][0] == seen[-1][1]
    assert len({c for tol in (0.0, 0.2, 0.99) for c in
                [brute_force_prunable(counts[o], 16, tol) for o in CURVE_ORDERS]}) > 2  # the counts are not trivial
    text = readable(r)
    assert "heads prunable before top-1" in text and all(f"  {o}" in text for o in CURVE_ORDERS)


def test_an_image_curve_is_p_true_under_explicit_forwards(svc):
    r = svc.compute({"kind": "curve", "image": 3, "orders": ["proxy-harmless-first"], "steps": [0, 1, 7, 24]})
    assert r["y"] == "prob" and "prunable" not in r
    label = int(svc.labels[3])
    order = r["orders"]["proxy-harmless-first"]
    for n, got in zip(r["steps"], r["curves"]["proxy-harmless-first"], strict=True):
        hs = [Head(int(h[1:].split("H")[0]), int(h.split("H")[1])) for h in order[:n]]
        with torch.no_grad(), pruned(svc.adapter, zero_masks(svc.adapter, hs)):
            p = svc.adapter.model(svc.input(3)).float().softmax(-1)[0, label]
        assert got == pytest.approx(float(p), abs=1e-5)


def test_prefixes_share_head_sets_and_match_explicit_forwards():
    ad = small_vit(seed=3)  # 3 layers × 4 heads
    x = images_for(ad, 4, seed=2)
    base = prune.baseline(ad, x)
    heads = [(i, h) for i in range(3) for h in range(4)]
    a, b = heads, heads[:2] + heads[2:][::-1]  # a shared prefix of 2 heads
    totals = []
    res = prune.prefixes(ad, base, [a, b], [[0, 1, 2, 5, 12], [2, 12, 7]], lambda d, t: totals.append(t))
    assert totals[-1] == 4 * (5 + 1)  # b's steps 2 and 12 are a's, per image
    for order, ns, (prob, correct) in zip([a, b], [[0, 1, 2, 5, 12], [2, 12, 7]], res, strict=True):
        for s, n in enumerate(ns):
            with torch.no_grad(), pruned(ad, zero_masks(ad, [Head(*h) for h in order[:n]])):
                p = ad.model(x).float().softmax(-1)
            np.testing.assert_allclose(prob[:, s], p.gather(-1, base.labels[:, None])[:, 0], atol=1e-5)
            assert (correct[:, s] == (p.argmax(-1) == base.labels)).all()


def test_old_names_are_aliases_of_harmful_first(svc):
    assert CURVE_ALIASES == {"exact": "exact-harmful-first", "proxy": "proxy-harmful-first"}
    old = svc.compute({"kind": "curve", "cls": int(svc.labels[0]), "orders": ["exact", "proxy", "exact-harmful-first"],
                       "steps": [0, 3, 24]})
    new = svc.compute({"kind": "curve", "cls": int(svc.labels[0]), "orders": ["exact-harmful-first",
                                                                             "proxy-harmful-first"],
                       "steps": [0, 3, 24]})
    assert list(old["curves"]) == ["exact-harmful-first", "proxy-harmful-first"]
    assert old["curves"] == new["curves"] and old["orders"] == new["orders"] and old["prunable"] == new["prunable"]
    assert svc.compute({"kind": "curve", "image": 2, "orders": ["proxy"]})["orders"]["proxy-harmful-first"]


@pytest.mark.parametrize("orders", [["best"], ["exact", "harmless-first"], ["exact-harmless"], [None]])
def test_bad_order_names_are_one_line_listing_the_valid_ones(svc, orders):
    r = svc.compute({"kind": "curve", "orders": orders})
    assert r["kind"] == "curve" and "\n" not in r["error"]
    bad = [o for o in orders if o not in CURVE_ORDERS and o not in CURVE_ALIASES][0]
    assert r["error"].startswith(f"unknown pruning order {bad!r}: choose from ")
    assert all(o in r["error"] for o in (*CURVE_ORDERS, *CURVE_ALIASES))
    with pytest.raises(VitscopeError, match="unknown pruning order"):
        curve_order(bad)
    assert "error" not in svc.compute({"kind": "curve", "image": 0, "steps": [0]})  # the service goes on


def test_other_bad_curve_requests(svc):
    assert "at least one order" in svc.compute({"kind": "curve", "orders": []})["error"]
    assert "tolerance" in svc.compute({"kind": "curve", "orders": ["random"], "tol": 1.5})["error"]
    headless = copy.copy(svc)
    headless.prob_basis = "none"  # a backbone store without labels: no order has a curve
    for o in CURVE_ORDERS:
        assert headless.compute({"kind": "curve", "orders": [o]})["error"] == NO_BASIS_WHY
        with pytest.raises(VitscopeError, match="prob basis: none"):
            headless.curve(orders=[o])


def test_prunable_count_reads_every_step_up_to_the_first_drop():
    assert prunable_count({0: 10, 1: 10, 2: 9, 3: 10}, 10, 0.05, 3) == (1, None)
    assert prunable_count({0: 10, 1: 9, 2: 10, 3: 10}, 10, 0.1, 3) == (3, None)  # losing exactly tol stays within
    assert prunable_count({0: 10, 2: 0}, 10, 0.01, 3) == (None, 1)  # step 1 unknown: not decided by step 2
    assert prunable_count({1: 3}, 10, 0.01, 3) == (None, 0)
    assert prunable_count({0: 5, 1: 6, 2: 5}, 10, 0.0, 2) == (2, None)  # better than unpruned counts as within
