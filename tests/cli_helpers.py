"""`vitscope ARGS` in the test's own process, for the tests that check what a command prints or writes (its wiring),
not the process boundary: a fresh interpreter would import torch and load the model again for every command."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout


def vitscope_here(*args) -> subprocess.CompletedProcess:
    """`vitscope.cli.main(args)`, which `python -m vitscope.cli` runs: its return code, stdout and stderr, as
    `subprocess.run(..., capture_output=True, text=True)` gives them."""
    from vitscope.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(["vitscope", *argv], code, out.getvalue(), err.getvalue())
