"""The report's sentences, written from `findings()` only: no claim is typed in, each is a number read aloud.

Each section is (title, sentences, table rows); the text is plain (the HTML writer escapes it).
"""

from __future__ import annotations

import math
from typing import Any

from vitscope.compare import pair_text
from vitscope.report.findings import CLASS_ROWS
from vitscope.vocab import EXPLAIN_DIRECTIONS, HEAD_KINDS, LINEAR_PROBE, PATTERNS, curve_parts

Section = tuple[str, list[str], list[list[str]]]


def _trend(word_up: str, word_down: str, first: float, last: float) -> str:
    return word_up if last > first else word_down if last < first else "stays at"


def _layers(layers: list[int]) -> str:
    """'layer 3', 'layers 0–2', 'layers 0, 4 and 7'."""
    if not layers:
        return "no layer"
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return "layers " + ", ".join(map(str, layers[:-1])) + f" and {layers[-1]}"


def _rho(r: float) -> str:
    return "n/a" if r is None or not math.isfinite(r) else f"{r:+.2f}"


def model(f: dict[str, Any]) -> Section:
    s = [f"{f['model']}: {f['layers']} layers × {f['heads']} heads, {f['grid']}×{f['grid']} patches, "
         f"analysed on {f['images']} readable images" + (f" of {f['of']}" if f["of"] != f["images"] else "") + "."]
    if f["accuracy"] is None:
        s.append(f"{f['basis_text']}: there is no top-1 accuracy, and head importance is measured by how far the "
                 "attention output moves when a head is pruned.")
    else:
        probe = " of its linear probe (on the images it was fitted on)" if f["basis"] == LINEAR_PROBE else ""
        s.append(f"The unpruned model's top-1 accuracy{probe} is {f['accuracy']:.1%}.")
    return "The model", s, []


def trends(f: dict[str, Any]) -> Section:
    t = f["trends"]
    d, e, last = t["distance"], t["entropy"], f["layers"] - 1
    s = [f"Mean attention distance {_trend('rises', 'falls', d[0], d[-1])} from {d[0]:.2f} patches in layer 0 to "
         f"{d[-1]:.2f} in layer {last} (Spearman ρ between depth and distance {_rho(t['distance_rho'])}); the most "
         f"local layer is {min(range(len(d)), key=d.__getitem__)} ({min(d):.2f}), the most global "
         f"{max(range(len(d)), key=d.__getitem__)} ({max(d):.2f}).",
         f"Strength entropy (0: attention on the nearest patches, 1: spread evenly over every hop) "
         f"{_trend('rises', 'falls', e[0], e[-1])} from {e[0]:.2f} to {e[-1]:.2f} (ρ {_rho(t['entropy_rho'])})."]
    rows = [["layer", "distance (patches)", "strength entropy"]]
    rows += [[str(i), f"{a:.2f}", f"{b:.3f}"] for i, (a, b) in enumerate(zip(d, e, strict=True))]
    return "How far heads look, layer by layer", s, rows


def importance(f: dict[str, Any]) -> Section:
    imp = f["importance"]
    top = imp["top"]
    unit = "P[true] falls by" if imp["what"] == "drop of P[true]" else "the attention output moves by"
    s = []
    if top:
        rest = ", ".join(f"{h['head']} ({h['value']:.3f})" for h in top[1:])
        s.append(f"Pruning {top[0]['head']} alone matters most: on average {unit} {top[0]['value']:.3f}"
                 + (f"; next come {rest}." if rest else "."))
        if math.isfinite(imp["top_share"]):
            s.append(f"These {len(top)} of {f['layers'] * f['heads']} heads carry {imp['top_share']:.0%} of the summed "
                     f"positive {imp['what']} of all heads.")
    classes = imp["classes"]
    if classes and top:
        s.append(f"Per class, {top[0]['head']} is also the most important head for {imp['classes_with_overall_top']} "
                 f"of the {len(classes)} classes.")
    rows = [["class", "images", "accuracy", "most important head", imp["what"]]]
    rows += [[c["class"], str(c["images"]), "n/a" if f["accuracy"] is None else f"{c['accuracy']:.0%}", c["head"],
              f"{c['value']:.3f}"] for c in classes[:CLASS_ROWS]]
    if len(classes) > CLASS_ROWS:
        rows.append([f"… {len(classes) - CLASS_ROWS} more classes", "", "", "", ""])
    return "The heads that matter", s, rows


