"""Sink heads in the app: the Attention Pattern View's info line names a sink head's share and its fixed target
patches, the Head Importance View draws it as a diamond with its share in the tooltip; a store without the sink
analysis (schema v2) opens and both views say it is missing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from app_helpers import fake_attention, make_store
from bokeh.models import ColumnDataSource, HoverTool

from vitscope import store
from vitscope.app.importance import HeadImportanceView
from vitscope.app.pattern_view import AttentionPatternView, head_kind_text
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.vocab import HEAD_KINDS

N, L, H, GRID = 12, 2, 3, 4
SINK = (1, 2)  # the head made a sink here, on patches 0, 3, 12 and 15: the corners of the 4 × 4 grid


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    out = make_store(tmp_path_factory.mktemp("sinks") / "s.zarr", N, L, H, GRID, 4)
    kind = zarr.open_array(str(out / "head_kind"), mode="r+")
    kinds = kind[...]
    kinds[kinds == HEAD_KINDS.index("sink")] = HEAD_KINDS.index("mixed")
    kinds[SINK] = HEAD_KINDS.index("sink")
    kind[...] = kinds
    share = zarr.open_array(str(out / "head_sink_share"), mode="r+")
    share[SINK] = 0.96875
    zarr.open_array(str(out / "head_sink_tokens"), mode="r+")[SINK] = [0, 3, 15, 12]
    return out


@pytest.fixture(scope="module")
def old(path, tmp_path_factory):
    """The same store as a v2 store: no sink variables."""
    out = tmp_path_factory.mktemp("v2") / "s.zarr"
    shutil.copytree(path, out)
    for name in (*store.SINK_VARIABLES, "prefix"):
        shutil.rmtree(out / name)
    zarr.open_group(str(out), mode="r+").attrs["vitscope_schema"] = 2
    zarr.consolidate_metadata(str(out))
    return out


def view_of(data: StoreData, image: int, layer: int, head: int) -> AttentionPatternView:
    sel = Selection()
    view = AttentionPatternView(data, sel, fake_attention(L, H, data.tokens),
                                ColumnDataSource({"image": [np.zeros((2, 2), np.uint32)]}))
    sel.param.update(image=image, layer=layer, head=head)
    view.update({"image", "layer", "head"})
    return view


def test_a_sink_head_is_named_with_its_share_and_patches(path):
    data = StoreData(path)
    text = head_kind_text(data, *SINK)
    agree = float(data.head_consistency[SINK])
    assert text == (f"sink head (agreement {agree:.2f}): 97% of its binarised maps' 1s on patches (0,0) (0,3) (3,3) "
                    "(3,0) in every image")
    assert text in view_of(data, 0, *SINK).info.text
    other = head_kind_text(data, 0, 0)  # not a sink: no patches named
    assert "sink" not in other and other.endswith(f"(agreement {float(data.head_consistency[0, 0]):.2f})")


def test_importance_view_draws_sink_heads_as_diamonds(path):
    data = StoreData(path)
    view = HeadImportanceView(data, Selection())
    src = view.source.data
    k = SINK[0] * H + SINK[1]
    assert src["kind"][k] == "sink" and src["marker"][k] == "diamond" and src["sink"][k] == pytest.approx(0.96875)
    assert [m for m in src["marker"] if m == "diamond"] == ["diamond"]
    tips = [dict(t.tooltips) for t in view.figure.tools if isinstance(t, HoverTool)][0]
    assert "@sink{0%}" in tips["on 4 targets"]


def test_a_store_without_sinks_opens_and_says_so(old):
    data = StoreData(old)
    assert not data.has_sinks and data.head_sink_share is None
    text = head_kind_text(data, 0, 0)
    assert text.endswith("sink analysis not in this store (rebuild it to add it)")
    assert text in view_of(data, 0, 0, 0).info.text
    view = HeadImportanceView(data, Selection())
    assert np.isnan(view.source.data["sink"]).all()
    tips = [dict(t.tooltips) for t in view.figure.tools if isinstance(t, HoverTool)][0]
    assert tips["sinks"] == "not in this store (rebuild it to add them)"
