"""First `vitscope demo` on an empty cache: time to its URL and to a complete store; bytes per image; ViT-B size.

    python benchmarks/build.py                 # demo: 1000 images, into a temporary cache
    python benchmarks/build.py --limit 200     # quicker
    python benchmarks/build.py --build-only    # `build()` in this process, no server: each stage's time

Runs `vitscope demo --port P` in a subprocess with an empty $VITSCOPE_CACHE, as a new user would, and
reports the seconds until it prints its URL (goal ≤ 90 s) and until the store's last layout is written (goal
≤ 180 s; the layouts are computed in the background while the app is served), each stage's time from its
progress bar, the machine load (`uptime`) around the run, and each figure over a baseline measured in the
same run: the unpruned demo model over the same images (forward only, no ablation), a CPU-bound measure of
what this machine gives right now. Then the store's bytes per image without thumbnails; for ViT-B/16
(12 × 12 heads, 197 tokens) the size is estimated from the schema (uncompressed: an upper bound), scaled by
the compression ratio measured on the demo store. Not a test: timings are noisy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the baseline runs as the CLI does (vitscope/cli/__init__.py)

import argparse  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402

from vitscope import store  # noqa: E402
from vitscope.analysis.binary import top_count  # noqa: E402


def raw_bytes_per_image(lay: store.Shape, skip=("thumbnail", "attention")) -> int:
    sizes = lay.sizes()
    total = 0
    for name, (dims, dtype) in lay.variables().items():
        if name in skip:
            continue
        total += int(np.prod([sizes[d] for d in dims if d != "image"])) * np.dtype(dtype).itemsize
    return total


def disk_bytes(path: Path, skip=("thumbnail",)) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not any(s in f.parts for s in skip))


def uptime() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def baseline(limit: int | None) -> float:
    """Seconds of the unpruned demo model over the demo images (batches of 16, forward only)."""
    import torch

    from vitscope.imagesets import demo
    from vitscope.models import load_model

    images, _ = demo.eval_set(limit or 1000)
    model = load_model("demo").model
    x = demo.to_tensor(images)
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(x), 16):
            model(x[s:s + 16])
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_seconds(lines: list[str], desc: str) -> float | None:
    """Elapsed time of a finished tqdm bar from its last line: '… [01:02<00:00, 16.1img/s]'."""
    done = [ln for ln in lines if ln.startswith(desc) and "100%" in ln]
    m = re.search(r"\[(?:(\d+):)?(\d+):(\d+)<", done[-1]) if done else None
    if not m:
        return None
    h, mm, ss = (int(g or 0) for g in m.groups())
    return 3600 * h + 60 * mm + ss


def run_demo(cache: Path, limit: int | None, timeout: float) -> dict:
    """Start `vitscope demo` on an empty cache; time its URL and its store's last layout; stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "vitscope.cli", "demo", "--port", str(port)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "VITSCOPE_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
    got: dict = {"stderr": []}

    def read_stdout() -> None:
        for line in proc.stdout:
            if "http://" in line and "url" not in got:
                got["url"] = time.perf_counter() - t0

    def read_stderr() -> None:
        buf = ""
        while ch := proc.stderr.read(1):  # tqdm redraws with \r: split on both
            if ch in "\r\n":
                if buf.strip():
                    got["stderr"].append(buf.strip())
                buf = ""
            else:
                buf += ch

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for r in readers:
        r.start()
    path = cache / ("demo.zarr" if limit is None else f"demo-{limit}.zarr")
    try:
        while time.perf_counter() - t0 < timeout and proc.poll() is None:
            if "url" in got and "complete" not in got:
                try:
                    attrs = zarr.open_group(str(path), mode="r").attrs
                    if attrs.get("complete") and attrs.get("layouts_pending") == []:
                        got["complete"] = time.perf_counter() - t0
                        break
                except Exception:  # noqa: BLE001 - being written: look again
                    pass
            time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for r in readers:
            r.join(5)
    if "complete" not in got:
        tail = "\n".join(got["stderr"][-10:])
        raise SystemExit(f"the demo did not complete its store in {timeout:.0f} s (rc {proc.returncode}):\n{tail}")
    got["path"] = path
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--build-only", action="store_true", help="build() in this process (no server), per stage")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    print(f"before: {uptime()}", flush=True)
    base = baseline(args.limit)
    print(f"baseline: unpruned demo model over {args.limit or 1000} images, {base:.2f} s ({uptime()})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.build_only:
            from vitscope.build import BuildConfig, build

            out = Path(tmp) / "demo.zarr"
            cfg = BuildConfig(model="demo", images="demo", out=out, limit=args.limit, overwrite=True)
            t, timings = time.perf_counter(), {}
            build(cfg, timings=timings)
            total = time.perf_counter() - t
            print(f"build {total:.1f} s ({total / base:.0f}× baseline) — "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"  ({uptime()})")
        else:
            got = run_demo(Path(tmp), args.limit, args.timeout)
            out = got["path"]
            lines = got["stderr"]
            stages = {name: stage_seconds(lines, desc) for name, desc in (
                ("images", "analysing images"), ("autoencoder", "pattern autoencoder"),
                ("image_xy", "tSNE layouts: image_xy"), ("head_xy_cls", "tSNE layouts: head_xy_cls"),
                ("head_xy_patch", "tSNE layouts: head_xy_patch"))}
            print(f"vitscope demo on an empty cache: URL after {got['url']:.1f} s (goal ≤ 90 s; "
                  f"{got['url'] / base:.0f}× baseline), complete store after {got['complete']:.1f} s "
                  f"(goal ≤ 180 s; {got['complete'] / base:.0f}× baseline)  ({uptime()})")
            print("  stages (from their progress bars, whole seconds): "
                  + ", ".join(f"{k} {v:.0f} s" if v is not None else f"{k} ?" for k, v in stages.items()))
        lay = store.read_shape(out)
        n = lay.images
        disk = disk_bytes(out)
        raw = raw_bytes_per_image(lay) * n
        print(f"  on disk without thumbnails: {disk / n / 1e3:.1f} kB per image "
              f"(uncompressed {raw / n / 1e3:.1f} kB; compression {raw / disk:.2f}x)")
        vitb = store.Shape(images=1000, layers=12, heads=12, classes=1000, grid=14, tokens=197, topk=5,
                            latent=16, binary_size=196, binary_ones=top_count(0.01, 196), thumb=(224, 224), chunk=64)
        est = raw_bytes_per_image(vitb)
        print(f"ViT-B/16 estimate: {est / 1e6:.3f} MB per image uncompressed, "
              f"~{est / (raw / disk) / 1e6:.3f} MB at the demo's compression (goal ≤ 0.3 MB); "
              f"raw attention would be {12 * 12 * 197 * 197 * 2 / 1e6:.1f} MB per image in float16")
        ds = xr.open_zarr(str(out))
        print(f"  autoencoder loss per epoch: {', '.join(f'{v:.4f}' for v in ds.attrs['ae_loss'])}")


if __name__ == "__main__":
    main()
