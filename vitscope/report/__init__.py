"""`vitscope report STORE --out report.html`: what a store says about its model, as one offline file.

`findings` computes the numbers, `prose` writes each sentence from them, and this module lays them out with the
figures (vitscope.plots rendered to SVG, inline): one HTML file with no script and no external resource.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.errors import VitscopeError, check_writable, one_line, replacing
from vitscope.report import prose
from vitscope.report.findings import findings
from vitscope.text import esc
from vitscope.vocab import CURVE_IMAGES, EXPLAIN_IMAGES, EXPLAIN_SEED, NO_BASIS

__all__ = ["compare_sections", "curves", "explanations", "findings", "html", "sections", "write"]

CSS = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 900px; margin: 2em auto; line-height: 1.45;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 0.8em 0; } figure svg { max-width: 100%; height: auto; }
.meta { color: #666; font-size: 0.85em; }
"""


Sections = list[tuple[str, str, list[str], list[list[str]]]]  # (key, title, sentences, table rows)


def sections(f: dict[str, Any]) -> Sections:
    """The sections of one store's report (the proxy's needs P[true])."""
    out = []
    for key, write in (("model", prose.model), ("trends", prose.trends), ("importance", prose.importance),
                       ("structure", prose.structure), ("proxy", prose.proxy), ("effects", prose.effects),
                       ("curves", prose.curves), ("explanations", prose.explanations)):
        section = write(f)
        if section is not None:
            out.append((key, *section))
    return out


def compare_sections(r: dict[str, Any]) -> Sections:
    """The sections of two stores' report, from `vitscope.compare.compare()`'s result."""
    return [(key, *write(r)) for key, write in (("compare_models", prose.compare_models),
                                                ("compare_layers", prose.compare_layers),
                                                ("compare_heads", prose.compare_heads))]


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html(title: str, source: str, parts: Sections, figures: Callable[[str], list] | None = None) -> str:
    """The report page: each section's sentences, its figures (`figures(key)` → HoloViews elements, inline as SVG)
    and its table."""
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class='meta'>vitscope report of {esc(source)}, written {datetime.date.today().isoformat()}. Every "
            "sentence is computed from the store.</p>"]
    for key, heading, sentences, rows in parts:
        body.append(f"<h2>{esc(heading)}</h2>")
        body.append("<p>" + " ".join(esc(s, limit=None) for s in sentences) + "</p>")  # names: cut in findings
        body += [f"<figure>{svg(e)}</figure>" for e in (figures(key) if figures else [])]
        body.append(_table(rows))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def svg(element) -> str:
    """An element as inline SVG text (matplotlib's print rendering, without the XML prolog)."""
    from vitscope.plots import render

    text = render(element, io.BytesIO(), "svg").getvalue().decode("utf-8")
    return text[text.index("<svg"):]


def store_figures(data, f: dict[str, Any]) -> Callable[[str], list]:
    """Each section's figures: the vitscope.plots summaries of the store."""
    from vitscope import plots

    make = {"trends": lambda: plots.layer_trends(data), "importance": lambda: plots.importance_matrix(data),
            "structure": lambda: plots.pattern_kind_matrix(data),
            "proxy": lambda: plots.proxy_vs_exact(data) if f["proxy"] else None,
            "effects": lambda: plots.direct_vs_total(data) if f["effects"] and not f["effects"]["direct_why"] else None,
            "curves": lambda: plots.pruning_curves(f["curves"]) if f["curves"] else None,
            "explanations": lambda: plots.faithfulness_benchmark(f["explanations"]) if f["explanations"] else None}
    return lambda key: [e for e in [make[key]()] if e is not None] if key in make else []


def curve_steps(n_heads: int) -> list[int]:
    """The steps a report's curves show: every one of the first four (how fast the first heads matter), then eight
    even steps to all heads. The prunable count is exact whatever the steps (the service fills in the rest)."""
    return sorted({0, 1, 2, 3, 4, *(round(v) for v in np.linspace(0, n_heads, 9))} & set(range(n_heads + 1)))


def curves(store: str | Path, device: str = "cpu", images: int = CURVE_IMAGES,
           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The pruning curves of the store's images in every order (both directions), on a seeded sample of at most
    `images`: the service's, with the store's own model."""
    from vitscope.service.core import Service
    from vitscope.vocab import CURVE_ORDERS

    service = Service(store, device)
    n_heads = service.adapter.num_layers * service.adapter.num_heads
    return service.curve(orders=CURVE_ORDERS, steps=curve_steps(n_heads), max_images=images, progress=progress)


def explanations(store: str | Path, device: str = "cpu", images: int = EXPLAIN_IMAGES,
                 progress: Callable[[int, int], None] | None = None) -> tuple[dict | None, dict[str, str] | None]:
    """(the faithfulness benchmark of the four patch maps on a seeded sample of at most `images`, with the store's
    own model, or None; why not): a store without a class basis has no P[true] to follow, and a model that cannot
    be loaded here is said in the report, not raised (the rest of the report needs no model)."""
    from vitscope.readout.store_data import store_data
    from vitscope.service.core import Service

    if store_data(store).prob_basis == NO_BASIS:
        return None, {"reason": "no basis", "detail": ""}
    try:
        service = Service(store, device)
    except VitscopeError as e:
        return None, {"reason": "no model", "detail": one_line(e)}
    return service.explain_set(images, None, EXPLAIN_SEED, progress=progress), None


def write(stores: list[str | Path], out: str | Path, with_curves: bool = True, device: str = "cpu",
          curve_images: int = CURVE_IMAGES, progress: Callable[[int, int], None] | None = None,
          with_explain: bool = True, explain_images: int = EXPLAIN_IMAGES,
          explain_progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the report of one store, or of two stores compared, to `out` (.html, or .pdf); returns the path."""
    from vitscope.readout.store_data import store_data

    check_writable(out)  # before the pruning curves run the model
    if len(stores) == 2:
        from vitscope import plots
        from vitscope.compare import compare
        from vitscope.store import open_store

        r = compare(open_store(stores[0]), open_store(stores[1]))
        figures = lambda key: [plots.compare_trends(r)] if key == "compare_layers" else []  # noqa: E731
        title, source, parts = (f"{r['models'][0]} and {r['models'][1]}: what changed",
                                f"{stores[0]} (A) and {stores[1]} (B)", compare_sections(r))
    else:
        data = store_data(stores[0])
        found = curves(stores[0], device, curve_images, progress) if with_curves and data.prob_basis != NO_BASIS \
            else None
        explained, why = explanations(stores[0], device, explain_images, explain_progress) if with_explain \
            else (None, {"reason": "not asked", "detail": ""})
        f = findings(data, found, explained, why)
        title, source, parts, figures = (f"What {f['model']} does with attention", str(stores[0]), sections(f),
                                         store_figures(data, f))
    out = Path(out)
    if out.suffix.lower() == ".pdf":
        from vitscope.report.pdf import write_pdf

        pdf = io.BytesIO()  # made whole first: a PDF writer that hits a full disk fails again as it closes
        write_pdf(title, source, parts, figures, pdf)
        with replacing(out) as partial:
            partial.write_bytes(pdf.getvalue())
        return out
    page = html(title, source, parts, figures)
    with replacing(out) as partial:
        partial.write_text(page, encoding="utf-8")
    return out
