"""`vitscope report`: every claim of the report is a number computed from the store. On a synthetic store (random
arrays in the real schema) each finding is recomputed here straight from the store's arrays with xarray, and the
sentences are checked to carry those numbers; the page is one offline file that shows names as text."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from app_helpers import drop_effects, make_store
from scipy.stats import spearmanr
from test_compare_view import stores  # noqa: F401 - tiny stores a, swap (two heads swapped), small (2 × 2)
from test_effects_plots import reference_rho
from test_explain_plots import benchmark

from vitscope import store
from vitscope.readout import effects
from vitscope.readout.store_data import StoreData
from vitscope.report import explanations, findings, html, sections
from vitscope.vocab import EXPLAIN_DIRECTIONS, HEAD_KINDS, PATTERNS, PROXIES, PROXY_LABELS, WHOLE_HEAD, head_name

L, H = 4, 3


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("report") / "s.zarr", images=40, layers=L, heads=H, grid=4, classes=5,
                      unreadable=(3, 17))
    return path, store.open_store(path)


@pytest.fixture(scope="module")
def found(made):
    return findings(StoreData(made[0]))


def ok(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(image=np.flatnonzero(ds["valid"].values))


def text(found) -> str:
    return "\n".join(" ".join(s) for _, _, s, _ in sections(found))


def test_accuracy_and_layer_trends_are_the_stores(made, found):
    _, ds = made
    v = ok(ds)
    top1 = v["topk_idx"].sel(mode=0).isel(layer=0, head=0, k=0).values
    acc = float((top1 == v["label"].values).mean())
    assert found["images"] == 38 and found["accuracy"] == pytest.approx(acc)
    assert f"{acc:.1%}" in text(found)
    dist = v["attention_distance"].mean(("image", "head")).transpose("layer").values
    ent = v["strength_entropy"].mean(("image", "head")).values
    np.testing.assert_allclose(found["trends"]["distance"], dist, rtol=1e-5)
    np.testing.assert_allclose(found["trends"]["entropy"], ent, rtol=1e-5)
    assert found["trends"]["distance_rho"] == pytest.approx(spearmanr(np.arange(L), dist).statistic)
    assert f"from {dist[0]:.2f} patches in layer 0 to {dist[-1]:.2f} in layer {L - 1}" in text(found)


def test_the_heads_that_matter_overall_and_per_class(made, found):
    _, ds = made
    v = ok(ds)
    drop = (v["baseline_prob"] - v["importance"].sel(mode=WHOLE_HEAD, metric="prob"))  # [image, layer, head]
    mean = drop.mean("image").transpose("layer", "head").values
    order = np.argsort(-mean.reshape(-1), kind="stable")[:5]
    assert [t["head"] for t in found["importance"]["top"]] == [head_name(*divmod(int(k), H)) for k in order]
    first = order[0]
    assert f"Pruning {head_name(*divmod(int(first), H))} alone matters most: on average P[true] falls by " \
           f"{mean.reshape(-1)[first]:.3f}" in text(found)
    for row in found["importance"]["classes"]:
        cls = list(ds["class_name"].values).index(row["class"])
        c = drop.isel(image=np.flatnonzero(v["label"].values == cls)).mean("image").transpose("layer", "head")
        k = int(np.argmax(c.values.reshape(-1)))
        assert row["head"] == head_name(*divmod(k, H)) and row["images"] == int((v["label"].values == cls).sum())


def test_kinds_sinks_and_patterns_per_layer(made, found):
    _, ds = made
    kind = ds["head_kind"].transpose("layer", "head").values
    for layer in range(L):
        expected = {k: int((kind[layer] == n).sum()) for n, k in enumerate(HEAD_KINDS)}
        assert found["structure"]["kinds"][layer] == expected
    labels = ok(ds)["pattern_label"].transpose("image", "layer", "head").values
    for layer in range(L):
        for n, p in enumerate(PATTERNS):
            assert found["structure"]["patterns"][layer][p] == pytest.approx((labels[:, layer] == n).mean())
    sinks = [head_name(int(i), int(h)) for i, h in np.argwhere(kind == HEAD_KINDS.index("sink"))]
    assert [s["head"] for s in found["structure"]["sinks"]] == sinks
    n_sink = len(sinks)
    if n_sink:
        assert f"{n_sink} sink head" in text(found)


def test_proxy_agreement_is_spearman_of_the_means(made, found):
    _, ds = made
    v = ok(ds)
    p = v["importance"].sel(mode=WHOLE_HEAD, metric="prob").transpose("image", "layer", "head").values
    base = v["baseline_prob"].values[:, None, None]
    exact = np.abs(np.log(np.clip(base, 1e-12, None)) - np.log(np.clip(p, 1e-12, None))).mean(0)
    proxy = v["grad_importance"].transpose("image", "layer", "head").values.mean(0)
    rho = spearmanr(proxy.reshape(-1), exact.reshape(-1)).statistic
    assert found["proxy"]["of_means"] == pytest.approx(rho, abs=1e-6)
    assert f"Spearman ρ {rho:+.2f} over the per-head means of 38 images" in text(found)


def test_the_page_is_offline_and_names_are_text(made, found):
    found = {**found, "model": "<script>window.__x=1</script>"}
    page = html(f"What {found['model']} does", "<img src=x onerror=alert(1)>.zarr", sections(found))
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_a_compare_report_says_what_compare_computes(stores, tmp_path):  # noqa: F811
    """`vitscope report A B`: a model against a copy with two heads swapped, then against another model."""
    from vitscope.cli import main
    from vitscope.compare import compare

    out = tmp_path / "cmp.html"
    assert main(["report", str(stores["a"]), str(stores["small"]), "--out", str(out)]) == 0
    r = compare(store.open_store(stores["a"]), store.open_store(stores["small"]))
    page = out.read_text(encoding="utf-8")
    assert f"give the same top-1 on {r['top1_agreement']:.1%} of the images" in page
    good = sum(p["good"] for p in r["heads"]["pairs"])
    assert f"{good} of {len(r['heads']['pairs'])} pairs are good partners" in page
    for u in r["heads"]["unique"]["a"]:
        assert u["name"] in page.split("Roles of A only:")[1].split(".")[0]
    swapped = compare(store.open_store(stores["a"]), store.open_store(stores["swap"]))
    assert main(["report", str(stores["a"]), str(stores["swap"]), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert swapped["top1_agreement"] == 1.0 and "give the same top-1 on 100.0% of the images" in page
    assert "Every head of A has a good partner" in page and "<script" not in page


def test_the_report_with_curves_and_figures_on_a_real_model(demo16, tmp_path):
    """`vitscope report` on the demo model's store of 16 images: the pruning curves are the service's (both directions,
    the prunable counts), the figures are inline SVG, and nothing in the page reaches outside it."""
    from vitscope.cli import main
    from vitscope.report import curve_steps
    from vitscope.service.core import Service
    from vitscope.vocab import CURVE_ORDERS

    out = tmp_path / "r.html"
    assert main(["report", str(demo16), "--out", str(out), "--curve-images", "8", "--explain-images", "2",
                 "--quiet"]) == 0
    page = out.read_text(encoding="utf-8")
    expected = Service(demo16).curve(orders=CURVE_ORDERS, steps=curve_steps(24), max_images=8)
    for order in CURVE_ORDERS:
        assert f"<th>{order}</th>" in page
    counts = "".join(f"<td>{expected['prunable'][o]}</td>" for o in CURVE_ORDERS)
    assert f"<tr><td>prunable (−1 pt)</td>{counts}</tr>" in page
    assert f"with every head top-1 accuracy is {expected['baseline']:.1%}" in page
    mean = Service(demo16).explain_set(2, None, 0)["mean_auc"]  # the report's seeded sample, seed 0
    for d, pick, word in ((MOST, min, "lowest"), (LEAST, max, "highest")):
        best = pick(mean, key=lambda m, d=d: mean[m][d])
        assert (f"With the {d.split('_')[0]} relevant patches removed first, {best} is the most faithful map: mean "
                f"AUC {mean[best][d]:.4f}") in page and f"the {word} of the 4" in page
    assert "<h2>Which explanation is faithful for this model</h2>" in page
    assert "a seeded sample of 2 of the 16 readable images (seed 0)" in page
    verdict = f"For this model, {PROXY_LABELS[effects.best(StoreData(demo16))]} ranks heads closest to exact pruning"
    assert verdict in page.split("<h2>Which proxy ranks heads like exact pruning</h2>")[1].split("<h2>")[0]
    assert page.count("<svg") == 7  # trends, importance matrix, kinds/patterns, proxy, direct vs total, curves,
    # faithfulness
    assert "<script" not in page and "xlink:href=\"http" not in page


MOST, LEAST = EXPLAIN_DIRECTIONS
MEANS = {"attention": (0.30, 0.50), "rollout": (0.20, 0.40), "grad_rollout": (0.25, 0.60), "occlusion": (0.35, 0.45)}


def explain_section(f: dict) -> tuple[str, str, list[list[str]]]:
    (title, said, rows), = [(t, " ".join(s), rows) for key, t, s, rows in sections(f) if key == "explanations"]
    return title, said, rows


@pytest.mark.parametrize("half", [0.01, 0.03, 0.06])
def test_the_explanations_name_the_most_faithful_map_and_whether_the_sample_tells_it_apart(made, half):
    """From a benchmark of known means (intervals ± half): the most faithful map of each direction (the lowest mean AUC
    most relevant first, the highest least relevant first), the runner-up, whether their intervals overlap, the
    ranking, the sample and its seed; at ± 0.03 the two best most relevant first overlap, at ± 0.06 in both directions
    (least relevant first the runner-up's interval reaches the best's from below)."""
    r = benchmark(MEANS, half, images=(1, 4, 9), of=38)
    title, said, rows = explain_section(findings(StoreData(made[0]), explained=r))
    assert title == "Which explanation is faithful for this model"
    assert "a seeded sample of 3 of the 38 readable images (seed 0)" in said
    ranked = {MOST: sorted(MEANS, key=lambda m: MEANS[m][0]), LEAST: sorted(MEANS, key=lambda m: -MEANS[m][1])}
    assert ranked[MOST][0] == "rollout" and ranked[LEAST][0] == "grad_rollout"  # the numbers say so
    overlapping = 0
    for k, (d, word) in enumerate(((MOST, "most"), (LEAST, "least"))):
        best, second = ranked[d][:2]
        assert (f"With the {word} relevant patches removed first, {best} is the most faithful map: mean AUC "
                f"{MEANS[best][k]:.4f} (95 % interval {MEANS[best][k] - half:.4f}–{MEANS[best][k] + half:.4f})"
                f", the {'lowest' if d == MOST else 'highest'} of the 4; next comes {second} at "
                f"{MEANS[second][k]:.4f}") in said
        apart = abs(MEANS[best][k] - MEANS[second][k]) > 2 * half
        overlapping += not apart
        verdict = ("The two intervals do not overlap." if apart else
                   f"The two intervals overlap: {best} and {second} are not distinguishable on 3 images.")
        assert f"(95 % interval {MEANS[second][k] - half:.4f}–{MEANS[second][k] + half:.4f}). {verdict}" in said
    assert said.count("not distinguishable") == overlapping == {0.01: 0, 0.03: 1, 0.06: 2}[half]
    assert (f"Ranked from most to least faithful, most relevant first: {', '.join(ranked[MOST])}; least relevant "
            f"first: {', '.join(ranked[LEAST])}.") in said
    assert "The two directions disagree: rollout when the most relevant go first, grad_rollout when" in said
    assert [row[0] for row in rows[1:]] == list(MEANS)
    assert [row[0] for row in rows[1:] if row[1].endswith("★")] == ["rollout"]
    assert [row[0] for row in rows[1:] if row[3].endswith("★")] == ["grad_rollout"]
    same = {m: (v[0], v[1] + (0.5 if m == "rollout" else 0)) for m, v in MEANS.items()}  # rollout best both ways
    _, said, _ = explain_section(findings(StoreData(made[0]), explained=benchmark(same, half, of=3)))
    assert "The same map, rollout, is the most faithful in both directions." in said
    assert "on all 3 readable images" in said


def test_the_explanations_say_why_they_are_missing(made, tmp_path):
    """No benchmark: one sentence saying why and how to get it, whether it was left out, the model cannot be loaded
    here (this synthetic store's model) or the store has no class basis."""
    import shutil

    from vitscope.cli import main

    _, said, rows = explain_section(findings(StoreData(made[0])))
    assert "Not computed for this report" in said and "without --no-explain" in said and rows == []
    out = tmp_path / "r.html"
    assert main(["report", str(made[0]), "--out", str(out), "--no-curves", "--quiet"]) == 0
    page = out.read_text(encoding="utf-8")
    section = page.split("<h2>Which explanation is faithful for this model</h2>")[1]
    assert section.startswith("<p>Not computed: the store&#x27;s model cannot be loaded here (unknown model spec")
    assert page.count("<svg") == 5  # trends, importance matrix, kinds/patterns, proxy, direct vs total: no benchmark
    blind = tmp_path / "blind.zarr"
    shutil.copytree(made[0], blind)
    store.write_global(blind, {}, {"prob_basis": "none"})
    explained, why = explanations(blind)
    assert explained is None and why["reason"] == "no basis"
    _, said, _ = explain_section(findings(StoreData(blind), None, explained, why))
    assert said.startswith("Not computed: how faithful a map is is read from P[true]") and "prob basis none" in said
    assert main(["report", str(made[0]), "--out", str(out), "--explain-images", "0"]) == 2


def effects_section(f: dict) -> tuple[str, str, list[list[str]]]:
    (title, said, rows), = [(t, " ".join(s), rows) for key, t, s, rows in sections(f) if key == "effects"]
    return title, said, rows


def test_the_proxy_closest_to_exact_pruning_and_the_heads_direct_and_indirect(made, found):
    """The verdict names `readout.effects.best`'s proxy, the table is each proxy's ρ recomputed with scipy, and the
    heads named are those with the largest mean |direct effect| and mean total − direct."""
    path, ds = made
    title, said, rows = effects_section(found)
    assert title == "Which proxy ranks heads like exact pruning"
    images = np.flatnonzero(ds["valid"].values)
    ref = reference_rho(ds, images)
    winner = max(PROXIES, key=lambda n: (ref[n]["median"], ref[n]["of_means"]))
    assert winner == effects.best(StoreData(path))
    r = ref[winner]
    assert (f"For this model, {PROXY_LABELS[winner]} ranks heads closest to exact pruning: median Spearman ρ "
            f"{r['median']:+.2f} image by image (IQR {r['q25']:+.2f} to {r['q75']:+.2f}), ρ {r['of_means']:+.2f} of "
            f"the per-head means, over {len(images)} images.") in said
    assert rows[0] == ["proxy", "median ρ [IQR]", "ρ of the means", "images"]
    assert rows[1:] == [[PROXY_LABELS[n] + (" ★" if n == winner else ""),
                         f"{ref[n]['median']:+.2f} [{ref[n]['q25']:+.2f}, {ref[n]['q75']:+.2f}]",
                         f"{ref[n]['of_means']:+.2f}", str(len(images))] for n in PROXIES]
    v = ok(ds)
    direct = v["direct_effect"].values.astype(np.float64)
    total = v["total_effect"].values.astype(np.float64).mean(0).ravel()
    size, indirect = np.abs(direct).mean(0).ravel(), total - direct.mean(0).ravel()
    name = lambda k: head_name(*divmod(int(k), H))  # noqa: E731
    writers = ", ".join(f"{name(k)} ({size[k]:.3f})" for k in np.argsort(-size)[:3])
    assert f"write most directly (mean |direct effect|, logits): {writers}." in said
    through = [k for k in np.argsort(-indirect)[:3] if indirect[k] > 0]
    assert through  # the synthetic heads' indirect part is positive on average
    assert "act most through later layers (mean total effect minus direct): " + ", ".join(
        f"{name(k)} (total {total[k]:+.3f}, direct {direct.mean(0).ravel()[k]:+.3f})" for k in through) in said


def test_a_store_without_effects_says_so_in_one_sentence(made, tmp_path):
    import shutil

    from vitscope.cli import main

    old = tmp_path / "old.zarr"
    shutil.copytree(made[0], old)
    drop_effects(old)
    title, said, rows = effects_section(findings(StoreData(old)))
    assert title == "Which proxy ranks heads like exact pruning" and rows == []
    assert said == ("This store was built before vitscope kept the heads' direct and total effects: rebuild it "
                    "(`vitscope build … --overwrite`) to see which proxy ranks heads like exact pruning.")
    out = tmp_path / "r.html"
    assert main(["report", str(old), "--out", str(out), "--no-curves", "--no-explain", "--quiet"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "rebuild it (`vitscope build … --overwrite`)" in page and page.count("<svg") == 4  # no direct vs total


def test_the_report_as_pdf(made, tmp_path):
    """`--out report.pdf`: the same sections typeset by matplotlib, offline (no browser, no LaTeX)."""
    from vitscope.cli import main

    out = tmp_path / "r.pdf"
    assert main(["report", str(made[0]), "--out", str(out), "--no-curves"]) == 0
    pdf = out.read_bytes()
    assert pdf[:5] == b"%PDF-" and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 2
    assert main(["report", str(made[0]), "--out", str(tmp_path / "r.docx"), "--no-curves"]) == 2
