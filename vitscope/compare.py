"""Two stores side by side (`vitscope compare`): the same images through two models, layer by layer, and each head
of one paired with the head of the other that behaves most like it.

Pure data: xarray Datasets in (as `store.open_store` gives them), plain dicts of numbers and names out, which the
CLI prints as text or JSON and a view can draw. Definitions (docs/guide.md, "Comparing two stores"):

- **Matched images**: the images of A whose `image_id` is in B, valid (`valid`) in both. Stores built over
  different image sets (their `image_source` differs), or without a matched image, are refused with one line.
- **Layers**: with equal depth layer i of A ↔ layer i of B. Otherwise by relative depth (`align_layers`): layer i
  of A ↔ layer ⌊i·(L_B − 1)/(L_A − 1) + ½⌋ of B, first ↔ first and last ↔ last.
- **Head similarity and matching**: `vitscope.matching` (`head_similarity`, `match_heads`), one optimal
  assignment over all heads of both models at once, not layer by layer: a role that moved in depth
  is a finding, and models of different depth have no layer-to-layer pairing to restrict it to. With unequal
  head counts the larger model keeps some heads unpaired. A head unpaired, or paired below the good-partner
  threshold (`good_threshold`), has no good partner: a role that exists in one model only.
"""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy.stats import rankdata

from vitscope.errors import VitscopeError
from vitscope.matching import (
    COMPONENTS,
    HeadFeatures,
    head_features,
    head_similarity,
    label_names,
    match_heads,
    per_head,
)
from vitscope.text import printable
from vitscope.vocab import CLASSIFIER, GOOD_PARTNER, HEAD_KINDS, NO_BASIS, PATTERNS, WHOLE_HEAD, head_name

# A paired head's importance changed when its rank among its own model's heads (0 least, 1 most important) moved
# by at least this much: a third of the ranking, e.g. from the top third to the middle of it.
IMPORTANCE_SHIFT = 1 / 3
SINK = "sink"  # the head kind of vocab.HEAD_KINDS that is a role of its own


def align_layers(layers_a: int, layers_b: int) -> list[int]:
    """The layer of B shown beside each layer of A: the same one at equal depth, else the nearest relative depth
    ⌊i·(L_B − 1)/(L_A − 1) + ½⌋ (a one-layer A: B's last layer, the one the output reads)."""
    if layers_a == layers_b:
        return list(range(layers_a))
    if layers_a == 1:
        return [layers_b - 1]
    return [int(np.floor(i * (layers_b - 1) / (layers_a - 1) + 0.5)) for i in range(layers_a)]


def alignment_rule(layers_a: int, layers_b: int) -> str:
    """How `align_layers` pairs the layers, in words (the report and the JSON say it)."""
    if layers_a == layers_b:
        return "layer i of A ↔ layer i of B"
    if layers_a == 1:
        return "the one layer of A ↔ the last layer of B"
    return (f"relative depth: layer i of A ↔ layer ⌊i·{layers_b - 1}/{layers_a - 1} + ½⌋ of B "
            "(first ↔ first, last ↔ last)")


