"""What the app, the figures and the report read from a store, loaded once per process and shared.

Besides the store's small per-head arrays (numpy), the per-store aggregates the views need (means over
images or a class, histograms, layout frames and bounds) are computed here once, on first use, and kept:
so a selection change mostly indexes arrays.
"""

from __future__ import annotations

import json
import threading
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from vitscope.analysis import probe
from vitscope.analysis.proxy import Agreement, agreement, cls_patch_mass, exact_delta_ce, spearman
from vitscope.classes import match_class
from vitscope.config import BuildConfig
from vitscope.errors import VitscopeError
from vitscope.heads import Head, prune_answer
from vitscope.store import REMOVED, check_image, has_sinks, open_store, pending_layouts, read_arrays, read_shape
from vitscope.vocab import CLASSIFIER, DEFAULT_METRIC, HEAD_EFFECTS, HEAD_LAYOUTS, METRICS, MODES, NO_BASIS

ENTROPY_BINS = np.linspace(0.0, 1.0, 41)  # strength entropy is normalised to [0, 1]


class StoreData:
    """Small per-head arrays in memory (numpy); thumbnails read on demand."""

    def __init__(self, path: str | Path, *, unfinished: bool = False) -> None:
        """`unfinished`: a build still running or killed (`vitscope info`): the chunks not yet written are not valid."""
        self.path = Path(path)
        self.ds = ds = open_store(self.path, unfinished=unfinished)
        self.images, self.layers, self.heads = ds.sizes["image"], ds.sizes["layer"], ds.sizes["head"]
        self.grid = int(ds.attrs["patch_grid"])
        self.num_prefix = int(ds.attrs["num_prefix_tokens"])
        self.tokens = self.num_prefix + self.grid**2
        self.class_names: list[str] = [str(c) for c in ds["class_name"].values]
        self.image_ids: list[str] = [str(i) for i in ds["image_id"].values]
        load = ("label", "valid", "importance", "topk_idx", "topk_prob", "strength", "strength_entropy",
                "attention_distance", "pattern_label", "pattern_second", "pattern_offset", "pattern_score",
                "head_consistency", "head_kind", "baseline_prob",
                "grad_importance", "image_xy", "head_xy_cls", "head_xy_patch")
        # The readers index the mode and metric axes by position (`importance[..., mode, METRICS.index(m)]`): select
        # them by label, so a store whose axes are stored in another order still gives each the mode it asks for.
        stored = set(ds["metric"].values.tolist())
        order = {"mode": list(MODES), "metric": [m for m in METRICS if m in stored]}
        moved = {k: v for k, v in order.items() if ds[k].values.tolist() != v}
        by_label = ds.sel(**moved) if moved else ds
        for name in load:
            setattr(self, name, by_label[name].values)
        # The sink analysis (schema v3): a v2 store opens without it, and the views say so.
        self.has_sinks = has_sinks(ds)
        self.head_sink_share = ds["head_sink_share"].values if self.has_sinks else None  # [L, H]
        self.head_sink_tokens = ds["head_sink_tokens"].values if self.has_sinks else None  # [L, H, rank]
        self.has_input_maps = "input_map" in ds  # schema v4: a store built before opens without them
        # The heads' effects on the label's logit and the proxies beside them (schema v5), [N, L, H] each; with them,
        # the CLS→patches attention mass (a proxy) from the CLS vectors.
        self.has_effects = all(name in ds for name in HEAD_EFFECTS)
        for name in HEAD_EFFECTS if self.has_effects else ():
            setattr(self, name, ds[name].values)
        self.cls_patch_mass = cls_patch_mass(ds["cls_attention"]) if self.has_effects else None
        self.effects_why: str | None = ds.attrs.get("effects_why")  # why direct effects are NaN, if they are
        self.binary_size = read_shape(self.path).binary_size  # the side of the binarised maps kept
        self.metrics: list[str] = order["metric"]
        # What prob/jsd are computed from: a classifier, a backbone's linear probe, or nothing (NaN).
        self.prob_basis: str = str(ds.attrs.get("prob_basis", CLASSIFIER))
        self.basis_text = probe.basis_text(ds.attrs)
        self.metrics_shown = probe.metrics_of(ds.attrs, self.metrics)  # what the metric selector offers
        self.layout_metric = probe.layout_metric(ds.attrs, str(ds.attrs.get("layout_metric", DEFAULT_METRIC)))
        self.thumb_shape: tuple[int, ...] = tuple(ds["thumbnail"].shape[1:])  # (h, w, 3)
        # The fraction of values binarised at build (`--top`): the app's default threshold is the same cut.
        self.top = float(json.loads(ds.attrs.get("fingerprint", "{}")).get("top", BuildConfig.top))
        self.correct = self.valid & (self.topk_idx[:, 0, 0, 0, 0] == self.label)  # [N] unpruned top-1 right
        self.model_spec = str(ds.attrs.get("model_spec", "?"))
        self._thumbs: dict[int, np.ndarray] = {}
        self._stats: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray]] = {}
        self._histograms: dict[tuple[int, int], np.ndarray] = {}
        self._frames: dict[str, pd.DataFrame] = {}
        self._agreement: dict[tuple[bool, int | None], Agreement] = {}
        self._proxy_layers: dict[bool, np.ndarray] = {}
        # `vitscope demo` serves the store before its tSNE layouts are all in (NaN until then): see refresh_layouts
        self.layouts_pending: set[str] = set(ds.attrs.get("layouts_pending", []))
        self._layout_lock = threading.Lock()

    # -- layouts still being computed ----------------------------------------------------------------

    def layout_note(self, name: str) -> str:
        """'' for a layout in the store, else what the view shows instead: being computed here, or not yet."""
        if name not in self.layouts_pending:
            return ""
        from vitscope.layouts import layouts_status

        status = layouts_status(self.path)
        if status == "running":
            return "computing layout…"
        if status and status.startswith("failed"):
            return "layout failed (see the terminal)"
        return "layout not computed yet (run the same build again)"

    def refresh_layouts(self) -> set[str]:
        """Load the layouts written since the last look (`layouts_pending` shrinks); returns their names.

        Called by every session's poll while layouts are pending; the first caller after a layout lands loads
        it for all (shared data), the others then find it in place."""
        if not self.layouts_pending:
            return set()
        with self._layout_lock:
            try:
                now = set(pending_layouts(self.path))
            except Exception:  # noqa: BLE001 - attributes being rewritten this instant: look again next time
                if not self.path.is_dir():  # or no more: nothing will land
                    raise VitscopeError(REMOVED.format(path=self.path)) from None
                return set()
            arrived = self.layouts_pending - now
            if arrived:
                for name, values in read_arrays(self.path, arrived).items():
                    setattr(self, name, values)
                for name in ("placed", "_trees", "_bounds"):  # derived from the layouts: computed again on use
                    self.__dict__.pop(name, None)
                self._frames.clear()
                self.layouts_pending = now
            return arrived

    # -- images ------------------------------------------------------------------------------------

    def thumbnail(self, image: int) -> np.ndarray:
        """[h, w, 3] uint8; the last few are kept (several views draw the same image after each selection)."""
        if image not in self._thumbs:
            if len(self._thumbs) >= 8:
                self._thumbs.pop(next(iter(self._thumbs)))
            self._thumbs[image] = self.ds["thumbnail"][image].values
        return self._thumbs[image]

    def input_maps(self, image: int) -> dict[str, np.ndarray] | None:
        """The image's stored patch maps, {method: [p, p] float32} (`vocab.STORED_MAPS`: attention, rollout,
        grad_rollout, in their raw units); None for a store built before they were kept."""
        if not self.has_input_maps:
            return None
        values = self.ds["input_map"][int(image)].values
        return {str(m): v.reshape(self.grid, self.grid) for m, v in zip(self.ds["input_method"].values, values,
                                                                        strict=True)}

    def check_image(self, image: int) -> int:
        """`image` if it is in the store and was readable at build; else one line saying which it is not."""
        return check_image(self.path, image, self.valid, self.image_ids)

    def readable(self, image: int | None) -> int | None:
        """The image if it is in the store and readable, else None (views then show all images)."""
        return image if image is not None and 0 <= image < self.images and self.valid[image] else None

    @cached_property
    def placed(self) -> np.ndarray:
        """Indices of the readable images that have a place in the Image Overview's layout."""
        return np.flatnonzero(self.valid & np.isfinite(self.image_xy).all(1))

    @cached_property
    def classes_present(self) -> list[int]:
        """Class indices that have at least one readable image, in index order."""
        return sorted(set(int(c) for c in self.label[self.valid]))

    def class_images(self, cls: int | None) -> np.ndarray:
        """[N] bool: readable images of class `cls` (all readable images for None)."""
        return self.valid if cls is None else self.valid & (self.label == cls)

    def stored_prune(self, image: int, head: Head) -> dict | None:
        """One head pruned alone in one of the store's modes, answered from the store as `Service.prune` answers it
        (the build ran this very ablation: the same engine, the same numbers): no forward, so a tap that changes the
        image or the head does not wait for the model. None when the store does not hold it (a region, mode 0, no
        basis for P)."""
        if not (isinstance(head.mode, int) and head.mode in MODES[1:] and self.prob_basis != NO_BASIS
                and self.readable(image) is not None):
            return None
        m = self.metrics.index
        v = self.importance[image, head.layer, head.head, head.mode]  # [metric]
        base, prob = float(self.baseline_prob[image]), float(v[m("prob")])
        if not (np.isfinite(base) and np.isfinite(prob)):
            return None
        where = image, head.layer, head.head, head.mode
        top = [[self.class_names[int(c)], float(p)] for c, p in zip(self.topk_idx[where], self.topk_prob[where],
                                                                    strict=True) if c >= 0]
        cls_dist, patch_dist = (float(v[m(k)]) if np.isfinite(v[m(k)]) else None for k in ("cls_dist", "patch_dist"))
        return prune_answer(image, [head], prob, base, float(v[m("jsd")]), cls_dist, patch_dist, top, [base - prob],
                            stored=True)

    def find_class(self, text: str) -> int | None:
        """Class index by exact name, else by the first name containing `text` (case-insensitive); only classes
        with a readable image (a class without one would leave the views nothing to average: NaN)."""
        if not text.strip():
            return None
        try:
            return match_class(text, self.class_names, self.classes_present)[0]
        except VitscopeError:
            return None

    # -- heads -------------------------------------------------------------------------------------

    def head_index(self, layer: int, head: int) -> int:
        return layer * self.heads + head

    def metric_values(self, metric: str, mode: int) -> np.ndarray:
        """[N, L·H] values of one metric in one mode (rows of unreadable images are NaN)."""
        return self.importance[:, :, :, mode, self.metrics.index(metric)].reshape(self.images, -1)

    def over_images(self, name: str, cls: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of a per-image variable (`importance`, `strength`, …) over the readable images (of one
        class), computed once per store and class."""
        if (name, cls) not in self._stats:
            rows = getattr(self, name)[self.class_images(cls)]
            nan = np.full(rows.shape[1:], np.nan)
            self._stats[name, cls] = (rows.mean(0), rows.std(0)) if len(rows) else (nan, nan)
        return self._stats[name, cls]

    def image_or_mean(self, name: str, image: int | None, cls: int | None = None) -> np.ndarray:
        """A per-image variable of a readable image, else its mean over the readable images (of one class):
        what every view shows until an image is chosen."""
        return getattr(self, name)[image] if self.readable(image) is not None else self.over_images(name, cls)[0]

    def band(self, metric: str, mode: int, cls: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) [L·H] of a metric in one mode over the readable images (of one class)."""
        mean, std = self.over_images("importance", cls)  # [L, H, mode, metric]
        m = self.metrics.index(metric)
        return mean[..., mode, m].reshape(-1), std[..., mode, m].reshape(-1)

    def proxy_agreement(self, signed: bool, cls: int | None = None) -> Agreement:
        """How the gradient proxy ranks heads against exact whole-head pruning (ΔCE, or |ΔCE|) over the
        readable images (of one class): computed once per store, target and class."""
        if (signed, cls) not in self._agreement:
            exact = exact_delta_ce(self.importance, self.baseline_prob, signed=signed)
            self._agreement[signed, cls] = agreement(self.grad_importance, exact, self.class_images(cls))
        return self._agreement[signed, cls]

    def proxy_layers(self, signed: bool) -> np.ndarray:
        """[N, L] Spearman ρ of the proxy with exact ΔCE (or |ΔCE|) over each image's heads of each layer."""
        if signed not in self._proxy_layers:
            exact = exact_delta_ce(self.importance, self.baseline_prob, signed=signed)
            self._proxy_layers[signed] = spearman(self.grad_importance, exact)  # along the head axis
        return self._proxy_layers[signed]

    def entropy_histogram(self, layer: int, head: int) -> np.ndarray:
        """Counts of one head's strength entropy over readable images in ENTROPY_BINS."""
        if (layer, head) not in self._histograms:
            values = self.strength_entropy[self.valid, layer, head]
            self._histograms[layer, head] = np.histogram(values, bins=ENTROPY_BINS)[0]
        return self._histograms[layer, head]

    # -- the head maps of the Attention Pattern View ------------------------------------------------

    def head_frame(self, kind: str) -> pd.DataFrame:
        """All heads of one layout: x, y, image, layer (categorical, for datashader), head; NaN rows dropped."""
        if kind not in self._frames:
            xy = getattr(self, f"head_xy_{kind}")  # [N, L, H, 2]
            n, L, H = xy.shape[:3]
            grids = np.meshgrid(np.arange(n), np.arange(L), np.arange(H), indexing="ij")
            image, layer, head = (a.ravel() for a in grids)
            flat = xy.reshape(-1, 2)
            ok = np.isfinite(flat).all(1)
            self._frames[kind] = pd.DataFrame({"x": flat[ok, 0], "y": flat[ok, 1], "image": image[ok],
                                               "layer": pd.Categorical(layer[ok], categories=range(L)),
                                               "head": head[ok]})
        return self._frames[kind]

    def prepare(self) -> None:
        """Build now what the first pick on the map of all heads would otherwise wait for: its KD-trees, and the
        proxy's agreement per image and layer that the first chosen image shows (both grow with the store).
        `vitscope serve` calls it at start, Jupyter in its warm-up thread."""
        self._trees  # noqa: B018 - a cached property, built here
        for signed in (True, False):
            self.proxy_layers(signed)
            self.proxy_agreement(signed)

    @cached_property
    def _trees(self) -> dict:
        trees = {}
        for kind in HEAD_LAYOUTS:
            xy = getattr(self, f"head_xy_{kind}").reshape(-1, 2)  # [N·L·H, 2]
            ok = np.isfinite(xy).all(1)
            trees[kind] = (cKDTree(xy[ok]), np.flatnonzero(ok))
        return trees

    def nearest_head(self, kind: str, x: float, y: float) -> tuple[int, int, int] | None:
        """(image, layer, head) of the head point nearest to (x, y) in a head layout (KD-tree); None while the
        layout has no point."""
        tree, index = self._trees[kind]
        if not len(index):
            return None
        flat = int(index[tree.query([x, y])[1]])
        image, rest = divmod(flat, self.layers * self.heads)
        return image, *divmod(rest, self.heads)

    @cached_property
    def _bounds(self) -> dict[str, tuple[float, float, float, float]]:
        return {kind: padded_bounds(self.head_frame(kind)[["x", "y"]].to_numpy()) for kind in HEAD_LAYOUTS}

    def bounds(self, kind: str) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of a head layout with a 5 % margin."""
        return self._bounds[kind]


def padded_bounds(xy: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of points [n, 2] with a 5 % margin ((-1, -1, 1, 1) for none)."""
    if not len(xy):
        return -1.0, -1.0, 1.0, 1.0
    lo, hi = xy.min(0), xy.max(0)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    return float(lo[0] - pad[0]), float(lo[1] - pad[1]), float(hi[0] + pad[0]), float(hi[1] + pad[1])



Store = StoreData | str | Path  # what every reader takes: the data, or a store's path


def store_data(store: Store) -> StoreData:
    """A StoreData as given, else the one copy of a store's arrays in this process (by resolved path), shared by
    the app's sessions, the compare view, exports, figures and the report."""
    return store if isinstance(store, StoreData) else _cached(str(Path(store).resolve()))


@lru_cache(maxsize=8)
def _cached(path: str) -> StoreData:
    return StoreData(path)
