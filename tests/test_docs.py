"""The documentation against the code: the store schema table of docs/architecture.md against vitscope/store.py,
the commands in README.md and docs/*.md against the CLI's parser and the benchmark scripts' parsers, README's set-up
commands and its links."""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from vitscope import store

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETUP = ['pip install -e . && vitscope demo', 'pip install -e ".[test]" && python -m pytest -q']


def schema_table(text: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """variable → (dims, dtype) from the one table under '## Store schema' (columns variable | dims | dtype | …)."""
    section = text.split("\n## Store schema", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[:3] == ["variable", "dims", "dtype"], header
    table = {}
    for line in rows[2:]:
        name, dims, dtype = (c.strip().strip("`") for c in line.strip("|").split("|")[:3])
        assert name not in table, f"{name} listed twice"
        table[name] = (tuple(d.strip() for d in dims.split(",")), dtype)
    return table


def small_layout(store_attention: bool = True) -> store.Shape:
    return store.Shape(images=3, layers=2, heads=2, classes=4, grid=3, tokens=10, topk=3, latent=4, binary_size=9,
                        binary_ones=1, thumb=(6, 6), chunk=2, store_attention=store_attention, features=5,
                        fits=True, ae_params=7)


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[tuple[str, ...], str]]:
    return schema_table((ROOT / "docs" / "architecture.md").read_text())


def test_schema_table_lists_every_variable_store_py_declares(table):
    """Each data variable `store.Shape.variables()` declares is in the table with the same dims and dtype, and the
    table has no data variable the code lacks (the rest of its rows are coordinates and `chunk_done`)."""
    declared = small_layout().variables()
    missing = sorted(set(declared) - set(table))
    assert not missing, f"docs/architecture.md's store schema table lacks {missing} (declared in vitscope/store.py)"
    for name, (dims, dtype) in declared.items():
        assert table[name] == (dims, dtype), f"{name}: docs say {table[name]}, vitscope/store.py {(dims, dtype)}"


def test_schema_table_is_what_a_created_store_holds(table, tmp_path):
    """A store as `store.create` writes it (with --store-attention): every variable and coordinate on disk is in
    the table with its dims and dtype, and every row of the table is on disk."""
    path = tmp_path / "s.zarr"
    store.create(path, small_layout(), {"model": "x"}, ["a", "b", "c"], ["0", "1", "2", "3"], {})
    on_disk = {}  # read with zarr: xarray decodes chunk_done's fill value False as missing (object dtype)
    for name, arr in zarr.open_group(str(path), mode="r", use_consolidated=False).arrays():
        kind = np.dtype(arr.dtype).kind
        on_disk[name] = (tuple(arr.attrs["_ARRAY_DIMENSIONS"]), "str" if kind in "UOS" else str(arr.dtype))
    assert set(table) == set(on_disk), (f"only in the docs: {sorted(set(table) - set(on_disk))}; "
                                        f"only on disk: {sorted(set(on_disk) - set(table))}")
    for name, got in on_disk.items():
        assert table[name] == got, f"{name}: docs say {table[name]}, the store holds {got}"


def test_schema_parser_sees_a_missing_row(table):
    """The check above would fail if store.py gained a variable the table lacks: drop one row and it is seen."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    broken = re.sub(r"^\| `strength_entropy` \|.*\n", "", text, flags=re.M)
    assert "strength_entropy" in table and "strength_entropy" not in schema_table(broken)


def bash_lines(text: str) -> list[str]:
    """The lines of the ```bash blocks of a Markdown text, continuations joined, indentation dropped (a block may sit
    in a list item)."""
    out = []
    for block in re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, flags=re.S | re.M):
        out += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    return out


def vitscope_commands(text: str) -> list[str]:
    """Every `vitscope …` command line in the ```bash blocks of a Markdown text (continuations joined)."""
    return [line for line in bash_lines(text) if line.startswith("vitscope ")]


BENCHMARK = re.compile(r"^(?:nice -n \d+ )?python benchmarks/(\w+)\.py\b")


def benchmark_commands(text: str) -> list[str]:
    """Every `python benchmarks/NAME.py …` command of a Markdown text: the lines of its ```bash blocks and its inline
    code (which may wrap across lines), `nice -n N` before it allowed."""
    prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.S | re.M)  # the fences' backticks pair up wrongly
    inline = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))
    return [c for c in (*bash_lines(text), *inline) if BENCHMARK.match(c)]


# What each document shows: every listed kind must be found in it (an extraction that finds nothing fails instead of
# checking nothing), and a kind not listed must not be there.
SHOWS = {"README.md": {"vitscope", "benchmark"}, "docs/architecture.md": set(), "docs/demo-model.md": {"vitscope"},
         "docs/guide.md": {"vitscope", "benchmark"}, "docs/models.md": {"vitscope", "benchmark"},
         "docs/performance.md": {"benchmark"}, "docs/security.md": set()}


def doc_id(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


def test_every_document_says_what_commands_it_shows():
    assert sorted(SHOWS) == sorted(doc_id(d) for d in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_documented_commands_parse(doc):
    """Each documented `vitscope` command is accepted by the CLI's own parser (flags and argument types)."""
    from vitscope.cli import build_parser

    commands = vitscope_commands(doc.read_text())
    assert bool(commands) == ("vitscope" in SHOWS[doc_id(doc)]), commands
    parser = build_parser()
    for line in commands:
        args = shlex.split(line, comments=True)[1:]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{doc.name}: `{line}` is not accepted by `vitscope` (see vitscope {args[0]} --help)")


class Parsed(Exception):
    """Raised by a benchmark's parser once it has parsed its arguments: the benchmark itself never runs."""


def parse_benchmark_args(monkeypatch, script: Path, args: list[str]) -> None:
    """`args` through `script`'s own argument parser: its `main()` runs until the parser has parsed them (the parsers
    are built inside `main`), then stops. An argument it refuses is SystemExit, as on the command line."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    with monkeypatch.context() as m:
        environ, modules = dict(os.environ), set(sys.modules)
        m.syspath_prepend(str(script.parent))  # as `python benchmarks/x.py` runs it: its neighbours importable
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.setattr(sys, "argv", [str(script), *args])
        try:
            main = runpy.run_path(str(script), run_name=f"benchmark_{script.stem}")["main"]
            with pytest.raises(Parsed):
                main()
        finally:
            for name in set(sys.modules) - modules:  # the benchmarks' own modules (app, …) do not outlive the check
                if str(script.parent) in str(getattr(sys.modules[name], "__file__", "") or ""):
                    del sys.modules[name]
            os.environ.clear()  # a benchmark sets OMP_WAIT_POLICY as it is imported
            os.environ.update(environ)


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_documented_benchmark_commands_parse(doc, monkeypatch):
    """Each documented `python benchmarks/NAME.py …` names a script that exists and is accepted by that script's own
    argument parser, as the `vitscope` commands are by the CLI's."""
    commands = benchmark_commands(doc.read_text())
    assert bool(commands) == ("benchmark" in SHOWS[doc_id(doc)]), commands
    unchecked = []
    for line in commands:
        words = shlex.split(line, comments=True)
        words = words[words.index("python") + 1:]
        script, args = ROOT / words[0], words[1:]
        assert script.is_file(), f"{doc.name}: `{line}`: no {words[0]}"
        if "ArgumentParser" not in script.read_text():  # takes store paths only (benchmarks/service.py)
            assert not [a for a in args if a.startswith("-")], f"{doc.name}: `{line}`: {words[0]} takes no options"
            continue
        try:
            parse_benchmark_args(monkeypatch, script, args)
        except SystemExit:
            pytest.fail(f"{doc.name}: `{line}` is not accepted by {words[0]} (see python {words[0]} --help)")
        except pytest.skip.Exception as e:  # a script that imports test_browser, without chromium: the rest go on
            unchecked.append(f"`{line}` ({e})")
    if unchecked:
        pytest.skip(f"not checked: {'; '.join(unchecked)}")


def test_readme_opens_with_the_two_setup_commands():
    """README's first code block is exactly the two set-up commands (.ci/run runs the second verbatim)."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert first.splitlines() == SETUP
    assert len(text.splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_inside_the_repository(doc):
    """Relative links and images point at files of this repository that exist; nothing points outside it."""
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_nothing_points_at_design_notes_outside_the_repository():
    """The design lives in docs/architecture.md: no source, test, benchmark or document names a design file kept
    elsewhere, and README and docs/ name no path outside the repository."""
    design = "DESIGN" + ".md"  # spelt in two parts so that this file does not find itself
    files = [ROOT / "README.md", *(p for folder in ("vitscope", "apps", "tests", "benchmarks", "docs")
                                   for p in (ROOT / folder).rglob("*")
                                   if p.suffix in {".py", ".md", ".ipynb", ".toml", ".yml"} and p.is_file())]
    assert not [p.relative_to(ROOT).as_posix() for p in files if design in p.read_text(errors="replace")]
    outside = "../" + "shared"
    assert not [p.relative_to(ROOT).as_posix() for p in DOCS if outside in p.read_text()]
