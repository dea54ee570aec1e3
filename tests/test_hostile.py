"""Hostile input: an image set from the web, with names that are HTML/JS, quotes, newlines, right-to-left and
zero-width characters, very long names and leading dashes, and files made to break a decoder (truncated,
empty, a decompression bomb, very large, CMYK, 16-bit, animated, EXIF-rotated, a symlink loop, unreadable).

The build skips each bad image with one line naming it and finishes with the rest; no name runs script in
the served page (Chromium), the exported snapshot opened from disk, or the notebook's output; names are
shown literally; `info` and `ablate --file` print one line per problem.
"""

from __future__ import annotations

import csv
import io
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from vitscope.errors import VitscopeError
from vitscope.imagesets.folders import MAX_PIXELS, BadImage, image_folder, read_rgb
from vitscope.text import esc, printable

XSS_FILE = '0<img src=y onerror="window.__x2=1">.png'  # the repro of the issue
XSS_CLASS = "<img src=x onerror=window.__x3=1>"
FORMULA_CLASS = "=cmd|' /C calc'!A0"
GOOD_NAMES = [XSS_FILE, "it's \"quoted\" & <b>bold.png", "new\nline.png", "evil\u202egnp.jpg",
              "zero\u200bwidth.png", "-rf.png", "--help.png", "L" * 200 + ".png", "caf\u00e9 \u732b.png"]
BAD = {"truncated.png": "truncated", "empty.jpg": "empty", "bomb.png": "decompression bomb",
       "toolarge.png": "megapixel", "notanimage.jpg": "cannot identify"}
