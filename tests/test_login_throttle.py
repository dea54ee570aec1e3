"""Failed logins are slowed per address and logged: the back-off with a fake clock, and a served app
(its throttle's clock stepped by the test) whose login refuses a sixth try in a row, even with the right password,
until the wait is over, and logs each failure without the password."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from app_helpers import make_store

from vitscope.app.login import LoginThrottle, check_password, logged_name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_are_free_then_the_wait_doubles_up_to_the_cap():
    clock = Clock()
    t = LoginThrottle(clock=clock)
    for n in range(1, 5):
        assert t.failure("10.0.0.1") == n and t.wait("10.0.0.1") == 0
    assert t.failure("10.0.0.1") == 5 and t.wait("10.0.0.1") == 1.0
    assert t.wait("10.0.0.2") == 0  # per address
    waits = []
    for _ in range(12):  # each try as soon as it is allowed, and wrong
        clock.now += t.wait("10.0.0.1")
        assert t.wait("10.0.0.1") == 0
        t.failure("10.0.0.1")
        waits.append(t.wait("10.0.0.1"))
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    clock.now += 299.5
    assert t.wait("10.0.0.1") == pytest.approx(0.5)
    t.success("10.0.0.1")  # a success clears the address
    assert t.wait("10.0.0.1") == 0 and len(t) == 0
    for _ in range(5):
        t.failure("10.0.0.1")
    assert t.wait("10.0.0.1") == 1.0  # from the start again


def test_the_table_forgets_idle_addresses_and_stays_bounded():
    clock = Clock()
    t = LoginThrottle(clock=clock, forget=600, max_addresses=100)
    for _ in range(7):
        t.failure("a")
    clock.now += 599
    assert t.wait("a") == 0 and len(t) == 1
    clock.now += 1  # idle past `forget`: starts again from zero
    assert t.wait("a") == 0 and len(t) == 0
    for _ in range(5):
        t.failure("a")
    assert t.wait("a") == 1.0
    for i in range(1000):
        t.failure(f"10.1.{i // 256}.{i % 256}")
    assert len(t) == 100 and t.wait("a") == 0  # the oldest went first
    clock.now += 3600
    t.failure("b")
    assert len(t) == 1


def test_the_provider_keeps_the_throttle_it_is_given():
    from vitscope.app.login import ThrottledBasicAuthProvider

    clock = Clock()
    throttle = LoginThrottle(clock=clock)  # empty, as every throttle starts
    provider = ThrottledBasicAuthProvider(password="pw", throttle=throttle)
    assert provider.throttle is throttle and provider.login_handler._provider.throttle.clock is clock
    assert ThrottledBasicAuthProvider(password="pw").throttle.clock is time.monotonic  # the default: the real clock


def test_passwords_and_users_file(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"ada": "correct horse"}))
    assert check_password("anyone", "pw", password_for_all="pw")
    assert not check_password("anyone", "p", password_for_all="pw")
    assert check_password("ada", "correct horse", users=users)
    assert not check_password("ada", "pw", users=users) and not check_password("eve", "correct horse", users=users)
    users.write_text(json.dumps({"ada": "new horse"}))  # read again at each login
    assert check_password("ada", "new horse", users=users) and not check_password("ada", "correct horse", users=users)
    users.write_text("{not json")
    assert not check_password("ada", "new horse", users=users)


def test_a_crafted_user_name_stays_on_one_line():
    assert logged_name("eve\nvitscope: failed login from 1.2.3.4") == "'eve\\nvitscope: failed login from 1.2.3.4'"
    for name in ("a\rb", "a\u2028b", "a\x1b[2Kb", "x" * 10_000):
        shown = logged_name(name)
        assert shown.isprintable() and len(shown) < 100, shown


# ---- served: `vitscope serve --basic-auth USERS.json` on a loopback port ----

RIGHT, NEW = "correct horse", "battery staple"
WRONG = [f"wrong-{i}" for i in range(10)]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 302 comes back as an HTTPError, to be looked at
        return None


def client() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)


def post(opener, address: str, user: str, password: str) -> tuple[int, str, str, str]:
    """(status, Location, Retry-After, body) of one login."""
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        with opener.open(address, data=body, timeout=60) as r:
            return r.status, r.headers.get("Location", ""), r.headers.get("Retry-After", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.headers.get("Retry-After", ""), e.read().decode()


def logged_in(result: tuple[int, str, str, str]) -> bool:
    status, location, _, _ = result
    return status == 302 and "error" not in location


def failed(result: tuple[int, str, str, str]) -> bool:
    status, location, _, _ = result
    return status == 302 and "error=" in location


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failure_lines(log) -> list[str]:
    return [line for line in log.read_text().splitlines() if "failed login" in line]


# `vitscope serve ARGS` whose login throttle reads its clock from the file named first (seconds), so that the test
# steps time instead of racing the real clock: the throttle's own `clock` parameter, through the provider's
# `throttle` parameter, in the provider `vitscope serve` builds.
SERVE_WITH_CLOCK = """
import sys
from pathlib import Path

