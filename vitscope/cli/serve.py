"""`vitscope serve`, and the serve flags `demo` and `compare --serve` share: the app on a port, behind a login
wherever other machines can reach it."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitscope.errors import VitscopeError


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to bind; anything but loopback (e.g. 0.0.0.0) needs --basic-auth or --no-auth")
    g = p.add_argument_group("login (Panel's own; required off loopback)")
    g.add_argument("--basic-auth", metavar="PASSWORD|FILE",
                   help="one password, or a JSON file of users {\"name\": \"password\"} (a file keeps it out of `ps`)")
    g.add_argument("--cookie-secret", help="signs the login cookie (default: a new one per run)")
    g.add_argument("--no-auth", action="store_true", help="serve a non-loopback address without any login")
    g.add_argument("--oauth-provider", help="Panel OAuth provider: github, google, azure, okta, generic, ...")
    g.add_argument("--oauth-key", help="OAuth client id")
    g.add_argument("--oauth-secret", help="OAuth client secret")
    g.add_argument("--oauth-redirect-uri", help="OAuth redirect URI registered with the provider")
    g.add_argument("--oauth-extra-params", metavar="JSON", help="extra provider parameters as a JSON object")
    g.add_argument("--oauth-encryption-key", help="encrypts OAuth tokens in cookies (`panel oauth-secret`)")
    p.add_argument("--threads", type=int, default=0,
                   help="Panel threads for the sessions' callbacks (default 0: on the server's event loop, "
                        "faster where cores are few; docs/performance.md)")


def serving(args: argparse.Namespace) -> dict:
    """The serve keywords of --port, --address, --threads and the login flags, checked before any work (a demo
    build takes minutes: a refused address or a taken port is said first)."""
    from vitscope.app.server import Login, check_address, parse_extra_params

    login = Login(basic_auth=args.basic_auth, cookie_secret=args.cookie_secret, no_auth=args.no_auth,
                  oauth_provider=args.oauth_provider, oauth_key=args.oauth_key, oauth_secret=args.oauth_secret,
                  oauth_redirect_uri=args.oauth_redirect_uri,
                  oauth_extra_params=parse_extra_params(args.oauth_extra_params),
                  oauth_encryption_key=args.oauth_encryption_key)
    login.check()
    check_address(args.address, args.port, login)
    return dict(port=args.port, address=args.address, login=login, threads=args.threads or None,
                figures=figure_file)


def figure_file(name: str, fmt: str, target) -> bytes:
    """The app's "save figure": `vitscope.plots.figure_file`, imported at the first click (HoloViews and matplotlib
    take seconds to import; the page does not wait for them). The one place the app and the figures meet."""
    from vitscope.plots import figure_file as draw

    return draw(name, fmt, target)


def one_or_two(stores: list[Path]) -> list[Path]:
    """The stores of serve, export and report: one, or two to compare."""
    if len(stores) > 2:
        raise VitscopeError(f"give one store, or two to compare them, not {len(stores)}")
    return stores


def cmd_serve(args: argparse.Namespace) -> None:
    from vitscope.app import serve

    other = args.store[1] if len(one_or_two(args.store)) == 2 else None
    serve(args.store[0], device=args.device, show=False, scheduler=args.scheduler, compare_with=other,
          **serving(args))


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="serve the app for a store (binds 127.0.0.1 unless --address says otherwise)")
    p.add_argument("store", type=Path, nargs="+", help="a store; or two stores of the same images: the compare "
                   "view (as `vitscope compare A B --serve`)")
    add_serve_args(p)
    p.add_argument("--device", default="cpu", help="where the on-demand attention is computed")
    p.add_argument("--scheduler", help="keep the ablation service's model on a worker of this Dask scheduler "
                   "(e.g. tcp://gpu-host:8786); the store must be readable there at the same path")
    p.set_defaults(func=cmd_serve)