def structure(f: dict[str, Any]) -> Section:
    st = f["structure"]
    s = []
    for kind in HEAD_KINDS:
        per_layer = [k[kind] for k in st["kinds"]]
        n = sum(per_layer)
        if n:
            where = _layers([i for i, c in enumerate(per_layer) if c])
            s.append(f"{n} {kind} head{'s' if n != 1 else ''}, in {where}.")
    if not st["sinks_known"]:
        s.append("This store was built before vitscope kept attention sinks: rebuild it to see them.")
    elif st["sinks"]:
        heads = ", ".join(f"{h['head']} ({h['share']:.0%})" for h in st["sinks"])
        s.append(f"Sink heads, which send nearly all of their strongest attention to the same few patches on every "
                 f"image (share of it there): {heads}.")
    else:
        s.append("No head is a sink head.")
    dominant = [max(p, key=p.get) for p in st["patterns"]]
    for name in PATTERNS:
        at = [i for i, d in enumerate(dominant) if d == name]
        if at:
            share = sum(st["patterns"][i][name] for i in at) / len(at)
            s.append(f"{name.capitalize()} maps are the most frequent label in {_layers(at)} ({share:.0%} of the "
                     "maps there).")
    rows = [["layer", *HEAD_KINDS, *PATTERNS]]
    rows += [[str(i), *(str(k[n]) for n in HEAD_KINDS), *(f"{p[n]:.0%}" for n in PATTERNS)]
             for i, (k, p) in enumerate(zip(st["kinds"], st["patterns"], strict=True))]
    return "Head kinds, sinks and patterns", s, rows


def proxy(f: dict[str, Any]) -> Section | None:
    p = f["proxy"]
    if p is None:
        return None
    per_layer = p["per_layer"]
    finite = [(r, i) for i, r in enumerate(per_layer) if math.isfinite(r)]
    s = [f"The gradient proxy (|∂CE/∂gate|, one backward pass per image) ranks the heads like exact pruning (|ΔCE|) "
         f"with Spearman ρ {_rho(p['of_means'])} over the per-head means of {p['images']} images, and a median "
         f"ρ {_rho(p['median'])} image by image."]
    if finite:
        worst, best = min(finite), max(finite)
        s.append(f"It agrees best within layer {best[1]} (ρ {_rho(best[0])}) and worst within layer {worst[1]} "
                 f"(ρ {_rho(worst[0])}).")
    return "How well the gradient proxy agrees with exact pruning", s, []


EFFECTS_TITLE = "Which proxy ranks heads like exact pruning"
NO_EFFECTS = ("This store was built before vitscope kept the heads' direct and total effects: rebuild it (`vitscope "
              "build … --overwrite`) to see which proxy ranks heads like exact pruning.")


def _heads(rows: list[dict[str, Any]], what) -> str:
    return ", ".join(f"{r['head']} ({what(r)})" for r in rows)


