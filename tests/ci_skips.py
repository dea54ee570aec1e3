"""Under CI (`CI=true`) a test that does not run fails: a skip, an xfail or an unexpected pass of an xfail test.

A skip outside CI says "install X to run this"; in CI it means something the tests need was not installed (a
failed `apt-get install chromium` would let the browser tests skip while CI stays green). So here each skipped
test, each module skipped at collection and each xfail/xpass is reported as a failure that quotes the skip's
reason. Outside CI nothing changes: `pytest.skip` and `pytest.importorskip` skip as usual.

tests/conftest.py imports the two hooks below, which is how pytest finds them; tests/test_ci_skips.py loads this
module as a plugin of its own pytest runs.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class NotRunInCI:
    """A report's `longrepr` for a test that did not run under CI: printed as the failure's text, and its first line
    (`reprcrash.message`) is what pytest's one-line summary shows after the test's name."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.reprcrash = self  # pytest reads `longrepr.reprcrash.message` for the summary line

    def toterminal(self, out) -> None:
        out.line(self.message)

    def __str__(self) -> str:
        return self.message


def skip_reason(report) -> str:
    """The reason pytest recorded for a skip ("Skipped: …" in a (path, line, reason) tuple) or an xfail."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def refuse(report, message: str) -> None:
    report.outcome = "failed"
    report.longrepr = NotRunInCI(f"CI=true: {message}")


def judge(report) -> None:
    """Turn a skip, xfail or xpass of `report` into a failure."""
    xfail = getattr(report, "wasxfail", None)
    if report.skipped and xfail is not None:
        refuse(report, f"marked xfail and failed ({xfail or 'no reason given'}): in CI an expected failure would "
                       "hide a bug; fix the code or the test")
        del report.wasxfail  # a failure now: pytest would otherwise still count it as an xfail
    elif report.skipped:
        refuse(report, f"skipped ({skip_reason(report)}): in CI every test must run; install what it needs "
                       "(.ci/run) or fix the test")
    elif report.passed and xfail is not None:
        refuse(report, f"marked xfail but passed, XPASS ({xfail or 'no reason given'}): remove the mark")
        del report.wasxfail


@pytest.hookimpl(wrapper=True, tryfirst=True)  # the outermost wrapper: it sees the xfail plugin's verdict
def pytest_runtest_makereport(item, call):
    report = yield
    if in_ci():
        judge(report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector):
    """A module that skips itself (`pytest.skip(..., allow_module_level=True)` or a failed `importorskip` at import)
    is a collection report, not a test's."""
    report = yield
    if in_ci() and report.skipped:
        refuse(report, f"{collector.nodeid or 'a module'} skipped when collected ({skip_reason(report)}): in CI "
                       "every test must run; install what it needs (.ci/run) or fix the test")
    return report