from vitscope.app import login

now = Path(sys.argv.pop(1))


class SteppedClockProvider(login.ThrottledBasicAuthProvider):
    def __init__(self, password=None, users=None, throttle=None):
        super().__init__(password, users, throttle or login.LoginThrottle(clock=lambda: float(now.read_text())))


login.ThrottledBasicAuthProvider = SteppedClockProvider
from vitscope.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_served_login_slows_failures_and_logs_them(tmp_path):
    store = make_store(tmp_path / "s.zarr", 12, 1, 2, 2, 3)
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"ada": RIGHT}))
    log = tmp_path / "serve.log"
    now = tmp_path / "clock"
    now.write_text("1000")
    port = free_port()
    login = f"http://127.0.0.1:{port}/login"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE_WITH_CLOCK, str(now), "serve", str(store), "--port",
                                 str(port), "--basic-auth", str(users)], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while f"localhost:{port}/" not in log.read_text():  # printed once the port is bound
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        assert logged_in(post(client(), login, "ada", RIGHT))
        for password in WRONG[:4]:
            assert failed(post(client(), login, "ada", password))
        assert logged_in(post(client(), login, "ada", RIGHT))  # the fifth try: in, and the count starts again
        forged = "eve\nvitscope: failed login from 6.6.6.6 as 'root'"
        assert failed(post(client(), login, forged, RIGHT))
        for password in WRONG[4:8]:
            assert failed(post(client(), login, "ada", password))
        c = client()
        status, _, retry, page = post(c, login, "ada", RIGHT)  # a sixth try in a row: refused unchecked
        assert status == 429 and retry == "1" and "too many failed logins from this address; try again in 1 s" in page
        with pytest.raises(urllib.error.HTTPError, match="302"):  # no login cookie came with the refusal
            c.open(f"http://127.0.0.1:{port}/", timeout=60)

        lines = failure_lines(log)
        assert len(lines) == 9, lines  # one per failure, none for the refusal
        assert all(line.startswith("vitscope: failed login from 127.0.0.1 as ") for line in lines), lines
        assert "as " + repr(forged) in lines[4] and "6.6.6.6" not in "".join(lines[:4] + lines[5:])
        assert lines[-1].endswith("(5 in a row; its next try in 1 s at the earliest)"), lines[-1]
        text = log.read_text()
        assert not any(p in text for p in (RIGHT, *WRONG[:8])), text  # no password, right or wrong

        now.write_text("1000.5")  # half the wait later: still refused, the rest rounded up
        status, _, retry, _ = post(client(), login, "ada", RIGHT)
        assert (status, retry) == (429, "1")
        now.write_text("1001")  # the one-second wait has ended: the right password is checked again
        assert logged_in(post(client(), login, "ada", RIGHT))
        users.write_text(json.dumps({"ada": NEW}))  # the file is read again at each login
        assert logged_in(post(client(), login, "ada", NEW)) and failed(post(client(), login, "ada", RIGHT))
        assert len(failure_lines(log)) == 10 and re.search(r"as 'ada' \(1 in a row\)$", failure_lines(log)[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