def effects(f: dict[str, Any]) -> Section:
    e = f["effects"]
    if e is None:
        return EFFECTS_TITLE, [NO_EFFECTS], []
    if e["best"] is None:
        return EFFECTS_TITLE, ["No readable image has both a proxy and the total effect of pruning a head."], []
    b = next(r for r in e["table"] if r["proxy"] == e["best"])
    others = sorted((r for r in e["table"] if r is not b), key=lambda r: -r["median"])  # every row has images
    s = ["Each cheap per-head score was ranked against the total effect of pruning the head whole (the label's "
         "logit unpruned minus pruned), as magnitudes: how well it finds the heads that move the logit most.",
         f"For this model, {b['label']} ranks heads closest to exact pruning: median Spearman ρ {_rho(b['median'])} "
         f"image by image (IQR {_rho(b['quartiles'][0])} to {_rho(b['quartiles'][1])}), ρ {_rho(b['of_means'])} of "
         f"the per-head means, over {b['images']} image{'s' if b['images'] != 1 else ''}."]
    if others:
        s.append("The others, by median ρ: " + "; ".join(f"{r['label']} {_rho(r['median'])}" for r in others) + ".")
    if e["direct_why"] is not None:
        s.append(f"This model's heads have no direct effects ({e['direct_why']}), so no head's effect splits into "
                 "what it writes to the logit and what it does through later layers.")
    else:
        if e["writers"]:
            s.append("A head's direct effect is what it writes to the logit itself; the heads that write most "
                     "directly (mean |direct effect|, logits): " + _heads(e["writers"], lambda r: f"{r['size']:.3f}")
                     + ".")
        if e["through"]:
            s.append("The heads that act most through later layers (mean total effect minus direct): " + _heads(
                e["through"], lambda r: f"total {r['total']:+.3f}, direct {r['direct']:+.3f}") + ".")
    table = [["proxy", "median ρ [IQR]", "ρ of the means", "images"]]
    table += [[r["label"] + (" ★" if r["proxy"] == e["best"] else ""),
               f"{_rho(r['median'])} [{_rho(r['quartiles'][0])}, {_rho(r['quartiles'][1])}]", _rho(r["of_means"]),
               str(r["images"])] for r in e["table"]]
    return EFFECTS_TITLE, s, table


def curves(f: dict[str, Any]) -> Section | None:
    c = f["curves"]
    if c is None:
        return ("Pruning curves", ["Not computed for this report (they need the store's model: run `vitscope report` "
                                   "where its weights are, without --no-curves)."], [])
    if c.get("y") != "top1":
        return None
    n_heads, steps, cv = f["layers"] * f["heads"], c["steps"], c["curves"]
    sample = f" (a seeded sample of the {c['of']})" if c["of"] != c["images"] else ""
    s = [f"Heads were pruned one after another, in each order, on {c['images']} images{sample}; with every head "
         f"top-1 accuracy is {c['baseline']:.1%}."]
    first = 1 if len(steps) > 1 else 0
    harmful = [o for o in cv if curve_parts(o)[1] == "harmful-first"]
    if harmful and first:
        after = ", ".join(f"{cv[o][first]:.1%} by the {curve_parts(o)[0]} ranking" for o in harmful)
        rand = f", against {cv['random'][first]:.1%} in random order" if "random" in cv else ""
        s.append(f"Most harmful first, top-1 falls to {after} after {steps[first]} "
                 f"head{'s' if steps[first] != 1 else ''}{rand}.")
    prunable = c.get("prunable", {})
    if prunable:
        pts = c["tol"] * 100
        counts = [f"{prunable[o]} of {n_heads} ({prunable[o] / n_heads:.0%}) by the {curve_parts(o)[0]} ranking"
                  for o in cv if curve_parts(o)[1] == "harmless-first" and o in prunable]
        rand = f", {prunable['random']} in random order" if "random" in prunable else ""
        if counts:
            s.append(f"Least harmful first (Michel et al. 2019's question), {'; '.join(counts)}{rand} can be pruned "
                     f"before top-1 drops by more than {pts:g} point{'s' if pts != 1 else ''}.")
        one = 100 / c["images"]
        if one > pts:
            s.append(f"On {c['images']} images one image is {one:.1f} points, more than that tolerance: each count "
                     "ends at the first step with fewer correct images than the unpruned model (a larger "
                     "--curve-images sample resolves finer).")
    rows = [["heads pruned", *cv]]
    rows += [[str(k), *(f"{cv[o][i]:.1%}" for o in cv)] for i, k in enumerate(steps)]
    if prunable:
        rows.append([f"prunable (−{c['tol'] * 100:g} pt)", *(str(prunable.get(o, "")) for o in cv)])
    return "Pruning curves, in both directions", s, rows


