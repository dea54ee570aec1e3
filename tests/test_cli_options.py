"""Options of `vitscope compare`, `export` and `figure` that no other test types, as a user types them:
`compare A B --good X` (which pairs count as good partners), `export STORE --image I --metric M --mode K` (the
snapshot's metric, mode and heads), `figure STORE --head L:H` (the per-head figures' head). Each output is checked
against the stores' own numbers (xarray, or `vitscope.compare.compare`, the Python API of `vitscope compare`)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from bokeh.models import ColumnDataSource, Tabs

from vitscope.cli import main
from vitscope.compare import compare
from vitscope.store import open_store
from vitscope.vocab import WHOLE_HEAD

IMAGE = 3


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- compare --good ----------------------------------------------------------------------------------------------


def test_compare_good_sets_which_pairs_are_good_partners(compare_stores, capsys):
    """A 4 × 4-head model against a 2 × 2 one (four pairs): with X between two pairs' similarities, exactly the pairs
    at X or above are good (a sink paired with no sink never is), A's heads without a good partner are the twelve
    unpaired ones and those below X, and the pairing itself is the one the default threshold gives."""
    a, b = compare_stores["a"], compare_stores["small"]
    auto = compare(open_store(a), open_store(b))["heads"]
    key = [(p["a"]["name"], p["b"]["name"], p["similarity"]) for p in auto["pairs"]]
    sims = sorted(s for *_, s in key)
    assert len(sims) == 4 and sims[0] < sims[-2]
    goods = []
    for x in ((sims[0] + sims[1]) / 2, (sims[-2] + sims[-1]) / 2):
        code, out, err = run(capsys, "compare", a, b, "--good", x, "--json")
        assert code == 0, err
        heads = json.loads(out)["heads"]
        assert heads["good_match"] == x and heads["good_rule"].startswith(f"given: {x}")
        assert [(p["a"]["name"], p["b"]["name"], p["similarity"]) for p in heads["pairs"]] == key
        good = {p["a"]["name"] for p in heads["pairs"] if p["similarity"] >= x and not p["sink_role"]}
        assert {p["a"]["name"] for p in heads["pairs"] if p["good"]} == good
        paired = {p["a"]["name"] for p in heads["pairs"]}
        unpaired = {f"L{i}H{h}" for i in range(4) for h in range(4)} - paired
        assert {u["name"] for u in heads["unique"]["a"]} == unpaired | (paired - good)
        goods.append(good)
    assert len(goods[0]) > len(goods[1])  # a higher threshold leaves fewer good partners

    # the report a person reads: the threshold given, and ✗ on exactly the pairs below it
    x = (sims[-2] + sims[-1]) / 2
    code, out, err = run(capsys, "compare", a, b, "--good", x)
    assert code == 0, err
    assert f"a good partner ≥ {x:.3f} (given)" in out and f"4 pairs, {len(goods[1])} good" in out
    marked = {line.split()[0] for line in out.splitlines() if "✗" in line and re.match(r"\s+L\d+H\d+ ", line)}
    assert marked == {name for name, _, s in key} - goods[1]


# -- export --metric --mode --------------------------------------------------------------------------------------


def embedded_document(html: str):
    """The Bokeh document a file from `vitscope export` embeds, read back by Bokeh's own deserializer."""
    from bokeh.document import Document

    (text,) = re.findall(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', html, re.S)
    (doc,) = json.loads(text).values()
    return Document.from_json(doc)


def test_export_shows_the_metric_and_mode_given(demo16, tmp_path, capsys):
    """`--metric jsd --mode 3`: one tab per head of the six with the largest JSD in mode 3 on the image (the store,
    sorted here), each tab's importance line the image's JSD in mode 3 for every head, and its title says so."""
    out = tmp_path / "f.html"
    code, said, err = run(capsys, "export", demo16, "--image", IMAGE, "--metric", "jsd", "--mode", 3, "--out", out)
    assert code == 0, err
    assert said.startswith(f"snapshot written: {out}")
    jsd = open_store(demo16)["importance"].isel(image=IMAGE).sel(mode=3, metric="jsd").values  # [L, H]
    H = jsd.shape[1]
    want_heads = [f"L{j // H}H{j % H}" for j in np.argsort(-jsd.reshape(-1), kind="stable")[:6]]
    doc = embedded_document(out.read_text(encoding="utf-8"))
    assert [tab.title for tab in doc.select_one({"type": Tabs}).tabs] == want_heads
    titles = [fig.title.text for fig in doc.select({"name": "vs-importance-fig"})]
    assert len(titles) == 6 and set(titles) == {f"Head Importance View — JSD(P, P'), image {IMAGE}, mode 3"}
    lines = [s.data for s in doc.select({"type": ColumnDataSource}) if {"y", "lo", "hi", "proxy"} <= set(s.data)]
    assert len(lines) == 6  # the importance line of each tab
    for data in lines:
        np.testing.assert_allclose(np.asarray(data["y"], dtype=float), jsd.reshape(-1), rtol=1e-6)
    prob = open_store(demo16)["importance"].isel(image=IMAGE).sel(mode=WHOLE_HEAD, metric="prob").values
    defaults = [f"L{j // H}H{j % H}" for j in np.argsort(prob.reshape(-1), kind="stable")[:6]]
    assert defaults != want_heads and not np.allclose(prob, jsd)  # the default metric and mode would show others


# -- figure --head -----------------------------------------------------------------------------------------------

PER_HEAD = ("modes", "strength-vector", "entropy", "pattern-map", "binary-map", "heatmap", "two-axes", "masks")


def svg_text(path) -> str:
    return " ".join(t.text or "" for t in ET.parse(path).iter() if t.tag.endswith("text"))


def test_figure_head_draws_every_per_head_figure_of_that_head(demo16, tmp_path, capsys):
    """`--head L:H` with a head other than the default (the one whose pruning hurts the image most): every per-head
    figure names that head and not the default, and the entropy figure marks the image's stored strength entropy."""
    ds = open_store(demo16)
    pruned_prob = ds["importance"].isel(image=IMAGE).sel(mode=WHOLE_HEAD, metric="prob").values
    H = pruned_prob.shape[1]
    default = "L{}H{}".format(*divmod(int(np.argmin(pruned_prob)), H))
    layer, head = divmod(int(np.argmax(pruned_prob)), H)  # the least harmful head: surely not the default
    name = f"L{layer}H{head}"
    assert name != default
    out = tmp_path / "figs"
    code, said, err = run(capsys, "figure", demo16, "--image", IMAGE, "--head", f"{layer}:{head}", "--out", out,
                          "--only", *PER_HEAD, "--quiet")
    assert code == 0, err
    assert said.strip() == f"{len(PER_HEAD)} figures written to {out} (svg)"
    for fig in PER_HEAD:
        text = svg_text(out / f"{fig}.svg")
        assert re.search(rf"\b{name}\b", text) and not re.search(rf"\b{default}\b", text), (fig, text)
    entropy = float(ds["strength_entropy"].isel(image=IMAGE, layer=layer, head=head))
    assert f"strength entropy over images — {name} (image {IMAGE}: {entropy:.2f})" in svg_text(out / "entropy.svg")


@pytest.mark.parametrize("argv, says", [
    (["--head", "6:0"], "no head L6H0: this store has layers 0..5 and heads 0..3"),
    (["--head", "2"], "LAYER:HEAD"),
])
def test_figure_bad_head_is_one_line(demo16, tmp_path, capsys, argv, says):
    code, out, err = run(capsys, "figure", demo16, "--out", tmp_path / "x", "--only", "modes", *argv)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and says in err, err
