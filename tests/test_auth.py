"""The login of `vitscope serve`: a stranger is sent to the login page, the right password reaches the app, and an
address other machines can reach is refused without a login."""

from __future__ import annotations

import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from app_helpers import make_store
from proc_helpers import stop, wait_for_line

from vitscope.app.server import Login, check_address, parse_extra_params, url
from vitscope.errors import VitscopeError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 302 comes back as an HTTPError, to be looked at
        return None


def client() -> urllib.request.OpenerDirector:
    """A browser without redirects: its own cookie jar, so a login sticks to this client only."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)


def get(opener, address: str, data: dict | None = None) -> tuple[int, str, str]:
    """(status, Location header, body) of one request."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    try:
        with opener.open(address, data=body, timeout=120) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.read().decode(errors="replace")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("auth") / "s.zarr", 12, 1, 2, 2, 3)


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.json"
    path.write_text(json.dumps({"ada": "correct horse", "bob": "battery staple"}))
    return path


def start(store, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", str(store), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for_line(proc, f"http://localhost:{port}/", timeout=120)  # printed once the port is bound
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(store, users):
    proc, base = start(store, "--basic-auth", str(users))
    yield base
    stop(proc)


def test_a_stranger_is_sent_to_the_login_page(server):
    status, location, _ = get(client(), server + "/")
    assert status == 302 and urllib.parse.urlparse(urllib.parse.urljoin(server + "/", location)).path == "/login", \
        (status, location)
    status, _, page = get(client(), server + "/login")
    assert status == 200 and 'name="password"' in page
    assert get(client(), server + "/ws")[0] == 403  # the app's websocket too


def test_a_wrong_password_or_unknown_user_stays_out(server):
    for user, password in (("ada", "battery staple"), ("eve", "correct horse"), ("ada", "")):
        c = client()
        status, location, _ = get(c, server + "/login", {"username": user, "password": password})
        assert status == 302 and "error=" in location, (user, status, location)
        status, location, _ = get(c, server + "/")
        assert status == 302 and "/login" in location


def test_the_right_password_reaches_the_app(server):
    c = client()
    status, location, _ = get(c, server + "/login", {"username": "bob", "password": "battery staple"})
    assert status == 302 and "error" not in location, location
    status, _, page = get(c, server + "/")
    assert status == 200 and "how this ViT uses attention</title>" in page and "Bokeh" in page
    assert get(client(), server + "/")[0] == 302  # another client is still a stranger


def test_one_password_for_everyone(store):
    proc, base = start(store, "--basic-auth", "open sesame")
    try:
        assert get(client(), base + "/")[0] == 302
        c = client()
        assert "error" in get(c, base + "/login", {"username": "x", "password": "open"})[1]
        status, location, _ = get(c, base + "/login", {"username": "anyone", "password": "open sesame"})
        assert status == 302 and "error" not in location
        assert get(c, base + "/")[0] == 200
    finally:
        stop(proc)


def test_an_address_other_machines_reach_needs_a_login_or_no_auth():
    port = free_port()
    for address in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(VitscopeError, match="--basic-auth.*--no-auth"):
            check_address(address, port, Login())
    for address in ("127.0.0.1", "localhost"):
        check_address(address, port, Login())
    check_address("0.0.0.0", port, Login(basic_auth="pw"))
    check_address("0.0.0.0", port, Login(no_auth=True))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(VitscopeError, match="cannot serve on 127.0.0.1"):
            check_address("127.0.0.1", taken.getsockname()[1], Login())


@pytest.mark.parametrize("login, message", [
    (Login(basic_auth="pw", oauth_provider="github"), "not both"),
    (Login(basic_auth="pw", no_auth=True), "contradicts"),
    (Login(basic_auth=""), "needs a password"),
    (Login(basic_auth="/nonexistent/users.json"), "no such file"),
    (Login(oauth_provider="myspace", oauth_key="k", oauth_secret="s"), "unknown --oauth-provider"),
    (Login(oauth_provider="github"), "needs --oauth-key and --oauth-secret"),
    (Login(oauth_provider="github", oauth_key="k", oauth_secret="s", oauth_encryption_key="short"), "32 url-safe"),
])
def test_bad_login_flags_are_refused(login, message):
    with pytest.raises(VitscopeError, match=message):
        login.check()


def test_a_malformed_users_file_is_refused(tmp_path):
    for text in ("not json", "[]", "{}", '{"ada": 1}'):
        (tmp_path / "u.json").write_text(text)
        with pytest.raises(VitscopeError, match="JSON"):
            Login(basic_auth=str(tmp_path / "u.json")).check()


def test_panel_gets_a_fresh_cookie_secret_per_run_unless_given(users):
    a, b = Login(basic_auth="pw").panel_kwargs(), Login(basic_auth="pw").panel_kwargs()
    assert a["auth_provider"].password == "pw" and a["auth_provider"].users is None  # Panel's login, throttled
    assert len(a["cookie_secret"]) >= 32 and a["cookie_secret"] != b["cookie_secret"]
    assert Login(basic_auth="pw", cookie_secret="mine").panel_kwargs()["cookie_secret"] == "mine"
    assert Login(basic_auth=str(users)).panel_kwargs()["auth_provider"].users == users.resolve()
    oauth = Login(oauth_provider="GitHub", oauth_key="k", oauth_secret="s",
                  oauth_extra_params=parse_extra_params('{"scope": "read:user"}')).panel_kwargs()
    assert oauth["oauth_provider"] == "github" and oauth["oauth_extra_params"] == {"scope": "read:user"}
    assert Login().panel_kwargs() == {} and Login(no_auth=True).panel_kwargs() == {}
    with pytest.raises(VitscopeError, match="JSON object"):
        parse_extra_params("scope=read")


def test_the_printed_address_is_one_a_browser_can_open():
    assert url("127.0.0.1", 5006) == "http://localhost:5006/"
    assert url("0.0.0.0", 80) == f"http://{socket.gethostname()}:80/"
    assert url("10.1.2.3", 5006) == "http://10.1.2.3:5006/"