EXPLAIN_TITLE = "Which explanation is faithful for this model"
IN_WORDS = {"most_relevant_first": "most relevant patches removed first",
            "least_relevant_first": "least relevant patches removed first"}
BEST = {"most_relevant_first": "lowest", "least_relevant_first": "highest"}
NOT_EXPLAINED = {
    "not asked": "Not computed for this report (the patch maps need the store's model: run `vitscope report` where "
                 "its weights are, without --no-explain; --explain-images sets the sample).",
    "no basis": "Not computed: how faithful a map is is read from P[true] as patches are removed, and this store's "
                "model has none (no classifier, and its images no usable labels: prob basis none); a store built "
                "with a classifier, or with labels for a linear probe, has it.",
    "no model": "Not computed: the store's model cannot be loaded here ({detail}); run `vitscope report` where its "
                "weights are.",
}


def _interval(iv: list[float]) -> str:
    return f"95 % interval {iv[0]:.4f}–{iv[1]:.4f}"


def _direction(e: dict[str, Any], d: str, n: int) -> str:
    """One direction's verdict: the most faithful map, the runner-up, whether the sample tells them apart."""
    order, mean, iv = e["ranking"][d], e["mean_auc"], e["interval"]
    best = order[0]
    s = (f"With the {IN_WORDS[d]}, {best} is the most faithful map: mean AUC {mean[best][d]:.4f} "
         f"({_interval(iv[best][d])}), the {BEST[d]} of the {len(order)}")
    if len(order) == 1:
        return s + "."
    second = order[1]
    s += f"; next comes {second} at {mean[second][d]:.4f} ({_interval(iv[second][d])})"
    if e["overlap"][d]:
        return s + (f". The two intervals overlap: {best} and {second} are not distinguishable on {n} "
                    f"image{'s' if n != 1 else ''}.")
    return s + ". The two intervals do not overlap."


def explanations(f: dict[str, Any]) -> Section:
    e = f["explanations"]
    if e is None:
        why = f["explain_why"]
        return EXPLAIN_TITLE, [NOT_EXPLAINED[why["reason"]].format(detail=why["detail"])], []
    n, methods = len(e["images"]), list(e["mean_auc"])
    sample = (f"all {n} readable images" if n == e["of"] else
              f"a seeded sample of {n} of the {e['of']} readable images (seed {e['seed']})")
    s = [f"The {len(methods)} patch maps ({', '.join(methods)}) of each image's true class were computed on {sample}; "
         "patches were removed in each map's order and P[true] followed from 0 to 90 % removed. A faithful map gives "
         "a low area under that curve (AUC) when the most relevant go first and a high one when the least relevant "
         "go first."]
    s += [_direction(e, d, n) for d in EXPLAIN_DIRECTIONS]
    best = [e["ranking"][d][0] for d in EXPLAIN_DIRECTIONS]
    if len(methods) > 1:
        s.append("Ranked from most to least faithful, " + "; ".join(
            f"{d.replace('_', ' ')}: {', '.join(e['ranking'][d])}" for d in EXPLAIN_DIRECTIONS) + ".")
    s.append(f"The same map, {best[0]}, is the most faithful in both directions." if best[0] == best[1] else
             f"The two directions disagree: {best[0]} when the most relevant go first, {best[1]} when the least "
             "relevant go first.")
    if n == 1:
        s.append("On one image each interval is a single point: a larger --explain-images sample says whether the "
                 "differences hold.")
    rows = [["map", *(c for d in EXPLAIN_DIRECTIONS for c in (f"{d.replace('_', ' ')}: mean AUC", "95 % interval"))]]
    rows += [[m, *(c for d in EXPLAIN_DIRECTIONS for c in (
        f"{e['mean_auc'][m][d]:.4f}" + (" ★" if m == e["ranking"][d][0] else ""),
        f"{e['interval'][m][d][0]:.4f}–{e['interval'][m][d][1]:.4f}"))] for m in methods]
    return EXPLAIN_TITLE, s, rows


# -- two stores (`vitscope report A B`): the sentences of `vitscope.compare.compare()`'s result ---------------------


