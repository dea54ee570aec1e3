"""`vitscope serve` / `vitscope demo`: the app on a port, behind a login wherever other machines can reach it.

Light to import (no Panel, torch or datashader at module level): a refused address, a taken port or a bad
login flag is one line before anything heavy is loaded (heavy stacks can print their own noise at exit).
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vitscope.errors import VitscopeError
from vitscope.text import printable

if TYPE_CHECKING:
    from vitscope.readout.figures import Renderer

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# An uploaded image reaches the service base64-encoded in one websocket message: room for the 50 MB the service
# accepts (it refuses larger files in one line), where Bokeh's default 20 MB would drop the connection.
UPLOAD_MESSAGE = 80 * 2**20


@dataclass
class Login:
    """Who may open the app: Panel's basic auth (one password, or a JSON file of users) or an OAuth provider.

    `cookie_secret` signs the login cookie; when not given a fresh one is drawn per run, so logins do not
    outlive the server process. `no_auth` is the explicit choice of an open server on a non-loopback address.
    """

    basic_auth: str | None = None
    cookie_secret: str | None = None
    oauth_provider: str | None = None
    oauth_key: str | None = None
    oauth_secret: str | None = None
    oauth_redirect_uri: str | None = None
    oauth_extra_params: dict[str, str] = field(default_factory=dict)
    oauth_encryption_key: str | None = None
    no_auth: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.basic_auth or self.oauth_provider)

    def check(self) -> None:
        """Refuse contradictory or unusable login flags with one line, before any work is done."""
        if self.basic_auth and self.oauth_provider:
            raise VitscopeError("give --basic-auth or --oauth-provider, not both")
        if self.no_auth and self.enabled:
            raise VitscopeError("--no-auth contradicts --basic-auth/--oauth-provider: choose one")
        if self.basic_auth is not None:
            if not self.basic_auth:
                raise VitscopeError("--basic-auth needs a password or a JSON file of users")
            users_file(self.basic_auth)  # a file of users must be readable and well formed
        if self.oauth_provider:
            from panel.auth import AUTH_PROVIDERS

            if self.oauth_provider.lower() not in AUTH_PROVIDERS:
                raise VitscopeError(f"unknown --oauth-provider {self.oauth_provider!r}; Panel knows: "
                                    f"{', '.join(sorted(AUTH_PROVIDERS))}")
            if self.oauth_provider.lower() != "pam" and not (self.oauth_key and self.oauth_secret):
                raise VitscopeError(f"--oauth-provider {self.oauth_provider} needs --oauth-key and --oauth-secret "
                                    "(the client id and secret the provider issued)")
        if self.oauth_encryption_key is not None:
            try:
                key = base64.urlsafe_b64decode(self.oauth_encryption_key.encode("ascii"))
            except (ValueError, UnicodeError):
                key = b""
            if len(key) != 32:
                raise VitscopeError("--oauth-encryption-key must be 32 url-safe base64-encoded bytes "
                                    "(make one with `panel oauth-secret`)")

    def panel_kwargs(self) -> dict:
        """Keywords for `pn.serve`. Basic auth is Panel's with failed logins slowed and logged per address
        (vitscope.app.login), given as `auth_provider` since `basic_auth=` would make Panel build its own; a file of
        users is read again at every login, so edits apply at once."""
        if not self.enabled:
            return {}
        kw: dict = {"cookie_secret": self.cookie_secret or secrets.token_urlsafe(32)}
        if self.basic_auth:
            from vitscope.app.login import ThrottledBasicAuthProvider  # imports Panel: only when serving

            users = users_file(self.basic_auth)
            kw["auth_provider"] = (ThrottledBasicAuthProvider(users=users.resolve()) if users
                                   else ThrottledBasicAuthProvider(password=self.basic_auth))
        else:
            kw.update(oauth_provider=self.oauth_provider.lower(), oauth_key=self.oauth_key,
                      oauth_secret=self.oauth_secret, oauth_redirect_uri=self.oauth_redirect_uri,
                      oauth_extra_params=self.oauth_extra_params)
        return kw


def users_file(value: str) -> Path | None:
    """The JSON file of users {name: password} that `--basic-auth` names, or None when it is a password."""
    path = Path(value).expanduser()
    if not path.is_file():
        if value.endswith(".json"):
            raise VitscopeError(f"--basic-auth {value}: no such file (expected a JSON file of users "
                                '{"name": "password"})')
        return None
    try:
        users = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, json.JSONDecodeError) as e:
        raise VitscopeError(f"--basic-auth {value}: not a JSON file of users ({e})") from None
    if not (isinstance(users, dict) and users and all(isinstance(k, str) and isinstance(v, str) and v
                                                      for k, v in users.items())):
        raise VitscopeError(f"--basic-auth {value}: expected a JSON object of users {{\"name\": \"password\"}}")
    return path


def parse_extra_params(text: str | None) -> dict[str, str]:
    """`--oauth-extra-params` as a JSON object (e.g. '{"tenant": "..."}')."""
    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        raise VitscopeError(f"--oauth-extra-params must be a JSON object, not {text!r}")
    return {str(k): str(v) for k, v in params.items()}


def is_loopback(address: str) -> bool:
    return address in LOOPBACK


def check_address(address: str, port: int, login: Login) -> None:
    """Before any work: an address other machines can reach needs a login (or --no-auth), and the port must be
    free (checked by binding it as the server will, then letting it go)."""
    if not is_loopback(address) and not login.enabled and not login.no_auth:
        raise VitscopeError(f"--address {address} lets other machines in: give a login with --basic-auth "
                            "PASSWORD|USERS.json (or --oauth-provider), or --no-auth for an open server")
    from tornado.netutil import bind_sockets

    try:
        for s in bind_sockets(port, address):
            s.close()
    except OSError as e:
        raise VitscopeError(f"cannot serve on {address}:{port}: {e.strerror or e} (try another --port)") from None


def serve(store: str | Path, port: int = 5006, address: str = "127.0.0.1", device: str = "cpu",
          show: bool = False, login: Login | None = None, threads: int | None = None,
          scheduler: str | None = None, compare_with: str | Path | None = None,
          figures: Renderer | None = None) -> None:
    """Serve the app; every browser session gets its own Explorer (selection) over shared data and model.

    `compare_with` (a second store of the same images) serves the compare view instead (`vitscope serve A B`,
    `vitscope compare A B --serve`): both stores side by side, from store data alone (no model is loaded).

    `figures` (`vitscope.plots.figure_file`, passed in by `vitscope serve`) gives each session a "save figure" action.

    `scheduler` (a Dask scheduler's address) puts the on-demand ablation service's model on a Dask worker.

    `threads` runs the sessions' callbacks on Panel's thread pool (`pn.config.nthreads`): the model's forward
    releases the GIL, the Bokeh updates do not, and on 2 cores the pool made the waits longer
    (docs/performance.md, Many users), so the default is the event loop.
    """
    login = login or Login()
    login.check()
    check_address(address, port, login)
    path = Path(store)
    key = str(path.resolve())
    from vitscope.store import open_store

    # A missing, foreign or old store, or two stores of other images: one line before the app's heavy imports. The
    # store is opened once: the app's data and the service read it as opened here.
    first = open_store(key)
    other = Path(compare_with) if compare_with is not None else None
    if other is not None:
        from vitscope.compare import matched_images

        matched_images(first, open_store(other.resolve()))
    import gc

    import panel as pn

    if other is None:
        from vitscope.app.explorer import Explorer
        from vitscope.readout.store_data import store_data
        from vitscope.service.dispatch import warm

        store_data(key).prepare()
        warm(key, device, scheduler)  # the model once now, here or on the scheduler's worker (then none here)
        app, what = (lambda: Explorer(path, device, scheduler, figures).template()), f"vitscope app for {path}"
        app()  # one page built now, unseen: the first visitor does not pay the views' first-use costs (datashader's
        # kernels, the layouts' frames and bounds)
    else:
        from vitscope.app.compare_view import CompareView
        from vitscope.readout.comparison import comparison

        comparison(key, str(other.resolve()))  # the comparison once now; every session shares it
        app, what = (lambda: CompareView(path, other).template()), f"vitscope compare view of {path} and {other}"
    gc.freeze()  # the store's arrays and the model are long-lived: keep them out of every full collection
    if threads:
        pn.config.nthreads = threads
    auth = login.panel_kwargs()
    if login.oauth_encryption_key:
        _encrypt_oauth(login.oauth_encryption_key)
    elif login.oauth_provider:
        print("vitscope: warning: OAuth without --oauth-encryption-key keeps the provider's tokens unencrypted in "
              "cookies", file=sys.stderr)
    if is_loopback(address):
        host = f"[{address}]" if ":" in address else address
        origins = [f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    else:
        origins = ["*"]
    try:
        server = pn.serve({"/": app}, port=port, address=address,
                          show=show, title="vitscope", websocket_origin=origins, start=False, verbose=False,
                          websocket_max_message_size=UPLOAD_MESSAGE, **auth)
    except OSError as e:  # taken since check_address
        raise VitscopeError(f"cannot serve on {address}:{port}: {e.strerror or e} (try another --port)") from None
    print(f"{printable(what)}: {url(address, port)}  ({_who(login)}; Ctrl+C stops it)", flush=True)
    server.start()
    server.io_loop.start()


def url(address: str, port: int) -> str:
    """What to type in a browser: localhost on this machine, the host's name for an all-interfaces bind."""
    if is_loopback(address):
        host = "localhost"
    elif address in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    else:
        host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


def _who(login: Login) -> str:
    if login.basic_auth:
        return "login: " + ("the users in " + login.basic_auth if users_file(login.basic_auth) else "the password")
    if login.oauth_provider:
        return f"login: {login.oauth_provider}"
    return "no login"


def _encrypt_oauth(key: str) -> None:
    """Panel's `pn.serve` accepts an OAuth encryption key but does not apply it (1.9): do what `panel serve`
    does, so tokens in cookies are encrypted."""
    import panel as pn

    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise VitscopeError("--oauth-encryption-key needs the cryptography package "
                            "(pip install 'vitscope[oauth]')") from None
    pn.config.oauth_encryption_key = key.encode("ascii")
    pn.state.encryption = Fernet(key.encode("ascii"))
