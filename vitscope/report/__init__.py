"""`vitscope report STORE --out report.html`: what a store says about its model, as one offline file.

`findings` computes the numbers, `prose` writes each sentence from them, and this module lays them out with the
figures (vitscope.plots rendered to SVG, inline): one HTML file with no script and no external resource.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitscope.report import prose
from vitscope.report.findings import findings
from vitscope.text import esc

__all__ = ["compare_sections", "findings", "html", "sections", "write"]

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
                       ("structure", prose.structure), ("proxy", prose.proxy), ("curves", prose.curves)):
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


def html(title: str, source: str, parts: Sections, figures: Callable[[str], list[str]] | None = None) -> str:
    """The report page: each section's sentences, its figures (`figures(key)` → SVG texts) and its table."""
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class='meta'>vitscope report of {esc(source)}, written {datetime.date.today().isoformat()}. Every "
            "sentence is computed from the store.</p>"]
    for key, heading, sentences, rows in parts:
        body.append(f"<h2>{esc(heading)}</h2>")
        body.append("<p>" + " ".join(esc(s, limit=None) for s in sentences) + "</p>")  # names: cut in findings
        body += [f"<figure>{svg}</figure>" for svg in (figures(key) if figures else [])]
        body.append(_table(rows))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def write(stores: list[str | Path], out: str | Path, curves: dict[str, Any] | None = None,
          figures: Callable[[str], list[str]] | None = None) -> Path:
    """Write the report of one store, or of two stores compared, to `out` (.html); returns the path written."""
    from vitscope.app.data import StoreData

    if len(stores) == 2:
        from vitscope.compare import compare
        from vitscope.store import open_store

        r = compare(open_store(stores[0]), open_store(stores[1]))
        page = html(f"{r['models'][0]} and {r['models'][1]}: what changed", f"{stores[0]} (A) and {stores[1]} (B)",
                    compare_sections(r), figures)
    else:
        f = findings(StoreData(Path(stores[0])), curves)
        page = html(f"What {f['model']} does with attention", str(stores[0]), sections(f), figures)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
