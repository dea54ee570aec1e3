"""No import circle among vitscope's modules: every import counts, at module level, inside a function or under
TYPE_CHECKING, since an import deferred into a function still ties the two modules together."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitscope"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module of the package at `root` (a package by its __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(root: Path) -> dict[str, set[str]]:
    """module → the package's modules it imports anywhere in its code (`from a import b` is a.b when b is a
    module, else a)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # what `from .` means
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_vitscope_modules():
    graph = imports(PACKAGE)
    assert "vitscope.build" in graph["vitscope.cli.build"]  # imported inside cmd_demo: function-level imports count
    found = cycles(graph)
    assert not found, "import circles: " + "; ".join(
        " ↔ ".join(c) + " (" + ", ".join(f"{a} → {b}" for a in c for b in sorted(graph[a] & set(c))) + ")"
        for c in found)


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    assert cycles(imports(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def layer_rules(text: str) -> list[tuple[list[str], list[str] | None]]:
    """The Layers table of docs/architecture.md, top row first: (the row's modules and folders as dotted names,
    the layers it may import besides the first row's; None for everything). Names in parentheses are comments."""
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    out = []
    for line in rows:
        first, _, allowed = (c.strip() for c in line.strip().strip("|").split("|"))
        names = ["vitscope." + n.removesuffix(".py").removesuffix("/").replace("/", ".")
                 for n in re.findall(r"`([\w./]+)`", first)]
        allowed = re.sub(r"\([^)]*\)", "", allowed)
        out.append((names, None if allowed == "everything" else
                    ["vitscope." + n for n in re.findall(r"`([\w.]+)`", allowed)]))
    return out


def within(module: str, names: list[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_every_import_keeps_to_the_layers_of_architecture_md():
    """Each module imports only its own layer, the first row, the package's __version__ and the layers its row
    names; each row names only layers above it; every module of the package is in some row."""
    rules = layer_rules(ARCHITECTURE.read_text(encoding="utf-8"))
    shared = rules[0][0]
    for k, (_, allowed) in enumerate(rules):
        above = [n for names, _ in rules[:k] for n in names]
        assert allowed is None or all(within(a, above) for a in allowed), f"row {k} names a layer not above it"
    broken = []
    for module, targets in imports(PACKAGE).items():
        if module == "vitscope":
            continue
        row = [k for k, (names, _) in enumerate(rules) if within(module, names)]
        assert row, f"{module} is in no row of docs/architecture.md's Layers table"
        names, allowed = rules[row[0]]
        if allowed is None:
            continue
        ok = [*names, *(names if row[0] == 0 else shared), *allowed]
        broken += [f"{module} → {t}" for t in sorted(targets) if t != "vitscope" and not within(t, ok)]
    assert not broken, "imports the Layers table of docs/architecture.md does not allow: " + "; ".join(broken)


def test_layer_rules_see_a_forbidden_import():
    """The check above reads the table: without `store` in the service's row, the service's imports of it fail."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rules = dict((tuple(n), a) for n, a in layer_rules(text))
    assert "vitscope.store" in rules[("vitscope.service",)]
    broken = text.replace("`imagesets`, `store` |", "`imagesets` |")
    assert "vitscope.store" not in dict((tuple(n), a) for n, a in layer_rules(broken))[("vitscope.service",)]


def external_imports(path: Path) -> set[str]:
    """The top-level names of every package a module imports from outside vitscope, anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"vitscope"}


def test_readout_holds_no_drawing_library_and_no_picture_layer():
    """`readout` is the numbers under the app, the figures and the report: no Bokeh, Panel or HoloViews (nor
    datashader or matplotlib), and it imports none of the layers that draw."""
    drawing = {"bokeh", "panel", "holoviews", "datashader", "matplotlib"}
    modules = module_names(PACKAGE)
    found = {name: external_imports(path) & drawing for name, path in modules.items()
             if within(name, ["vitscope.readout"]) and external_imports(path) & drawing}
    assert modules.keys() & {"vitscope.readout.store_data", "vitscope.readout.selection", "vitscope.readout.figures"}
    assert not found, f"readout imports drawing libraries: {found}"
    graph = imports(PACKAGE)
    up = {m: sorted(t for t in ts if within(t, ["vitscope.app", "vitscope.plots", "vitscope.report"]))
          for m, ts in graph.items() if within(m, ["vitscope.readout"])}
    assert not any(up.values()), f"readout imports a layer above it: {up}"


def test_plots_report_and_readout_never_import_the_app():
    graph = imports(PACKAGE)
    found = {m: sorted(t for t in ts if within(t, ["vitscope.app"])) for m, ts in graph.items()
             if within(m, ["vitscope.plots", "vitscope.report", "vitscope.readout"])}
    assert not any(found.values()), f"imports of the app from below it: {found}"


def test_only_store_py_opens_a_store():
    """The schema has one home: only `vitscope.store` imports zarr or opens or writes a zarr store."""
    opens = {}
    for name, path in module_names(PACKAGE).items():
        text = path.read_text(encoding="utf-8")
        hits = ("zarr" in external_imports(path)) or any(f in text for f in ("open_zarr(", "to_zarr(", "open_group("))
        if hits and name != "vitscope.store":
            opens[name] = path
    assert not opens, f"modules besides vitscope/store.py that open a store themselves: {sorted(opens)}"


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in module_names(PACKAGE).items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"modules over 400 lines (split them by what they do): {long}"

