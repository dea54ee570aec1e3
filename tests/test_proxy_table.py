"""The proxy table against direct computations: Spearman ρ from argsort ranks (the test's data has no ties), medians
and quartiles from numpy, on planted data where the gradient proxy is fooled by one head and the others are not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitscope.analysis.proxy import (
    Agreement,
    ProxyAgreement,
    best_proxy,
    cls_patch_mass,
    proxy_table,
    table_lines,
)
from vitscope.vocab import PROXIES, PROXY_LABELS

N, L, H, GRID = 12, 3, 4, 2
PLANTED = (0, 1)  # the head with a huge gradient whose pruning changes nothing


def rho(a, b) -> float:
    """Spearman ρ of tie-free data: 1 − 6Σd² / (n(n² − 1)) on argsort ranks."""
    ra, rb = np.argsort(np.argsort(np.ravel(a))), np.argsort(np.argsort(np.ravel(b)))
    n = len(ra)
    return 1 - 6 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


def test_rho_is_spearmans_on_a_hand_computed_case():
    # ranks 1 2 3 4 against 1 3 2 4: Σd² = 2, ρ = 1 − 12/60 = 0.8
    assert rho([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def planted(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0, 1, (L, H))  # heads differ on average, so the means have an order to find
    total = rng.normal(0.5, 1, (N, L, H)) * scale
    total[:, PLANTED[0], PLANTED[1]] = 0.0
    noisy = lambda: np.abs(total) * rng.lognormal(0, 0.2, (N, L, H))  # noqa: E731 - tracks |total| closely
    grad = noisy()
    grad[:, PLANTED[0], PLANTED[1]] = 100.0
    mass = noisy()
    cls = np.zeros((N, L, H, 2 * GRID**2 + 1))
    cls[..., 1:1 + GRID**2] = mass[..., None] / GRID**2  # the CLS→patches part sums to `mass`
    cls[..., 0] = rng.uniform(0, 50, (N, L, H))  # CLS→CLS and patches→CLS: large noise that must not count
    cls[..., 1 + GRID**2:] = rng.uniform(0, 50, (N, L, H, GRID**2))
    return {"total_effect": total.astype(np.float32), "grad_importance": grad.astype(np.float32),
            "direct_effect": (total + rng.normal(0, 0.05, (N, L, H)) * scale).astype(np.float32),
            "output_norm": noisy().astype(np.float32), "cls_attention": cls.astype(np.float16),
            "rollout_impact": noisy().astype(np.float32), "label": rng.integers(0, 3, N)}


def test_cls_patch_mass_sums_only_the_class_tokens_attention_on_the_patches():
    cls = np.array([[9.0, 1, 2, 3, 4, 7, 7, 7, 7]], np.float16)
    assert cls_patch_mass(cls).tolist() == [10.0]


def test_the_gradient_fooled_by_a_head_that_does_nothing_ranks_below_the_others():
    arrays = planted()
    table = proxy_table(arrays, np.ones(N, bool))
    assert list(table) == list(PROXIES)
    others = [table[p].magnitude.median for p in PROXIES if p != "gradient"]
    assert table["gradient"].magnitude.median < min(others) - 0.2
    assert best_proxy(table) != "gradient"
    without = dict(arrays, grad_importance=arrays["grad_importance"].copy())  # unplanted: the gradient is as good
    without["grad_importance"][:, PLANTED[0], PLANTED[1]] = 0.0
    assert proxy_table(without, np.ones(N, bool))["gradient"].magnitude.median > min(others) - 0.05


def test_per_image_median_iqr_and_of_means_match_direct_computation():
    arrays = planted(1)
    valid = np.ones(N, bool)
    valid[3] = False  # an unreadable image: left out whatever its arrays hold
    arrays["rollout_impact"][6] = np.nan  # one proxy missing for one image: that proxy alone loses it
    table = proxy_table(arrays, valid)
    total = arrays["total_effect"].astype(np.float64)
    values = {p: np.abs(arrays[s].astype(np.float64)) for p, s in
              (("gradient", "grad_importance"), ("direct", "direct_effect"), ("output_norm", "output_norm"),
               ("rollout_impact", "rollout_impact"))}
    values["cls_patch_mass"] = arrays["cls_attention"][..., 1:1 + GRID**2].astype(np.float64).sum(-1)
    for name in PROXIES:
        kept = [i for i in range(N) if valid[i] and not (name == "rollout_impact" and i == 6)]
        want = [rho(values[name][i], np.abs(total[i])) for i in kept]
        a = table[name].magnitude
        assert a.images == len(kept) == table[name].images
        np.testing.assert_allclose(a.per_image[kept], want, atol=1e-12)
        assert np.isnan(np.delete(a.per_image, kept)).all()
        assert a.median == pytest.approx(np.median(want))
        assert a.quartiles == pytest.approx(tuple(np.percentile(want, [25, 75])))
        means = rho(values[name][kept].mean(0), np.abs(total[kept]).mean(0))
        assert a.of_means == pytest.approx(means)
    kept = [i for i in range(N) if valid[i]]
    signed = [rho(arrays["direct_effect"][i], total[i]) for i in kept]
    assert table["direct"].signed.median == pytest.approx(np.median(signed))


def test_class_and_single_image_scopes():
    arrays = planted(2)
    valid = np.ones(N, bool)
    valid[0] = False
    label = arrays["label"]
    cls = int(label[1])
    table = proxy_table(arrays, valid, label == cls)
    mine = [i for i in range(N) if valid[i] and label[i] == cls]
    assert len(mine) >= 2 and table["output_norm"].images == len(mine)
    total, norm = np.abs(arrays["total_effect"].astype(np.float64)), arrays["output_norm"].astype(np.float64)
    assert table["output_norm"].magnitude.median == pytest.approx(np.median([rho(norm[i], total[i]) for i in mine]))
    assert table["output_norm"].magnitude.of_means == pytest.approx(rho(norm[mine].mean(0), total[mine].mean(0)))
    one = proxy_table(arrays, valid, np.arange(N) == 5)
    want = rho(norm[5], total[5])
    a = one["output_norm"].magnitude
    assert a.images == 1 and a.median == pytest.approx(want) and a.of_means == pytest.approx(want)
    assert a.quartiles == pytest.approx((want, want))
    assert proxy_table(arrays, valid, np.arange(N) == 0)["output_norm"].images == 0  # an unreadable image: none


def test_the_table_ranks_magnitudes_and_keeps_the_sign_apart():
    arrays = planted(3)
    arrays["direct_effect"] = -arrays["total_effect"]  # the right heads, every sign wrong
    table = proxy_table(arrays, np.ones(N, bool))
    assert table["direct"].magnitude.median == pytest.approx(1) and table["direct"].signed.median == pytest.approx(-1)


def test_a_missing_array_drops_its_proxy_and_no_total_effect_no_table():
    arrays = planted()
    del arrays["output_norm"], arrays["rollout_impact"]
    assert list(proxy_table(arrays, np.ones(N, bool))) == ["gradient", "direct", "cls_patch_mass"]
    del arrays["total_effect"]
    assert proxy_table(arrays, np.ones(N, bool)) == {}


def row(median: float, of_means: float) -> ProxyAgreement:
    a = Agreement(np.array([median]), of_means, np.zeros(1), 1)
    return ProxyAgreement(a, a)


def test_best_proxy_breaks_ties_by_the_means_then_by_order():
    assert best_proxy({"gradient": row(0.5, 0.1), "direct": row(0.5, 0.3), "output_norm": row(0.4, 0.9)}) == "direct"
    assert best_proxy({"output_norm": row(0.5, 0.3), "direct": row(0.5, 0.3)}) == "direct"
    assert best_proxy({"gradient": row(math.nan, 0.9), "output_norm": row(-0.2, math.nan)}) == "output_norm"
    assert best_proxy({"gradient": row(math.nan, 0.9)}) is None and best_proxy({}) is None


def test_table_lines_say_each_proxy_and_the_verdict():
    arrays = planted()
    table = proxy_table(arrays, np.ones(N, bool))
    lines = table_lines(table)
    assert len(lines) == 2 + len(PROXIES) and "|total effect|" in lines[0]
    for line, name in zip(lines[1:-1], PROXIES, strict=True):
        m, s = table[name].magnitude, table[name].signed
        q25, q75 = m.quartiles
        assert line.startswith(PROXY_LABELS[name])
        assert f"{m.median:+.2f} [{q25:+.2f}, {q75:+.2f}], of the means {m.of_means:+.2f}" in line
        assert line.endswith(f"signed {s.median:+.2f}, {s.of_means:+.2f} ({N} images)")
    assert lines[-1] == f"for this model, {PROXY_LABELS[best_proxy(table)]} ranks heads closest to exact pruning"
    assert table_lines(proxy_table(arrays, np.zeros(N, bool))) == [
        "no readable image with both a proxy and the total effect"]
