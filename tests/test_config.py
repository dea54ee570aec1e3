"""`BuildConfig`: frozen, checked when made, and the one source of `vitscope build`'s defaults and help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from vitscope.cli import build_parser
from vitscope.config import BuildConfig, from_args
from vitscope.errors import VitscopeError

REQUIRED = ["build", "--model", "demo", "--images", "demo", "--out", "x.zarr"]


def test_the_flags_defaults_are_the_configs():
    cfg = from_args(build_parser().parse_args(REQUIRED))
    assert cfg == BuildConfig(model="demo", images="demo", out=Path("x.zarr"))
    assert cfg.top == 0.01 and cfg.chunk == 64 and cfg.progress  # --top is a percent: 1 % by default
    cfg = from_args(build_parser().parse_args([*REQUIRED, "--top", "2.5", "--chunk-size", "8", "--quiet"]))
    assert cfg.top == 0.025 and cfg.chunk == 8 and not cfg.progress
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("field, value, says", [
    ("batch_size", 0, "--batch-size 0: give at least 1"),
    ("top", 0.0, "--top 0: give a percent above 0 and at most 100"),
    ("top", 1.5, "--top 150: give a percent"),
    ("limit", -3, "--limit -3: give at least 1"),
    ("chunk", 0, "--chunk-size 0"),
    ("precision", "float8", "--precision float8: choose from"),
    ("layout_metric", "nope", "--layout-metric must be one of prob"),
])
def test_bad_values_are_one_line(field, value, says):
    with pytest.raises(VitscopeError, match=says) as e:
        BuildConfig(model="demo", images="demo", out=Path("x.zarr"), **{field: value})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("flags, says", [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--top", "0"], "--top 0"),
    (["--top", "150"], "--top 150"),
    (["--limit", "-5"], "--limit -5"),
])
def test_bad_build_flags_exit_2_before_anything_is_written(tmp_path, flags, says):
    out = tmp_path / "sub" / "never.zarr"
    code = ("import sys; from vitscope.cli import main; rc = main(sys.argv[1:]); "
            "print(','.join(m for m in ('torch', 'timm', 'dask') if m in sys.modules)); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "build", "--model", "demo", "--images", "demo",
                          "--out", str(out), *flags], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout.strip() == ""  # nothing heavy was even imported
    assert res.stderr.count("\n") == 1 and says in res.stderr and "Traceback" not in res.stderr
    assert not out.parent.exists()


def test_the_model_help_names_every_spec_form_the_loader_takes():
    """`--model`'s help (build, and `info --model`) lists the forms `load_model` names when it refuses a spec."""
    import re

    from vitscope.config import help_of
    from vitscope.models import load_model

    with pytest.raises(VitscopeError) as refused:
        load_model("nothing-like-a-spec")
    forms = re.findall(r"'([^']+)'", str(refused.value).split(":", 1)[1])
    assert forms == ["demo", "timm:<name>", "hf:<folder or hub id>"]
    assert all(f"'{form}'" in help_of("model") for form in forms)
