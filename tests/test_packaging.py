"""Packaging that tells the truth: every imported package is declared, environment.yml says the same, the
installed versions meet the bounds, and the wheel (not an editable install) runs the demo from anywhere."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONDA_NAMES = {"pytorch": "torch", "opentsne": "opentsne"}  # conda-forge name → PyPI name (canonical)


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    reqs = PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def imported_modules() -> dict[str, str]:
    """Top-level modules imported by vitscope/ and apps/ (scripts and the notebook's code cells) → a file."""
    sources = [(p, p.read_text()) for d in ("vitscope", "apps") for p in sorted((ROOT / d).rglob("*.py"))]
    for nb in sorted((ROOT / "apps").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources.append((nb, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")))
    found: dict[str, str] = {}
    for path, text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in ("vitscope", "__future__")}


def test_every_imported_package_is_declared():
    declared = set(requirements()) | {n for extra in PYPROJECT["optional-dependencies"] if extra != "test"
                                      for n in requirements(extra)}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in imported_modules().items():
        names = {canonicalize_name(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = where
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_nothing_is_declared_that_is_not_imported():
    dists = importlib.metadata.packages_distributions()
    used = {canonicalize_name(d) for m in imported_modules() for d in dists.get(m, [m])}
    assert set(requirements()) - used == set()


def test_installed_versions_meet_the_declared_bounds():
    for name, req in requirements().items():
        version = importlib.metadata.version(name)
        assert req.specifier.contains(version, prereleases=True), f"{name} {version} does not meet {req}"


def test_zarr_3_is_required():
    """The store writes through the zarr-3 API (zarr.create_array)."""
    spec = requirements()["zarr"].specifier
    assert not spec.contains("2.18.3") and spec.contains("3.0.8")


def test_environment_yml_is_in_step_with_pyproject():
    conda: dict[str, str] = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.fullmatch(r"\s+- ([A-Za-z0-9_.-]+)\s*(>=\s*([0-9.]+))?\s*", line)
        if m and m.group(1) not in ("python", "pip"):
            conda[CONDA_NAMES.get(m.group(1), canonicalize_name(m.group(1)))] = m.group(3) or ""
    wanted = {**requirements(), **requirements("test")}
    assert set(conda) == set(wanted), (set(conda) ^ set(wanted))
    for name, req in wanted.items():
        lower = next((s.version for s in req.specifier if s.operator in (">=", "==")), "")  # == : a test pin
        assert conda[name] == lower, f"environment.yml {name}>={conda[name]}, pyproject {req}"


def site_packages() -> list[str]:
    """The folders this interpreter imports installed packages from: a venv's, a conda env's or the system's, and
    the user's when it is on."""
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return [d for d in dirs if os.path.isdir(d)]


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_another_folder(tmp_path):
    """`pip install .` (a wheel, not editable) into a fresh venv, offline: the embedded weights are in it, and
    `vitscope demo --no-serve --limit 16` run elsewhere puts its store in ~/.cache/vitscope or $VITSCOPE_CACHE."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "vitscope", src / "vitscope", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("vitscope-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vitscope/models/demo_vit.safetensors" in names and not any(n.startswith("tests/") for n in names)

    # The dependencies come from this interpreter's site-packages, vitscope from the wheel. Not `venv
    # --system-site-packages`: from inside a venv that sees the base interpreter's packages, not this one's. A .pth
    # of plain folders runs none of their own .pth files, so this checkout's editable hook stays out.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(purelib, "_test_dependencies.pth").write_text("".join(f"{d}\n" for d in site_packages()))
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VITSCOPE_CACHE", "PYTHONPATH")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    where = subprocess.run([str(python), "-c", "import vitscope.build as b; print(b.__file__); print(b.cache_root())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
                           timeout=120).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where  # the wheel's copy, not the checkout
    assert where[1] == str(home / ".cache" / "vitscope")
    where = subprocess.run([str(python), "-c", "import vitscope.build as b; print(b.cache_root())"], cwd=elsewhere,
                           env={**env, "VITSCOPE_CACHE": str(tmp_path / "mine")}, capture_output=True, text=True,
                           check=True, timeout=120).stdout.strip()
    assert where == str(tmp_path / "mine")

    out = subprocess.run([str(venv / "bin" / "vitscope"), "demo", "--no-serve", "--limit", "16"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    store = home / ".cache" / "vitscope" / "demo-16.zarr"
    assert f"store: {store}" in out.stdout and "Head importance" in out.stdout
    assert (store / ".zmetadata").is_file() and not any(elsewhere.iterdir())
