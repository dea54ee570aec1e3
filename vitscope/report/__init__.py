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

__all__ = ["findings", "html", "sections"]

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


def sections(f: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(key, title, sentences, table rows) of each section present (the proxy needs P[true])."""
    out = []
    for key, write in (("model", prose.model), ("trends", prose.trends), ("importance", prose.importance),
                       ("structure", prose.structure), ("proxy", prose.proxy), ("curves", prose.curves)):
        section = write(f)
        if section is not None:
            out.append((key, *section))
    return out


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html(f: dict[str, Any], store: str, figures: Callable[[str], list[str]] | None = None) -> str:
    """The report page: each section's sentences, its figures (`figures(key)` → SVG texts) and its table."""
    parts = [f"<h1>What {esc(f['model'])} does with attention</h1>",
             f"<p class='meta'>vitscope report of <code>{esc(store)}</code>, written "
             f"{datetime.date.today().isoformat()}. Every sentence is computed from the store.</p>"]
    for key, title, sentences, rows in sections(f):
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append("<p>" + " ".join(esc(s) for s in sentences) + "</p>")
        parts += [f"<figure>{svg}</figure>" for svg in (figures(key) if figures else [])]
        parts.append(_table(rows))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>vitscope report — "
            f"{esc(f['model'])}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def write(store: str | Path, out: str | Path, curves: dict[str, Any] | None = None,
          figures: Callable[[str], list[str]] | None = None) -> Path:
    """Write the report of `store` to `out` (.html); returns the path written."""
    from vitscope.app.data import StoreData

    data = StoreData(Path(store))
    page = html(findings(data, curves), str(store), figures)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