TIMEOUT = 600
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def picture(seed: int, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_corpus(root: Path) -> dict[str, list[str]]:
    """The image folder; returns the file names that must be analysed ('good') and skipped ('bad')."""
    cat, other, formula = root / "cat", root / XSS_CLASS, root / FORMULA_CLASS
    for d in (cat, other, formula):
        d.mkdir(parents=True)
    for i, name in enumerate(GOOD_NAMES):
        picture(i).save(cat / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    picture(20).save(other / "x.png")
    picture(21).save(formula / "y.png")
    good = list(GOOD_NAMES)
    # Decodable oddities: CMYK, 16-bit, animated, EXIF-rotated, a huge JPEG (decoded downscaled).
    picture(30).convert("CMYK").save(cat / "cmyk.jpg")
    Image.fromarray((np.random.default_rng(31).random((40, 40)) * 65535).astype(np.uint16)).save(cat / "deep.png")
    frames = [picture(32 + k) for k in range(3)]
    frames[0].save(cat / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    picture(35, 40).crop((0, 0, 40, 24)).save(cat / "exif.jpg", exif=exif)
    side = int((MAX_PIXELS * 1.3) ** 0.5)
    Image.new("RGB", (side, side), (200, 40, 40)).save(cat / "huge.jpg", quality=50)
    good += ["cmyk.jpg", "deep.png", "anim.gif", "exif.jpg", "huge.jpg"]
    # Bad ones.
    buf = io.BytesIO()
    picture(40, 64).save(buf, format="PNG")
    (cat / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    Image.new("L", (20000, 20000)).save(cat / "bomb.png")  # 400 megapixels in 0.4 MB
    Image.new("L", (side, side)).save(cat / "toolarge.png")  # over the bound, and PNG cannot decode downscaled
    (cat / "notanimage.jpg").write_text("<script>window.__x4=1</script>")
    bad = list(BAD)
    # A symlink loop (never listed) and, when not root, a file nobody may read.
    os.symlink("loop2.png", cat / "loop1.png")
    os.symlink("loop1.png", cat / "loop2.png")
    os.symlink("..", cat / "up")
    if not ROOT:
        picture(50).save(cat / "unreadable.png")
        os.chmod(cat / "unreadable.png", 0)
        bad.append("unreadable.png")
    return {"good": good, "bad": bad}


def run(*args: str, env: dict | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hostile") / "images"
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root, _ = corpus
    out = tmp_path_factory.mktemp("hostile-store") / "s.zarr"
    r = run("build", "--model", "demo", "--images", str(root), "--out", str(out), "--quiet", "--ae-epochs", "1",
            "--chunk-size", "8")
    return out, r


# -- decoding -------------------------------------------------------------------------------------------------


def test_each_bad_image_is_one_line_and_the_build_finishes(corpus, built):
    root, names = corpus
    out, r = built
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    for name in names["bad"]:
        said = [line for line in lines if line.startswith("skipped ") and f"cat/{name}" in line]
        assert len(said) == 1, (name, r.stderr)
        assert BAD.get(name, "") in said[0].lower(), said
    ds = xr.open_zarr(out)
    ids, valid = list(ds.image_id.values), ds.valid.values
    for name in names["good"]:
        assert valid[ids.index(f"cat/{name}")], name
    for name in names["bad"]:
        assert not valid[ids.index(f"cat/{name}")], name
    assert valid[ids.index(f"{XSS_CLASS}/x.png")] and valid[ids.index(f"{FORMULA_CLASS}/y.png")]
    assert not any("loop" in i or i.startswith("cat/up/") for i in ids)  # a symlink loop is never followed
    assert set(ds.attrs.get("layouts_pending", [])) == set()


def test_rerunning_the_build_keeps_what_was_written(corpus, built):
    root, _ = corpus
    out, _ = built
    before = xr.open_zarr(out).load()
    r = run("build", "--model", "demo", "--images", str(root), "--out", str(out), "--quiet", "--ae-epochs", "1",
            "--chunk-size", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    after = xr.open_zarr(out).load()
    xr.testing.assert_identical(before, after)


def test_large_images_are_decoded_downscaled_or_refused_from_the_header(corpus):
    root, _ = corpus
    huge = read_rgb(root / "cat" / "huge.jpg")  # 1.3 × the bound: the JPEG decoder's 1/2 scale
    assert huge.width * huge.height <= MAX_PIXELS and huge.getpixel((10, 10))[0] > 150
    for name, words in (("bomb.png", "decompression bomb"), ("toolarge.png", "megapixel")):
        with pytest.raises(BadImage, match=words):
            read_rgb(root / "cat" / name)


def test_odd_but_valid_images_decode_as_their_standard_loader(corpus):
    root, _ = corpus
    assert read_rgb(root / "cat" / "cmyk.jpg").mode == "RGB"
    deep = np.asarray(read_rgb(root / "cat" / "deep.png"))
    assert deep.dtype == np.uint8 and deep.max() > 200  # 16-bit scaled down, not clipped to white
    gif = read_rgb(root / "cat" / "anim.gif")
    assert gif.size == (48, 48)
    first = np.asarray(Image.open(root / "cat" / "anim.gif").convert("RGB"))
    assert np.array_equal(np.asarray(gif), first)  # the first frame
    assert read_rgb(root / "cat" / "exif.jpg").size == (40, 24)  # orientation not applied, as torchvision


def test_an_unreadable_file_is_skipped_even_as_root(tmp_path, monkeypatch):
    """Root reads a file of mode 000, so the permission error is raised by the opener the build uses."""
    from vitscope import build as build_module

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for k in range(3):
            picture(k).save(tmp_path / "img" / c / f"{k}.png")
    real_open = Image.open

    def guarded(fp, *a, **kw):
        if str(fp).endswith(os.path.join("b", "1.png")):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", guarded)
    out = tmp_path / "s.zarr"
    build_module.build(build_module.BuildConfig(model="demo", images=str(tmp_path / "img"), out=out, chunk=4,
                                                ae_epochs=1, progress=False))
    ds = xr.open_zarr(out)
    ids = list(ds.image_id.values)
    assert not ds.valid.values[ids.index("b/1.png")] and ds.valid.values.sum() == 5


def test_a_labels_csv_with_formulas_bad_encoding_or_paths_outside(tmp_path):
    (tmp_path / "img").mkdir()
    for k in range(4):
        picture(k).save(tmp_path / "img" / f"{k}.png")
    good = tmp_path / "labels.csv"
    with good.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file", "label"], ["0.png", "=cmd|' /C calc'!A0"], ["1.png", "@SUM(1+1)"],
                                 ["2.png", "=cmd|' /C calc'!A0"], ["3.png", "+1"]])
    ims = image_folder(tmp_path / "img", 10, labels_csv=good)
    assert "=cmd|' /C calc'!A0" in ims.class_names  # a formula is a name like any other: shown, never run
    latin = tmp_path / "latin.csv"
    latin.write_bytes("0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(VitscopeError, match="not UTF-8"):
        image_folder(tmp_path / "img", 10, labels_csv=latin)
    outside = tmp_path / "outside.csv"
    outside.write_text("../labels.csv,1\n")
    with pytest.raises(VitscopeError, match="outside the image folder"):
        image_folder(tmp_path / "img", 10, labels_csv=outside)


# -- text, never markup ---------------------------------------------------------------------------------------


def test_esc_and_printable():
    assert esc(XSS_FILE) == "0&lt;img src=y onerror=&quot;window.__x2=1&quot;&gt;.png"
    assert esc("it's") == "it&#x27;s"
    assert printable("a\nb\x1b[31m") == "a\\x0ab\\x1b[31m"  # one line, no terminal escape sequence
    assert printable("evil\u202egnp.jpg") == "evil\\u202egnp.jpg"  # the override is shown, not obeyed
    assert printable("zero\u200bwidth") == "zero\\u200bwidth"
    assert printable("caf\u00e9 \u732b") == "caf\u00e9 \u732b"  # ordinary letters of any script stay
    long = printable("x" * 1000, limit=50)
    assert len(long) == 50 and "…" in long


def test_info_prints_names_as_one_visible_line_each(built):
    out, _ = built
    r = run("info", str(out), "--class", "<img")
    assert r.returncode == 0, r.stderr
    assert "\u202e" not in r.stdout and "\x1b" not in r.stdout
    assert XSS_CLASS in r.stdout  # literally
    r = run("info", str(out), "--class", "no such\nclass")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ablate_file_refuses_a_bomb_and_shows_a_hostile_name_literally(built, corpus, tmp_path):
    out, _ = built
    root, _ = corpus
    r = run("ablate", str(out), "--file", str(root / "cat" / "bomb.png"))
    said = [line for line in r.stderr.splitlines() if line.startswith("vitscope ablate: error:")]
    assert r.returncode == 2 and len(said) == 1 and "decompression bomb" in said[0] and "Traceback" not in r.stderr
    hostile = tmp_path / "new\u202e<img src=z onerror=alert(1)>.png"
    picture(60).save(hostile)
    r = run("ablate", str(out), f"--file={hostile}", "--json")
    assert r.returncode == 0, r.stderr
    assert "\u202e" not in r.stdout  # JSON escapes it


# -- the page, the snapshot and the notebook in Chromium --------------------------------------------------------

CHROMIUM = shutil.which("chromium")  # on PATH, as test_browser.py finds it
INJECTED = "() => [window.__x2, window.__x3, window.__x4, window.__x5].filter(v => v !== undefined).length"


def browser():
    if CHROMIUM is None:  # under CI=true this skip fails the test (tests/ci_skips.py)
        pytest.skip("Debian's chromium is not on PATH (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    return sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], url: str, timeout: float = 300) -> subprocess.Popen:
    """`vitscope ARGS` in the background, once it prints `url` (killed, with its output, if it does not in time)."""
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if url in seen[-1]:
            return proc
    proc.kill()
    raise AssertionError(f"vitscope {' '.join(args)} did not print {url} in {timeout} s: {''.join(seen)[-2000:]}")


def page_text(page) -> str:
    """All text of the page, shadow roots included (Panel and Bokeh render into them)."""
    return page.evaluate("""() => { const out = [];
      const walk = n => { if (n.shadowRoot) walk(n.shadowRoot);
        for (const c of n.childNodes) { if (c.nodeType === 3) out.push(c.textContent); else walk(c); } };
      walk(document.body); return out.join(' '); }""")


def test_no_name_runs_script_in_the_served_page_and_names_show_literally(built, corpus, tmp_path):
    out, _ = built
    sync_playwright = browser()
    ds = xr.open_zarr(out)
    ids = list(ds.image_id.values)
    port = free_port()
    proc = start_server(["serve", str(out), "--port", str(port)], f"http://localhost:{port}/")
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1600, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://localhost:{port}/", timeout=120_000)
            page.wait_for_selector(".vs-image-id input", timeout=120_000)
            box = page.locator(".vs-image-id input")
            for name in (XSS_FILE, "it's \"quoted\" & <b>bold.png", "evil\u202egnp.jpg"):
                box.fill(str(ids.index(f"cat/{name}")))
                box.press("Enter")
                want = esc(name).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                want = want.replace("&#x27;", "'").replace("&amp;", "&")
                deadline = time.time() + 60
                while want not in page_text(page) and time.time() < deadline:
                    time.sleep(0.3)
                assert want in page_text(page), (name, page_text(page)[:2000])
            page.locator(".vs-image-id input").fill(str(ids.index(f"{XSS_CLASS}/x.png")))
            page.locator(".vs-image-id input").press("Enter")
            # The class search, submitted: the hostile class's name is a suggestion (as text) and then in the Image
            # Overview's title (the Bokeh model, read from the page), and the selection takes that class.
            from test_browser import MODEL_JS

            search = page.locator(".vs-class-search input")
            search.click()
            search.press_sequentially("<img")  # key by key, as typed: the suggestions follow each key
            page.locator(".vs-class-search").get_by_text(XSS_CLASS, exact=True).wait_for(timeout=60_000)
            search.press("Enter")  # takes the first suggestion
            title = f"class {XSS_CLASS!r}"
            deadline = time.time() + 60
            while title not in (page.evaluate(MODEL_JS, ["vs-overview-fig", "title.text"]) or "") and \
                    time.time() < deadline:
                time.sleep(0.3)
            assert title in page.evaluate(MODEL_JS, ["vs-overview-fig", "title.text"]), page_text(page)[:2000]
            assert "no class matches" not in page_text(page)
            assert page.evaluate(INJECTED) == 0
            upload = tmp_path / "up"
            upload.mkdir()
            hostile = upload / '5<img src=q onerror="window.__x5=1">.png'
            picture(70).save(hostile)
            page.locator("input[type=file]").set_input_files(str(hostile))
            deadline = time.time() + 120
            while "window.__x5=1" not in page_text(page) and time.time() < deadline:
                time.sleep(0.5)
            assert '5<img src=q onerror="window.__x5=1">.png' in page_text(page)
            assert page.evaluate(INJECTED) == 0
            assert XSS_CLASS in page_text(page)
            assert not [e for e in errors if "__x" in e], errors
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shows_the_name_and_runs_nothing(html: Path) -> None:
    """Open a saved page from disk in Chromium: the hostile file name shows literally and no injected script ran."""
    sync_playwright = browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(html.as_uri(), timeout=120_000)
        deadline = time.time() + 60
        while XSS_FILE not in page_text(page) and time.time() < deadline:
            time.sleep(0.3)
        assert XSS_FILE in page_text(page)
        assert page.evaluate(INJECTED) == 0
        b.close()


def test_no_name_runs_script_in_the_snapshot_opened_from_disk(built, tmp_path):
    out, _ = built
    ids = list(xr.open_zarr(out).image_id.values)
    snap = tmp_path / "snap.html"
    r = run("export", str(out), "--image", str(ids.index(f"cat/{XSS_FILE}")), "--heads", "0:0", "--out", str(snap))
    assert r.returncode == 0, r.stderr
    shows_the_name_and_runs_nothing(snap)


def test_no_name_runs_script_in_the_comparison_opened_from_disk(built, tmp_path):
    """`vitscope export A B`: the store against a copy whose top-1 differs on the hostile image, so its name is in the
    caption and in the disagreement table (and the other class's name in the table's top-1 column)."""
    import zarr

    out, _ = built
    ids = list(xr.open_zarr(out).image_id.values)
    image = ids.index(f"cat/{XSS_FILE}")
    other = tmp_path / "other.zarr"
    shutil.copytree(out, other)
    top = zarr.open_group(str(other))["topk_idx"]
    cls = list(xr.open_zarr(out).class_name.values).index(XSS_CLASS)
    top[image, 0, 0, 0, 0] = cls
    snap = tmp_path / "cmp.html"
    r = run("export", str(out), str(other), "--image", str(image), "--out", str(snap))
    assert r.returncode == 0, r.stderr
    shows_the_name_and_runs_nothing(snap)


def test_no_name_runs_script_in_the_notebook_output(built, tmp_path):
    """The notebook's Explorer, rendered as Jupyter would (its HTML output with the resources inline)."""
    import panel as pn
    from bokeh.resources import INLINE

    from vitscope.app import Explorer

    out, _ = built
    ids = list(xr.open_zarr(out).image_id.values)
    app = Explorer(out)
    app.selection.image = ids.index(f"cat/{XSS_FILE}")
    page_file = tmp_path / "notebook.html"
    pn.panel(app).save(page_file, resources=INLINE)
    shows_the_name_and_runs_nothing(page_file)
