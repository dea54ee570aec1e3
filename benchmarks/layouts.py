"""The tSNE layouts before and after issue 11 on a store's own inputs: time and what they keep apart.

    python benchmarks/layouts.py                                  # cache/demo.zarr
    python benchmarks/layouts.py --store cache/vit_tiny_in200.zarr --layouts head_xy_cls head_xy_patch

"before": scikit-learn up to 10k points, else openTSNE with its defaults (250 + 500 iterations, Annoy
neighbours); "after": `vitscope.analysis.layout.tsne_2d` as the build runs it now (openTSNE above 2k points,
125 + 250 iterations, exact neighbours up to 30k). Both on the same inputs the build lays out (importance
vectors, CLS attention vectors, the stored autoencoder latents), in the same run, one after the other.

Quality, from 2000 seeded query points: `keep` = share of each point's 10 nearest neighbours in the input
that are among its 10 nearest in the layout; `<label>` = share of its 10 nearest in the layout with its own
label (class for images; layer, diagonal offset and pattern label for heads), `<label>_in` the same in the
input (what a perfect layout would reach). Not a test: timings are noisy; `uptime` is printed with each.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs (vitscope/cli.py)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from vitscope.analysis import layout  # noqa: E402


def before(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The layouts as built before: scikit-learn up to 10k points, openTSNE's defaults above."""
    if len(x) <= 10_000:
        return layout.tsne_2d(x, seed=seed, exact_threshold=10_000)
    from openTSNE import TSNE

    y = TSNE(perplexity=30, initialization="pca", negative_gradient_method="fft", n_jobs=-1, random_state=seed).fit(x)
    return layout._normalise(np.asarray(y))


def quality(x: np.ndarray, y: np.ndarray, labels: dict[str, np.ndarray], k: int = 10, queries: int = 2000) -> dict:
    q = np.random.default_rng(0).choice(len(x), min(queries, len(x)), replace=False)
    _, near_in = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x[q])
    _, near_2d = cKDTree(y).query(y[q], k=k + 1)
    near_in, near_2d = near_in[:, 1:], near_2d[:, 1:]
    out = {"keep": np.mean([len(set(a) & set(b)) / k for a, b in zip(near_in, near_2d, strict=True)])}
    for name, lab in labels.items():
        out[name] = (lab[near_2d] == lab[q, None]).mean()
        out[name + "_in"] = (lab[near_in] == lab[q, None]).mean()
    return out


def inputs(path: str) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """What the build lays out, and the labels to judge each layout by."""
    ds = xr.open_zarr(path)
    valid = ds["valid"].values
    nv, L, H = int(valid.sum()), ds.sizes["layer"], ds.sizes["head"]
    metric = list(ds["metric"].values).index(ds.attrs.get("layout_metric", "prob"))
    per_head = {"layer": np.broadcast_to(np.arange(L)[None, :, None], (nv, L, H)).ravel(),
                "offset": ds["pattern_offset"].values[valid].ravel(),
                "pattern": ds["pattern_label"].values[valid].ravel()}
    return {
        "image_xy": (ds["importance"].values[valid][:, :, :, 1, metric].reshape(nv, -1),
                     {"class": ds["label"].values[valid]}),
        "head_xy_cls": (ds["cls_attention"].values[valid].astype(np.float32).reshape(nv * L * H, -1), per_head),
        "head_xy_patch": (ds["pattern_latent"].values[valid].reshape(nv * L * H, -1), per_head),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="cache/demo.zarr")
    ap.add_argument("--layouts", nargs="+", default=["image_xy", "head_xy_cls", "head_xy_patch"])
    args = ap.parse_args()
    data = inputs(args.store)
    print(f"{args.store}: | layout | points | version | seconds | ratio | keep | label purity (input) | load |")
    for name in args.layouts:
        x, labels = data[name]
        x = x.astype(np.float64)
        times = {}
        for version, fn in (("before", before), ("after", lambda v: layout.tsne_2d(v, seed=0))):
            t = time.perf_counter()
            y = fn(x)
            times[version] = time.perf_counter() - t
            q = quality(x, y, labels)
            purity = ", ".join(f"{k} {q[k]:.3f} ({q[k + '_in']:.3f})" for k in labels)
            ratio = times[version] / times["before"]
            print(f"| {name} | {len(x)} | {version} | {times[version]:.1f} | {ratio:.2f} | {q['keep']:.3f} | "
                  f"{purity} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
