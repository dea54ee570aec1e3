"""The tSNE layouts on a store's own inputs: time and what they keep apart, as fitted in full and as fitted on a
sample with the rest placed by the transform; with --defaults, also against openTSNE's own settings.

    python benchmarks/layouts.py                                  # cache/demo.zarr: full fit against a sample
    python benchmarks/layouts.py --store cache/vit_tiny_in200.zarr --layouts head_xy_cls head_xy_patch --sample 2000
    python benchmarks/layouts.py --defaults                       # also openTSNE's default settings
    python benchmarks/layouts.py --transform-cost 144000          # the transform's seconds per point, synthetic

"full": `tsne_2d` on every point, as the build lays out a store up to `layout.FIT_POINTS` points; "sample N":
`fit_layout` on a seeded sample of N points (`--sample`, default a quarter of the points) and `Reference.place`
for the rest in blocks of `layouts.BLOCK_POINTS`, as the build does above `FIT_POINTS`. `--transform-cost N`:
a reference of `FIT_POINTS` synthetic 16-d points (latents; or `--dims`) fitted, then N new points placed.

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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs (vitscope/cli/__init__.py)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from vitscope import layouts  # noqa: E402
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


def sampled(x: np.ndarray, n: int, seed: int = 0, refined: bool = True) -> np.ndarray:
    """The build's layout above FIT_POINTS, with the sample size forced to n (refined: as the build; without: the
    transform's places as they were before `layout.refine`)."""
    sample = layout.fit_sample(len(x), seed, n)
    y_fit, record = layout.fit_layout(x[sample], len(x), seed=seed)
    y = np.empty((len(x), 2), np.float32)
    y[sample] = y_fit
    rest = np.setdiff1d(np.arange(len(x)), sample)
    ref = layout.Reference(x[sample], y_fit, record, n_jobs=-1)
    for a in range(0, len(rest), layouts.BLOCK_POINTS):
        y[rest[a:a + layouts.BLOCK_POINTS]] = ref.place(x[rest[a:a + layouts.BLOCK_POINTS]])
    return layout.refine(x, y, sample, record, seed=seed)[0] if refined else y


def transform_cost(n: int, dims: int, fit_points: int) -> None:
    """Fit `fit_points` synthetic points (50 Gaussian clusters), place n more in blocks: seconds per point."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, dims)) * 3

    def draw(m: int) -> np.ndarray:
        return centres[rng.integers(0, 50, m)] + rng.normal(size=(m, dims))

    x_fit, x_new = draw(fit_points), draw(n)
    cpu = time.process_time()  # all threads: what 2 idle cores would share (the machine may be busy)
    t = time.perf_counter()
    y_fit, record = layout.fit_layout(x_fit, fit_points + n, seed=0)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = layout.Reference(x_fit, y_fit, record, n_jobs=-1)
    ref_s = time.perf_counter() - t
    t, cpu_place = time.perf_counter(), time.process_time()
    for a in range(0, n, layouts.BLOCK_POINTS):
        ref.place(x_new[a:a + layouts.BLOCK_POINTS])
    place_s = time.perf_counter() - t
    cpu_place = time.process_time() - cpu_place
    total = 1_440_000  # a ViT-B's head layout at 10k images
    at_total = fit_s + ref_s + place_s / n * (total - fit_points)
    cpu_fit = time.process_time() - cpu - cpu_place  # the fit and the reference
    cpu_total = cpu_fit + cpu_place / n * (total - fit_points)
    print(f"| {dims}-d | fit {fit_points} | {fit_s:.1f} s | reference {ref_s:.1f} s | place {n} | {place_s:.1f} s | "
          f"{place_s / n * 1e6:.0f} µs/point | {total:,} points: {at_total:.0f} s | CPU: fit + reference "
          f"{cpu_fit:.0f} s, place {cpu_place / n * 1e6:.0f} µs/point, {total:,} points {cpu_total:.0f} CPU-s "
          f"| load {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="cache/demo.zarr")
    ap.add_argument("--layouts", nargs="+", default=["image_xy", "head_xy_cls", "head_xy_patch"])
    ap.add_argument("--sample", type=int, default=None, help="fit sample size (default: a quarter of the points)")
    ap.add_argument("--defaults", action="store_true", help="also openTSNE's default settings")
    ap.add_argument("--transform-cost", type=int, default=None, metavar="N", help="time placing N synthetic points")
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--unrefined", action="store_true", help="also the sample's layout without `layout.refine`")
    args = ap.parse_args()
    if args.transform_cost:
        transform_cost(args.transform_cost, args.dims, layout.FIT_POINTS)
        return
    data = inputs(args.store)
    print(f"{args.store}: | layout | points | version | seconds | ratio | keep | label purity (input) | load |")
    for name in args.layouts:
        x, labels = data[name]
        x = x.astype(np.float64)
        n = args.sample or max(len(x) // 4, 10)
        versions = [("before", before)] if args.defaults else []
        versions += [("full", lambda v: layout.tsne_2d(v, seed=0)), (f"sample {n}", lambda v, n=n: sampled(v, n))]
        if args.unrefined:
            versions.append((f"sample {n}, unrefined", lambda v, n=n: sampled(v, n, refined=False)))
        times, first = {}, None
        for version, fn in versions:
            t = time.perf_counter()
            y = fn(x)
            times[version] = time.perf_counter() - t
            first = first or version
            q = quality(x, y, labels)
            purity = ", ".join(f"{k} {q[k]:.3f} ({q[k + '_in']:.3f})" for k in labels)
            ratio = times[version] / times[first]
            print(f"| {name} | {len(x)} | {version} | {times[version]:.1f} | {ratio:.2f} | {q['keep']:.3f} | "
                  f"{purity} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
