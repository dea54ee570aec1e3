"""`vitscope export` argument checks, head choice, and the notebook's export cell's file (the rendered page is checked
in test_browser.py)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from app_helpers import make_store

from vitscope.app.export import DEFAULT_HEADS, export
from vitscope.errors import VitscopeError
from vitscope.heads import Head, parse_head
from vitscope.readout.importance import most_important_heads
from vitscope.readout.store_data import StoreData
from vitscope.vocab import WHOLE_HEAD

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ex") / "s.zarr"
    make_store(out, images=6, layers=3, heads=4, grid=4, classes=3)
    return out


def test_parse_head():
    """`export --heads` takes a head alone (no mode)."""
    assert parse_head("3:7", modes=False) == Head(3, 7) and parse_head("0x2", modes=False) == Head(0, 2)
    for bad in ("3", "a:b", "1:2:3", "-1:2", '{"layer": 1, "head": 2}'):
        with pytest.raises(VitscopeError, match="LAYER:HEAD"):
            parse_head(bad, modes=False)


def test_most_important_heads_match_a_sort(store):
    data = StoreData(store)
    for metric in ("prob", "jsd"):
        v = data.importance[2, :, :, 1, data.metrics.index(metric)]  # [L, H]
        flat = sorted(((float(v[l_, h]), (l_, h)) for l_ in range(3) for h in range(4)), reverse=metric != "prob")
        assert most_important_heads(data, 2, metric, 1, 5) == [lh for _, lh in flat[:5]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(image=99), "out of range"),
    (dict(image=-1), "out of range"),
    (dict(image=0, heads=[(3, 0)]), "not in this model"),
])
def test_bad_requests_are_one_clear_line(store, tmp_path, kwargs, message):
    with pytest.raises(VitscopeError, match=message) as e:
        export(store, out=tmp_path / "x.html", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.html").exists()


def snapshot_models(text: str) -> list[dict]:
    """Every Bokeh model of a snapshot file, from the JSON document Bokeh embeds in it."""
    [block] = re.findall(r'<script type="application/json" id="[^"]*">\s*(.*?)\s*</script>', text, flags=re.S)
    found = []

    def walk(o) -> None:
        if isinstance(o, dict):
            if o.get("type") == "object":
                found.append(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(json.loads(html.unescape(block)))
    return found


def check_snapshot(path: Path, store: Path, image: int) -> None:
    """`path` is `export(store, image)`'s file: one offline page with that image's header and a tab for each of its
    DEFAULT_HEADS most important heads, in order."""
    data = StoreData(store)
    text = path.read_text(encoding="utf-8")
    name, true = data.image_ids[image], data.class_names[int(data.label[image])]
    assert f"<title>vitscope — image {image} ({name})</title>" in text
    assert "<script src=" not in text and "cdn.bokeh.org" not in text  # inline resources only: opens offline
    models = snapshot_models(text)
    header = [m["attributes"]["text"] for m in models if m["name"] == "Div"
              and "vitscope snapshot" in m["attributes"].get("text", "")]
    assert len(header) == 1 and f"image {image} <code>{name}</code>, true label <b>{true}</b>" in header[0], header
    tabs = [m["attributes"]["title"] for m in models if m["name"] == "TabPanel"]
    heads = most_important_heads(data, image, "prob", WHOLE_HEAD, DEFAULT_HEADS)
    assert tabs == [Head(layer, head).name for layer, head in heads]


def test_the_notebooks_cells_run_and_its_export_cell_writes_the_snapshot(demo16, tmp_path, monkeypatch):
    """apps/explore.ipynb as written (its STORE pointed at a test store), without Jupyter or a browser: every cell
    runs, Python's selection reaches the app, and the export cell writes image 3's snapshot where it says."""
    import panel as pn

    monkeypatch.chdir(tmp_path)
    nb = json.loads((ROOT / "apps" / "explore.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert 'out="snapshot.html"' in cells[-1] and "image=3" in cells[-1]
    scope: dict = {}
    for src in cells:
        exec(compile(src.replace('cache_root() / "demo.zarr"', repr(str(demo16))), "explore.ipynb", "exec"), scope)
    app = scope["app"]
    assert (app.selection.image, app.selection.layer, app.selection.head) == (3, 2, 1)
    pn.panel(app).get_root()
    check_snapshot(tmp_path / "snapshot.html", demo16, 3)
