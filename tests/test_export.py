"""`vitscope export` argument checks and head choice (the rendered file is checked in test_browser.py)."""

from __future__ import annotations

import pytest
from app_helpers import make_store

from vitscope.app.export import export
from vitscope.errors import VitscopeError
from vitscope.heads import Head, parse_head
from vitscope.readout.importance import most_important_heads
from vitscope.readout.store_data import StoreData


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