def compare_models(r: dict[str, Any]) -> Section:
    (la, ha, ga), (lb, hb, gb) = r["shape"]
    a, b = r["models"]
    s = [f"A is {a} ({la} layers × {ha} heads, {ga}×{ga} patches), B is {b} ({lb} × {hb}, {gb}×{gb}); "
         f"{r['images']} images were analysed by both.",
         f"Layers are paired {r['layer_alignment']['rule']}."]
    acc = r["accuracy"]
    if r["top1_agreement"] is None:
        s.append("Their top-1 cannot be compared (a store without class probabilities, or different bases).")
    else:
        s.append(f"Top-1 accuracy is {pair_text(acc, '.1%')} (A / B), and the two unpruned models give the same top-1 "
                 f"on {r['top1_agreement']:.1%} of the images.")
    return "The two models", s, []


def compare_layers(r: dict[str, Any]) -> Section:
    rows, s = r["layers"], []
    for key, what, fmt in (("distance", "mean attention distance", ".2f"), ("entropy", "strength entropy", ".2f")):
        first, last = rows[0][key], rows[-1][key]
        if None in first or None in last:
            continue
        lower = lambda v: "A" if v[0] < v[1] else "B" if v[1] < v[0] else "neither"  # noqa: E731
        s.append(f"In the first layer the {what} is {pair_text(first, fmt)} (A / B; {lower(first)} is lower), in "
                 f"the last {pair_text(last, fmt)} ({lower(last)} is lower).")
    drops = [(row["drop"][0], row["layer"]) for row in rows if row["drop"][0] is not None]
    drops_b = [(row["drop"][1], row["layer_b"]) for row in rows if row["drop"][1] is not None]
    if drops and drops_b:
        (da, at), (db, bt) = max(drops), max(drops_b)
        s.append(f"Pruning one head hurts most in A's layer {at} (P[true] drops by {da:.3f} on average) and in B's "
                 f"layer {bt} ({db:.3f}).")
    table = [["layer A ↔ B", "distance A / B", "entropy A / B", "drop A / B"]]
    table += [[f"{row['layer']} ↔ {row['layer_b']}", pair_text(row["distance"], ".2f"),
               pair_text(row["entropy"], ".3f"), pair_text(row["drop"], "+.4f")] for row in rows]
    return "Layer by layer", s, table


def compare_heads(r: dict[str, Any]) -> Section:
    h = r["heads"]
    pairs = h["pairs"]
    good = sum(p["good"] for p in pairs)
    s = [f"Each head of A was paired with the head of B that behaves most like it ({', '.join(h['components'])}; "
         f"one optimal assignment over all heads): {good} of {len(pairs)} pairs are good partners (similarity ≥ "
         f"{h['good_match']:.2f}), mean similarity {h['mean_similarity']:.2f}.",
         f"{sum(p['moved'] for p in pairs)} pairs sit in different layers, {sum(p['kind_changed'] for p in pairs)} "
         f"change kind and {sum(p['importance_changed'] for p in pairs)} change importance rank by "
         f"{h['importance_shift']:.2f} or more."]
    for side, name in (("a", "A"), ("b", "B")):
        alone = h["unique"][side]
        if alone:
            why = {}
            for u in alone:
                why.setdefault(u["why"], []).append(u["name"])
            s.append(f"Roles of {name} only: " + "; ".join(f"{', '.join(v)} ({k})" for k, v in why.items()) + ".")
        else:
            s.append(f"Every head of {name} has a good partner.")
    table = [["A", "B", "similarity", "kind A → B", "pattern A → B", "importance rank A → B"]]
    arrow = lambda v: v[0] if v[0] == v[1] else f"{v[0]} → {v[1]}"  # noqa: E731
    table += [[p["a"]["name"], p["b"]["name"], "n/a" if p["similarity"] is None else
               f"{p['similarity']:.2f}{'' if p['good'] else ' ✗'}", arrow(p["kind"]), arrow(p["pattern"]),
               pair_text(p["importance_rank"], ".2f").replace(" / ", " → ")] for p in pairs]
    return "Heads paired by behaviour", s, table
