""".ci/run against stand-ins for apt-get, python3, pip, python and ruff: a failed install step fails CI at once,
pytest runs README's test command with CI=true, and every non-zero pytest code (5: no test ran) fails CI.

A copy of the script runs in a temporary folder whose PATH holds the stand-ins only (no chromium, no real Python):
each stand-in appends its command line to a log and exits with the code the test gives it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs import SETUP

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"

# Each stand-in: `NAME args` into $LOG (with the CI variable it saw), then the exit code in $RC_<NAME>, or for the
# n-th call of pip $RC_PIP_<n>. python3 -m venv makes a .venv whose activate script puts pip, python and ruff first.
STAND_IN = """#!BASH
name=$(basename_ "$0")
read -r n 2>/dev/null < "$WORK/count.$name" || n=0
n=$((n + 1)); echo "$n" > "$WORK/count.$name"
echo "$name $* CI=${CI:-}" >> "$WORK/log"
if [ "$name" = python3 ] && [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir_ -p .venv/bin
  for tool in pip python ruff; do ln_ -s "$WORK/bin/$tool" ".venv/bin/$tool"; done
  echo 'PATH="$PWD/.venv/bin:$PATH"' > .venv/bin/activate
fi
if [ "$name" = apt-get ] && [ "$1" = install ] && [ -n "${APT_INSTALLS:-}" ]; then
  ln_ -s "$WORK/bin/true_" "$WORK/bin/chromium"
fi
up=${name^^}; up=${up//-/_}
var="RC_${up}_$n"; code=${!var:-}
var="RC_$up"; exit "${code:-${!var:-0}}"
"""

def run_ci(tmp_path: Path, chromium: bool = False, **codes: str) -> tuple[int, list[str], str]:
    """(exit code, log lines, stderr) of .ci/run with the stand-ins; `codes`: RC_APT_GET="100", RC_PIP_2="1", …"""
    repo, bin_ = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    bin_.mkdir()
    os.symlink(shutil.which("dirname"), bin_ / "dirname")  # what the script itself runs besides the stand-ins
    for tool, real in (("basename_", "basename"), ("mkdir_", "mkdir"), ("ln_", "ln"), ("true_", "true")):
        os.symlink(shutil.which(real), bin_ / tool)  # for the stand-ins, under names the script does not use
    for tool in ("python3", "apt-get", "pip", "python", "ruff"):
        (bin_ / tool).write_text(STAND_IN.replace("BASH", BASH, 1))
        (bin_ / tool).chmod(0o755)
    if chromium:
        os.symlink(shutil.which("true"), bin_ / "chromium")
    env = {"PATH": str(bin_), "WORK": str(tmp_path), "HOME": str(tmp_path), **codes}
    r = subprocess.run([BASH, str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return r.returncode, log, r.stderr


def test_the_script_runs_readmes_test_command_verbatim():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert SETUP[1] + " || exit $?" in lines
    assert "set -euo pipefail" in lines


def test_a_run_that_works_installs_then_tests_with_ci_true_then_lints(tmp_path):
    rc, log, err = run_ci(tmp_path, APT_INSTALLS="1")
    assert rc == 0, (log, err)
    assert log == ["python3 --version CI=", "apt-get update -qq CI=", "apt-get install -y -qq chromium CI=",
                   "python3 -m venv --clear .venv CI=", "pip install -e .[test] CI=", "pip install -e .[test] CI=true",
                   "python -m pytest -q CI=true", "ruff check . CI=true"]


def test_chromium_already_there_is_not_installed_again(tmp_path):
    rc, log, err = run_ci(tmp_path, chromium=True)
    assert rc == 0, (log, err)
    assert not [line for line in log if line.startswith("apt-get")]


@pytest.mark.parametrize("codes, last, says", [
    ({"RC_APT_GET_1": "100"}, "apt-get update -qq CI=", ""),  # the index could not be fetched
    ({"RC_APT_GET_2": "100"}, "apt-get install -y -qq chromium CI=", ""),  # no such package, no space, no root
    ({}, "apt-get install -y -qq chromium CI=", "chromium is still not on PATH"),  # "installed", yet missing
    ({"APT_INSTALLS": "1", "RC_PIP_1": "1"}, "pip install -e .[test] CI=", ""),
    ({"APT_INSTALLS": "1", "RC_PIP_2": "1"}, "pip install -e .[test] CI=true", ""),  # README's command: before &&
])
def test_a_failed_install_step_stops_ci_there(tmp_path, codes, last, says):
    rc, log, err = run_ci(tmp_path, **codes)
    assert rc != 0, (log, err)
    assert log[-1] == last, log  # nothing after the failed step ran
    assert says in err
    if not says:  # stopped by the step that failed, not by a later check
        assert "chromium is still not on PATH" not in err


@pytest.mark.parametrize("code", ["1", "5"])  # 5: pytest collected no test
def test_pytests_failure_is_cis_failure_with_its_code(tmp_path, code):
    rc, log, err = run_ci(tmp_path, chromium=True, RC_PYTHON=code)
    assert rc == int(code), (log, err)
    assert log[-1] == "python -m pytest -q CI=true"  # no lint after it
