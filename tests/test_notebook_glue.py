"""vitscope/app/notebook.py's fixes to Panel's notebook path, without a browser (tests/test_jupyter.py runs them in a
real JupyterLab; benchmarks/jupyter_browser.py times the taps they speed up): a message from the page finds its
data sources without a search of the model graph, and a rendered pane's first update keeps its stylesheets."""

from __future__ import annotations

import copy

import panel as pn
import panel.io.model
import panel.viewable
import pytest
from bokeh.document import Document
from bokeh.model import Model
from bokeh.models import ColumnDataSource, Div
from bokeh.plotting import figure

from vitscope.app import notebook


@pytest.fixture
def panel_names(monkeypatch):
    """Panel's module-level names that notebook.py replaces, restored after the test."""
    for name in ("patch_cds_msg", "patch_inline_stylesheets"):
        monkeypatch.setattr(panel.viewable, name, getattr(panel.viewable, name))


def test_a_message_from_the_page_finds_its_data_sources_by_id(panel_names, monkeypatch):
    """The page echoes every change the kernel sends, ~19 data sources a tap; Panel's lookup searched the whole
    model graph for each (seconds a tap with the app's ~900 models)."""
    doc = Document()
    sources = [ColumnDataSource({"x": [0, 1]}) for _ in range(3)]
    fig = figure()
    for src in sources:
        fig.scatter("x", "x", source=src)
    root = pn.Column(*(Div(text=str(k)) for k in range(50)), fig).get_root(doc)
    if root.document is None:  # as Panel's notebook render has it: the root in its document
        doc.add_root(root)
    events = [{"kind": "ModelChanged", "attr": "data", "model": {"id": src.id},
               "new": {"x": {"1": 5, "0": 4}, "y": [1, 2]}} for src in sources]
    events.append({"kind": "ModelChanged", "attr": "text", "model": {"id": fig.id}, "new": "t"})
    msg = {"content": {"events": events}}
    expected = copy.deepcopy(msg)
    panel.io.model.patch_cds_msg(root, expected)  # Panel's own, for the same result

    notebook.index_comm_data_lookups()
    assert panel.viewable.patch_cds_msg is notebook._patch_cds_msg  # the name Panel's _on_msg calls

    def search(*_):
        raise AssertionError("searched the model graph")

    monkeypatch.setattr(Model, "select_one", search)
    panel.viewable.patch_cds_msg(root, msg)
    assert msg == expected
    assert msg["content"]["events"][0]["new"]["x"] == [4, 5]


def test_a_panes_first_update_keeps_the_stylesheets_it_was_rendered_with(panel_names, monkeypatch):
    """Panel's inline render gave every model its own copy of each stylesheet, and a pane's first update replaced
    them with the document cache's: new models, and a walk of the whole document on the app's first tap."""
    monkeypatch.setattr(pn.extension, "_loaded", True)
    notebook.share_inline_stylesheets()
    html = pn.pane.HTML("a")
    shown = pn.Column(html, pn.pane.Markdown("b"))
    with pn.config.set(inline=True, console_output="disable"):
        assert shown._repr_mimebundle_() is not None
    ref = next(r for r, view in pn.state._views.items() if view[0] is shown)
    try:
        model, doc = html._models[ref][0], pn.state._views[ref][2]
        rendered, models = list(model.stylesheets), len(doc.models)
        sheets = [s for s in rendered if not isinstance(s, str)]
        assert sheets and all(type(s).__name__ == "_Inline" for s in sheets), rendered  # inline, from the cache
        html.object = "changed"
        assert model.text.endswith("changed")
        assert len(model.stylesheets) == len(rendered)
        # the same models: nothing new to send
        assert all(a is b for a, b in zip(model.stylesheets, rendered, strict=True))
        assert len(doc.models) == models
    finally:
        pn.state._views.pop(ref, None)
