"""The heads' effects on the label's logit as HoloViews elements (`vitscope.readout.effects`'s numbers): every head's
direct effect against its total effect, and how well each cheap proxy ranks heads like exact pruning.

A head on the diagonal acts on the logit only by what it writes to the residual stream; above or below it, part of
its effect goes through the later layers (total − direct, its indirect effect)."""

from __future__ import annotations

import holoviews as hv
import numpy as np

from vitscope.errors import VitscopeError
from vitscope.plots.palette import HEAD, LAYER, styled
from vitscope.plots.views import scope_text
from vitscope.readout.effects import EFFECTS_MISSING, best, effect_values, scope_table
from vitscope.readout.palette import BLACK, PROXY, SELECTED, layer_colours
from vitscope.readout.store_data import Store, StoreData, store_data
from vitscope.vocab import PROXY_LABELS, head_name

DIRECT = hv.Dimension("direct", label="direct effect (logit)")
TOTAL = hv.Dimension("total", label="total effect (logit, head pruned)")
INDIRECT = hv.Dimension("indirect", label="indirect effect (total − direct)")
NAME = hv.Dimension("name", label="head name")  # not "head": HoloViews finds a dimension by its label too
PROXY_AXIS = hv.Dimension("proxy", label="proxy", range=(-0.5, 4.5))
RHO = hv.Dimension("rho", label="Spearman ρ with |total effect|", range=(-1.05, 1.05))


def with_effects(store: Store) -> StoreData:
    """The store's data, or one line when it was built before the heads' effects were stored."""
    data = store_data(store)
    if not data.has_effects:
        raise VitscopeError(f"the heads' effects are {EFFECTS_MISSING}")
    return data


def direct_vs_total(store: Store, image: int | None = None, cls: int | None = None) -> hv.Overlay:
    """Every head's direct effect (x) against its total effect (y), the image's or the mean over the readable images
    (of a class), coloured by layer, over the diagonal y = x where a head acts only directly."""
    data = with_effects(store)
    direct, total = effect_values(data, image, cls)
    if not np.isfinite(direct).any() and data.effects_why:  # a model whose logit does not decompose
        raise VitscopeError(f"this store has no direct effects: {data.effects_why}")
    layer, head = np.divmod(np.arange(data.layers * data.heads), data.heads)
    names = [head_name(int(i), int(h)) for i, h in zip(layer, head, strict=True)]
    points = hv.Scatter({"direct": direct, "total": total, "layer": layer, "head": head, "name": names,
                         "indirect": total - direct}, DIRECT, [TOTAL, LAYER, HEAD, NAME, INDIRECT])
    points = styled(points, bokeh={"size": 7, "tools": ["hover", "tap"]}, mpl={"s": 14}, color="layer",
                    cmap=layer_colours(data.layers), colorbar=True)
    seen = np.concatenate([direct, total])
    seen = seen[np.isfinite(seen)]
    lo, hi = (float(seen.min()), float(seen.max())) if len(seen) else (0.0, 1.0)
    diagonal = styled(hv.Curve(([lo, hi], [lo, hi]), DIRECT, TOTAL, label="total = direct"), color=BLACK,
                      bokeh={"line_dash": "dashed", "line_width": 1}, mpl={"linestyle": "dashed", "linewidth": 0.8})
    return styled(diagonal * points, title=f"direct vs total effect per head, {scope_text(data, image, cls)}",
                  show_legend=False)


def proxy_agreement(store: Store, image: int | None = None, cls: int | None = None) -> hv.Overlay:
    """Each proxy's Spearman ρ with |total effect| in the scope: the median over its images with the interquartile
    range as whiskers, ρ of the per-head means as a marker, the proxy that ranks heads best starred (★)."""
    data = with_effects(store)
    table = {name: t for name, t in scope_table(data, image, cls).items()
             if t.images and np.isfinite(t.magnitude.median)}
    if not table:
        raise VitscopeError("no readable image with both a proxy and the total effect in this scope")
    winner = best(data, image, cls)
    names = list(table)
    x = np.arange(len(names), dtype=float)
    median = np.array([table[n].magnitude.median for n in names])
    q25, q75 = (np.array([table[n].magnitude.quartiles[k] for n in names]) for k in (0, 1))
    means = np.array([table[n].magnitude.of_means for n in names])
    where = PROXY_AXIS.clone(range=(-0.5, len(names) - 0.5))
    whiskers = styled(hv.ErrorBars((x, median, median - q25, q75 - median), where, [RHO, "below", "above"]),
                      color="#333333")
    medians = styled(hv.Scatter((x, median), where, RHO, label="median per image (IQR)"), color=PROXY,
                     bokeh={"size": 8}, mpl={"s": 30})
    of_means = styled(hv.Scatter((x, means), where, RHO, label="ρ of the means"), color=BLACK, marker="D",
                      bokeh={"size": 7}, mpl={"s": 16})
    layers = [whiskers, medians, of_means]
    if winner in table:
        k = names.index(winner)
        layers.append(styled(hv.Scatter(([x[k]], [median[k]]), where, RHO, label="ranks heads best"),
                             color=SELECTED, marker="*", bokeh={"size": 16}, mpl={"s": 120}))
    ticks = [(k, PROXY_LABELS[n] + (" ★" if n == winner else "")) for k, n in enumerate(names)]
    n_images = max(t.images for t in table.values())
    return styled(hv.Overlay(layers), xticks=ticks, xrotation=20,
                  title=f"proxies vs exact pruning, {scope_text(data, image, cls)} ({n_images} "
                        f"image{'s' if n_images != 1 else ''})",
                  bokeh={"legend_position": "bottom_right"}, mpl={"legend_position": "best"})