def matched_images(a: xr.Dataset, b: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Positions in A and in B of the images both hold (by `image_id`) and both analysed (`valid`), in A's order.
    Raises a one-line VitscopeError for stores of different image sets or without such an image."""
    src_a, src_b = a.attrs.get("image_source"), b.attrs.get("image_source")
    if src_a != src_b:
        raise VitscopeError(f"the stores were built over different image sets ({printable(src_a)} and "
                            f"{printable(src_b)}): compare needs two stores of the same images")
    ids_a = [str(i) for i in a["image_id"].values]
    where_b = {str(i): k for k, i in enumerate(b["image_id"].values)}
    valid_a, valid_b = a["valid"].values.astype(bool), b["valid"].values.astype(bool)
    common = [(k, where_b[i]) for k, i in enumerate(ids_a) if i in where_b]
    pairs = [(i, j) for i, j in common if valid_a[i] and valid_b[j]]
    if not pairs:
        why = (f"none of their {len(common)} common images is valid in both" if common
               else "no image_id in common")
        raise VitscopeError(f"the stores have no images in common to compare ({why})")
    ia, ib = np.asarray(pairs, dtype=np.int64).T
    return ia, ib


def _num(x: Any) -> float | None:
    """A float for JSON: None for NaN (a backbone without a basis has no P[true])."""
    x = float(x)
    return x if np.isfinite(x) else None


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return _num(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else None


def _has_basis(ds: xr.Dataset) -> bool:
    return ds.attrs.get("prob_basis", CLASSIFIER) != NO_BASIS


@dataclass(frozen=True)
class _Side:
    """One store restricted to the matched images: what the report reads from it."""

    ds: xr.Dataset
    images: np.ndarray
    features: HeadFeatures
    drop: np.ndarray  # [L, H] mean whole-head drop of P[true] (NaN without a basis)
    cls_dist: np.ndarray  # [L, H] mean whole-head cls_dist
    label: np.ndarray  # [image, L, H] pattern label codes
    pattern_names: list[str]
    kind: np.ndarray  # [L, H] head kind codes
    kind_names: list[str]

    @classmethod
    def of(cls, ds: xr.Dataset, images: np.ndarray) -> _Side:
        imp = ds["importance"].isel(image=images).transpose("image", "layer", "head", "mode", "metric")
        base = imp.sel(mode=0, metric="prob").values.astype(np.float64)
        pruned = imp.sel(mode=WHOLE_HEAD, metric="prob").values.astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN without a basis: NaN, said as n/a
            drop = np.nanmean(base - pruned, axis=0)
            cls_dist = np.nanmean(imp.sel(mode=WHOLE_HEAD, metric="cls_dist").values.astype(np.float64), axis=0)
        return cls(ds=ds, images=images, features=head_features(ds, images), drop=drop, cls_dist=cls_dist,
                   label=ds["pattern_label"].isel(image=images).transpose("image", "layer", "head").values,
                   pattern_names=label_names(ds, "pattern_label", "patterns", PATTERNS),
                   kind=ds["head_kind"].transpose("layer", "head").values,
                   kind_names=label_names(ds, "head_kind", "kinds", HEAD_KINDS))

    def kind_of(self, layer: int, head: int) -> str:
        k = int(self.kind[layer, head])
        return self.kind_names[k] if 0 <= k < len(self.kind_names) else "undefined"

    def pattern_of(self, layer: int, head: int) -> str:
        """The head's most frequent pattern label over the matched images (ties: the earlier label)."""
        counts = np.bincount(self.label[:, layer, head].astype(np.int64).clip(0), minlength=len(self.pattern_names))
        return self.pattern_names[int(np.argmax(counts))]

    def top1(self) -> np.ndarray:
        return self.ds["topk_idx"].isel(image=self.images).sel(mode=0).isel(layer=0, head=0, k=0).values


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among all of them in [0, 1] (1: the largest; ties averaged; NaN ranks lowest)."""
    flat = np.nan_to_num(values.ravel(), nan=-np.inf)
    if flat.size < 2:
        return np.full(values.shape, 0.5)
    return ((rankdata(flat) - 1) / (flat.size - 1)).reshape(values.shape)


def good_threshold(pair_similarities: np.ndarray) -> tuple[float, float]:
    """The least similarity of a good partner unless one is given: GOOD_PARTNER (surely the same role; vocab.py
    says how it was measured), or, where lower, the lower Tukey fence Q1 − 1.5·IQR of this comparison's paired
    similarities, so that between two different models (whose heads are all less alike than a model and its
    perturbed copy) only the pairs far below the others count as roles of one model. Returns (threshold, fence)."""
    sims = np.asarray(pair_similarities, dtype=np.float64)
    sims = sims[np.isfinite(sims)]
    if not sims.size:
        return GOOD_PARTNER, float("nan")
    q1, q3 = np.percentile(sims, [25, 75])
    fence = float(q1 - 1.5 * (q3 - q1))
    return min(GOOD_PARTNER, fence), fence


def compare(a: xr.Dataset, b: xr.Dataset, *, good: float | None = None) -> dict[str, Any]:
    """Compare store A with store B over their matched images: a plain dict (JSON-ready, NaN as None) with
    `images`, `top1_agreement`, `layers`, `heads` and what they mean (see the module's docstring). `good`: the
    least similarity of a good partner (default: `good_threshold`)."""
    ia, ib = matched_images(a, b)
    sa, sb = _Side.of(a, ia), _Side.of(b, ib)
    (la, ha), (lb, hb) = sa.features.shape, sb.features.shape
    both_basis = _has_basis(a) and _has_basis(b)
    same_basis = a.attrs.get("prob_basis", CLASSIFIER) == b.attrs.get("prob_basis", CLASSIFIER)
    comparable = both_basis and same_basis and (
        a.attrs.get("prob_basis", CLASSIFIER) == CLASSIFIER
        or list(a["class_name"].values) == list(b["class_name"].values))
    t1a, t1b = sa.top1(), sb.top1()
    out: dict[str, Any] = {
        "images": len(ia),
        "images_listed": [int(a.sizes["image"]), int(b.sizes["image"])],
        "models": [printable(a.attrs.get("model_spec", "?")), printable(b.attrs.get("model_spec", "?"))],
        "shape": [[la, ha, sa.features.grid], [lb, hb, sb.features.grid]],
        "top1_agreement": _num(np.mean(t1a == t1b)) if comparable else None,
        "accuracy": [_num(np.mean(s.top1() == s.ds["label"].isel(image=s.images).values)) if _has_basis(s.ds)
                     else None for s in (sa, sb)],
    }
    out["layer_alignment"] = {"layers": [la, lb], "relative_depth": la != lb, "rule": alignment_rule(la, lb),
                              "b_layer": align_layers(la, lb)}
    out["layers"] = _layers(sa, sb, out["layer_alignment"]["b_layer"])
    out["heads"] = _heads(sa, sb, good, prob=both_basis)
    return out


def _layers(sa: _Side, sb: _Side, b_layer: list[int]) -> list[dict[str, Any]]:
    dist = [per_head(s.ds, "attention_distance", s.images) for s in (sa, sb)]
    ent = [per_head(s.ds, "strength_entropy", s.images) for s in (sa, sb)]
    rows = []
    for i, j in enumerate(b_layer):
        at = (i, j)
        patterns = {p: [_num(np.mean(s.label[:, k] == s.pattern_names.index(p))) if p in s.pattern_names else 0.0
                        for s, k in zip((sa, sb), at, strict=True)] for p in PATTERNS}
        names = list(dict.fromkeys([*sa.kind_names, *sb.kind_names]))
        kinds = {n: [int(sum(s.kind_of(k, h) == n for h in range(s.kind.shape[1])))
                     for s, k in zip((sa, sb), at, strict=True)] for n in [*names, "undefined"]}
        if not any(kinds["undefined"]):
            del kinds["undefined"]
        rows.append({"layer": i, "layer_b": j,
                     "distance": [_mean(d[:, k]) for d, k in zip(dist, at, strict=True)],
                     "entropy": [_mean(e[:, k]) for e, k in zip(ent, at, strict=True)],
                     "drop": [_mean(s.drop[k]) for s, k in zip((sa, sb), at, strict=True)],
                     "patterns": patterns, "kinds": kinds})
    return rows


def _head(layer: int, head: int) -> dict[str, Any]:
    return {"layer": layer, "head": head, "name": head_name(layer, head)}


def _heads(sa: _Side, sb: _Side, given: float | None, prob: bool) -> dict[str, Any]:
    (la, ha), (lb, hb) = sa.features.shape, sb.features.shape
    b_layer = align_layers(la, lb)
    sims = head_similarity(sa.features, sb.features)
    sim = sims["similarity"]
    importance = [s.drop if prob else s.cls_dist for s in (sa, sb)]  # [L, H] each
    ranks = [_ranks(v) for v in importance]
    matched = match_heads(sim)
    auto, fence = good_threshold(np.asarray([sim[r, c] for r, c in matched]))
    good = auto if given is None else given
    pairs = []
    for r, c in matched:
        (i, h), (j, g) = divmod(r, ha), divmod(c, hb)
        kinds = [sa.kind_of(i, h), sb.kind_of(j, g)]
        pats = [sa.pattern_of(i, h), sb.pattern_of(j, g)]
        rank = [float(ranks[0][i, h]), float(ranks[1][j, g])]
        # A sink head is a role of its own (it parks attention, it reads nothing from the image): paired with a head
        # that is no sink it has no partner however alike the maps look (the ViT-Ti's late sinks and the DeiT-Ti's
        # late content heads are both vertical, at 0.63–0.75).
        sink_role = (kinds[0] == SINK) != (kinds[1] == SINK)
        pairs.append({
            "a": _head(i, h), "b": _head(j, g), "similarity": _num(sim[r, c]),
            "components": {k: _num(sims[k][r, c]) for k in COMPONENTS if k in sims},
            "good": bool(sim[r, c] >= good) and not sink_role, "sink_role": sink_role,
            "depth": [i / max(la - 1, 1), j / max(lb - 1, 1)],
            "moved": j != b_layer[i],  # B's head is not in the layer aligned with A's (a role moved in depth)
            "importance": [_num(importance[0][i, h]), _num(importance[1][j, g])],
            "importance_rank": rank, "importance_changed": abs(rank[0] - rank[1]) >= IMPORTANCE_SHIFT - 1e-9,
            "kind": kinds, "kind_changed": kinds[0] != kinds[1],
            "pattern": pats, "pattern_changed": pats[0] != pats[1],
        })
    unique: dict[str, list[dict[str, Any]]] = {}
    for side, rows, width, other in (("a", sim, ha, hb), ("b", sim.T, hb, ha)):
        paired = {(p["a"] if side == "a" else p["b"])["layer"] * width + (p["a"] if side == "a" else p["b"])["head"]:
                  p for p in pairs}
        unique[side] = []
        for k in range(rows.shape[0]):
            pair = paired.get(k)
            alike = pair is not None and (pair["similarity"] or 0) >= good
            sink = pair is not None and pair["sink_role"] and pair["kind"][0 if side == "a" else 1] == SINK
            if alike and not sink:
                continue  # a good partner, or a head alike whose partner alone is a sink: its own role is matched
            best = int(np.argmax(np.nan_to_num(rows[k], nan=-1.0)))
            unique[side].append({**_head(*divmod(k, width)), "paired": pair is not None, "best": _num(rows[k, best]),
                                 "best_partner": head_name(*divmod(best, other)),
                                 "why": "unpaired" if pair is None else "sink role" if sink else
                                        "below the good-partner threshold"})
    return {
        "assignment": "global: one optimal assignment over all heads of both models (scipy linear_sum_assignment)",
        "components": [k for k in COMPONENTS if k in sims],
        "good_match": good,
        "good_rule": (f"given: {given}" if given is not None else
                      f"the lower of {GOOD_PARTNER} and the lower fence Q1 − 1.5·IQR of the pairs' similarities")
                     + "; a sink head paired with a head that is no sink is never a good partner",
        "outlier_fence": _num(fence),
        "importance_metric": "drop of P[true] (whole head)" if prob else "cls_dist (whole head)",
        "importance_shift": IMPORTANCE_SHIFT,
        "mean_similarity": _mean(np.asarray([p["similarity"] for p in pairs], dtype=float)),
        "pairs": pairs,
        "unique": unique,
    }


def pair_text(values: list, fmt: str) -> str:
    """'a / b' of a pair of numbers, 'n/a' for a missing one (JSON's null)."""
    return " / ".join("n/a" if v is None else format(v, fmt) for v in values)


def format_report(result: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """The readable report `vitscope compare` prints without --json."""
    na, nb = names
    (la, ha, ga), (lb, hb, gb) = result["shape"]
    align = result["layer_alignment"]
    lines = [f"A: {printable(na)}  {result['models'][0]}: {la} layers × {ha} heads, {ga}×{ga} patches",
             f"B: {printable(nb)}  {result['models'][1]}: {lb} layers × {hb} heads, {gb}×{gb} patches",
             f"images: {result['images']} matched by image_id and valid in both (of {result['images_listed'][0]} and "
             f"{result['images_listed'][1]} listed)"]
    acc = result["accuracy"]
    if result["top1_agreement"] is None:
        lines.append("top-1: not comparable (a store without class probabilities, or different bases); "
                     f"accuracy A / B {pair_text(acc, '.1%')}")
    else:
        lines.append(f"top-1 agreement of the unpruned models: {result['top1_agreement']:.1%} "
                     f"(accuracy A / B {pair_text(acc, '.1%')})")
    lines.append(f"layers: {align['rule']}")
    if align["relative_depth"]:
        hidden = sorted(set(range(lb)) - set(align["b_layer"]))
        lines[-1] += (f"; B's layer{'s' if len(hidden) > 1 else ''} {', '.join(map(str, hidden))} "
                      "not shown (swap A and B to see them)" if hidden else "")
    lines += ["", "Per layer, A / B over the matched images and the layer's heads: mean attention distance (patches),",
              "strength entropy, drop of P[true] when one head is pruned, the most common pattern label, head kinds",
              f"  {'layer':<7} {'distance':<13} {'entropy':<13} {'drop':<17} {'pattern':<33} kinds"]
    for row in result["layers"]:
        pats = []
        for k in range(2):
            name, share = max(((p, v[k] or 0.0) for p, v in row["patterns"].items()), key=lambda t: t[1])
            pats.append(f"{name} {share:.0%}")
        kinds = " / ".join(" ".join(f"{n[0].upper()}{v[k]}" for n, v in row["kinds"].items() if v[k])
                           for k in range(2))
        lines.append(f"  {row['layer']:>2}↔{row['layer_b']:<3} {pair_text(row['distance'], '.2f'):<13} "
                     f"{pair_text(row['entropy'], '.3f'):<13} {pair_text(row['drop'], '+.4f'):<17} "
                     f"{' / '.join(pats):<33} {kinds}")
    lines += _head_lines(result["heads"])
    return "\n".join(lines)


def _why(heads: dict[str, Any]) -> str:
    """Where the good-partner threshold comes from, for the report."""
    if heads["good_rule"].startswith("given"):
        return " (given)"
    if heads["good_match"] < GOOD_PARTNER:
        return (f" (the lower fence Q1 − 1.5·IQR of these pairs' similarities, below {GOOD_PARTNER}: most pairs of "
                "the two models are less alike than a model and its perturbed copy)")
    return ""


def _head_lines(heads: dict[str, Any]) -> list[str]:
    pairs = heads["pairs"]
    good = heads["good_match"]
    moved = sum(p["moved"] for p in pairs)
    lines = ["", f"Heads paired by behaviour: one assignment over all heads of both models; similarity = the mean of "
             f"{', '.join(heads['components'])}",
             *textwrap.wrap(f"(docs/guide.md); a good partner ≥ {good:.3f}{_why(heads)}", width=120),
             f"  {len(pairs)} pairs, {sum(p['good'] for p in pairs)} good, mean similarity "
             f"{pair_text([heads['mean_similarity']], '.3f')}; {moved} outside the aligned layer of B; kind changed "
             f"{sum(p['kind_changed'] for p in pairs)}, pattern changed {sum(p['pattern_changed'] for p in pairs)}, "
             f"importance rank moved ≥ {heads['importance_shift']:.2f}: {sum(p['importance_changed'] for p in pairs)}",
             f"  {'A':<7} {'B':<7} {'sim':<7} {'kind A → B':<24} {'pattern A → B':<24} importance rank A → B "
             f"({heads['importance_metric']})"]
    for p in pairs:
        kind = p["kind"][0] if not p["kind_changed"] else " → ".join(p["kind"])
        pat = p["pattern"][0] if not p["pattern_changed"] else " → ".join(p["pattern"])
        flag = "" if p["good"] else " ✗"
        lines.append(f"  {p['a']['name']:<7} {p['b']['name']:<7} {pair_text([p['similarity']], '.3f') + flag:<7} "
                     f"{kind:<24} {pat:<24} {p['importance_rank'][0]:.2f} → {p['importance_rank'][1]:.2f}"
                     + ("  *" if p["importance_changed"] else ""))
    for side, what in (("a", "A"), ("b", "B")):
        alone = heads["unique"][side]
        text = ", ".join(f"{u['name']} (best {pair_text([u['best']], '.2f')}, {u['best_partner']}"
                         f"{'' if u['paired'] else ', unpaired'}{', sink role' if u['why'] == 'sink role' else ''})"
                         for u in alone)
        lines += textwrap.wrap(f"Roles only in {what} (no partner ≥ {good:.3f}, or a sink paired with no sink): "
                               f"{text or 'none'}", width=120,
                               subsequent_indent="  ", break_on_hyphens=False)
    return lines
