"""tests/ci_skips.py: under CI=true every way a test can end without being checked fails the run and says why;
without CI they skip as pytest always does. Each case runs a small test file in pytest's own `pytester`."""

from __future__ import annotations

import ci_skips
import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("Debian's chromium is not installed")

def test_imports_or_skips():
    pytest.importorskip("a_module_that_is_not_there")

@pytest.mark.skip(reason="marked to skip")
def test_marked():
    pass

@pytest.fixture
def needs_a_thing():
    pytest.skip("the thing is missing")

def test_uses_a_skipping_fixture(needs_a_thing):
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert False

@pytest.mark.xfail(reason="fixed since")
def test_xpasses():
    pass
"""
MODULE_SKIP = """
import pytest
pytest.skip("JupyterLab is not installed", allow_module_level=True)

def test_never_collected():
    pass
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, **files: str):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(**files)
    return pytester.runpytest_inprocess("-ra", "-p", "no:cacheprovider", plugins=[ci_skips])


def test_outside_ci_skips_and_xfails_stay_what_they_are(pytester, monkeypatch):
    result = run(pytester, monkeypatch, None, test_cases=TESTS)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1, xpassed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*SKIPPED*Debian's chromium is not installed*"])


def test_in_ci_every_test_that_did_not_run_fails_with_its_reason(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", test_cases=TESTS)
    # a skip mark and a fixture's skip act in setup: pytest counts a failed setup as an error
    result.assert_outcomes(passed=1, failed=4, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random([
        "FAILED*test_skips - CI=true: skipped (Skipped: Debian's chromium is not installed): in CI every test must "
        "run*",
        "FAILED*test_imports_or_skips - CI=true: skipped (*a_module_that_is_not_there*",
        "ERROR*test_marked - CI=true: skipped (Skipped: marked to skip)*",
        "ERROR*test_uses_a_skipping_fixture - CI=true: skipped (Skipped: the thing is missing)*",
        "FAILED*test_xfails - CI=true: marked xfail and failed (known bug)*",
        "FAILED*test_xpasses - CI=true: marked xfail but passed, XPASS (fixed since): remove the mark*",
    ])
    assert "xfailed" not in result.stdout.str() and "xpassed" not in result.stdout.str()


def test_in_ci_a_module_skipped_at_collection_fails_the_run(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", test_module=MODULE_SKIP, test_other="def test_ok():\n    pass\n")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run before any test
    result.stdout.fnmatch_lines(["*ERROR collecting test_module.py*", "*CI=true: test_module.py skipped when "
                                 "collected (Skipped: JupyterLab is not installed)*"])
    assert "1 skipped" not in result.stdout.str()


def test_only_ci_true_turns_skips_into_failures(pytester, monkeypatch):
    """GitHub Actions, GitLab and most CI services set CI=true; other values (unset, "0", "false") are a user's run."""
    for value in ("false", "0", ""):
        result = run(pytester, monkeypatch, value, test_module=MODULE_SKIP)
        assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, value
        result.assert_outcomes(skipped=1)
