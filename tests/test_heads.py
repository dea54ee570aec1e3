"""`Head`, the one value heads travel as, and `parse_head`, the one reader of the forms people type."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitscope.errors import VitscopeError
from vitscope.heads import Head, Region, head_dict, parse_head, parse_heads, top_heads
from vitscope.vocab import WHOLE_HEAD


def test_every_form_reads_to_the_same_head():
    want = Head(3, 1, 5)
    for form in ("3:1:5", " 3 : 1 : 5 ", [3, 1, 5], (3, 1, 5), {"layer": 3, "head": 1, "mode": 5},
                 '{"layer": 3, "head": 1, "mode": 5}', want):
        assert parse_head(form) == want, form
    assert parse_head("3:1") == parse_head("3x1") == parse_head([3, 1]) == Head(3, 1, WHOLE_HEAD)
    assert parse_heads("2:0") == [Head(2, 0)] and parse_heads(["2:0", Head(1, 1)]) == [Head(2, 0), Head(1, 1)]


def test_a_region_round_trips_through_json():
    for h in (Head(1, 2, 5), Head(0, 3, Region(source=(0, 0, 2, 2), cls_rows=True))):
        assert parse_head(json.loads(json.dumps(head_dict(h)))) == h
        assert parse_head(json.dumps(head_dict(h))) == h
    assert Head(0, 3, Region()).label == "L0H3 (region)" and Head(2, 1).label == "L2H1 (mode 1)"
    assert Head(2, 1, 4).name == "L2H1"


@pytest.mark.parametrize("bad, says", [
    ("3", "LAYER:HEAD"), ("a:b", "LAYER:HEAD"), ("3:1:2:4", "LAYER:HEAD"), ("-1:0", "LAYER:HEAD"),
    ("{nope", "not JSON"), ({"layer": 1, "head": 2, "region": {"src": [0, 0, 1, 1]}}, "unknown region field 'src'"),
    ({"layer": 1, "head": 2, "region": {"source": [0, 0, 1]}}, "bad rectangle"), ([1, 2, 3, 4], "bad head"),
])
def test_bad_forms_are_one_line(bad, says):
    with pytest.raises(VitscopeError, match=says) as e:
        parse_head(bad)
    assert "\n" not in str(e.value)


def test_top_heads_ranks_by_pruned_probability():
    prob = np.array([[0.9, 0.2, 0.5], [0.1, 0.2, 0.95]])  # P'[true] with each head pruned
    assert top_heads(prob, 3) == [Head(1, 0), Head(0, 1), Head(1, 1)]  # ties keep the flat order
