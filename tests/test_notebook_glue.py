"""vitscope/app/notebook.py's fixes to Panel's notebook path, without a browser (tests/test_jupyter.py runs them in a
real JupyterLab; benchmarks/jupyter_browser.py times the taps they speed up): a message from the page finds its
data sources without a search of the model graph, and a rendered pane's first update keeps its stylesheets."""

from __future__ import annotations

import copy
import threading

import panel as pn
import panel.io.model
import panel.io.notebook
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


def echo(model, attr: str, new) -> dict:
    """A property change as the page sends it."""
    return {"kind": "ModelChanged", "model": {"id": model.id}, "attr": attr, "new": new}


def sent_changes(doc: Document, change) -> list:
    """The document events `change()` makes, as Panel's push would send them."""
    doc.hold("collect")
    try:
        change()
        return list(doc.callbacks._held_events)
    finally:
        doc.callbacks._held_events = []
        doc.callbacks._hold = None


def test_the_pages_late_echo_of_a_sent_value_is_dropped_and_a_users_change_kept(monkeypatch):
    """A tap's push, then a cell's change of the same property: the page's echo of the tap's value, arriving after the
    cell's, must not set the property back (the image id box would select the tapped image again)."""
    monkeypatch.setattr(notebook, "_sent", {})
    doc = Document()
    box, flag = Div(text="none"), Div(visible=True)
    doc.add_root(box)
    doc.add_root(flag)

    def tap_then_cell():
        box.text = "tapped"
        box.text = "from the cell"
        flag.visible = False

    notebook.note_sent(sent_changes(doc, tap_then_cell))
    msg = {"content": {"events": [echo(box, "text", "tapped"), echo(flag, "visible", 0)]}}
    notebook.drop_echoes(msg)
    assert msg["content"]["events"] == [echo(flag, "visible", 0)]  # 0 is not False: not an echo
    msg = {"content": {"events": [echo(box, "text", "typed"), echo(box, "text", "from the cell"),
                                  echo(flag, "visible", False), echo(box, "data", {"x": [1]})]}}
    notebook.drop_echoes(msg)
    assert msg["content"]["events"] == [echo(box, "text", "typed"), echo(box, "data", {"x": [1]})]
    msg = {"content": {"events": [echo(box, "text", "from the cell")]}}  # echoed once already: now the user's
    notebook.drop_echoes(msg)
    assert msg["content"]["events"] == [echo(box, "text", "from the cell")]

    notebook.note_sent(sent_changes(doc, lambda: [setattr(box, "text", v) for v in ("a", "b", "c")]))
    msg = {"content": {"events": [echo(box, "text", "b")]}}  # the page had "a" already: it echoes "b" only
    notebook.drop_echoes(msg)
    assert msg["content"]["events"] == [] and notebook._sent[box.id, "text"] == ["c"]


def test_an_update_of_the_app_and_a_page_message_take_turns_and_the_update_is_sent_first(monkeypatch):
    """JupyterLab's page messages are handled on a kernel subshell's thread while a cell runs: Panel's handling of one
    (hold, apply, unhold) gave a cell's held changes to nobody. Under `serialized()` the message waits, and the
    cell's changes are sent to the page before it is handled."""
    order, sent = [], []
    monkeypatch.setattr(panel.viewable.MimeRenderMixin, "_on_msg",
                        lambda self, ref, manager, msg: order.append("page message handled"))
    monkeypatch.setattr(panel.io.notebook, "diff", panel.io.notebook.diff)
    monkeypatch.setattr(notebook, "_serializing", False)
    monkeypatch.setattr(notebook, "_sent", {})
    notebook.serialize_comms()

    class Comm:  # pyviz_comms' Comm, open: what is sent is kept
        _comm = True

        def send(self, data=None, buffers=None):
            sent.append(data)

    doc, div = Document(), Div(text="before")
    doc.add_root(div)
    doc.hold("combine")  # as Panel holds a displayed document
    monkeypatch.setitem(pn.state._views, "test-ref", (None, div, doc, Comm()))
    page = threading.Thread(target=lambda: panel.viewable.MimeRenderMixin._on_msg(None, "test-ref", None, {}))
    with notebook.serialized():
        order.append("update begins")
        page.start()
        page.join(2)  # blocked on the update's turn: it does not end
        div.text = "from a cell"
        order.append("update ends")
    page.join(30)
    assert not page.is_alive(), "the page message never got its turn"
    assert order == ["update begins", "update ends", "page message handled"]
    assert any("from a cell" in s for s in sent if isinstance(s, str)), sent  # sent when the update ended
    assert notebook._sent[div.id, "text"] == ["from a cell"]  # and its echo will be known
