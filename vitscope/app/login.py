"""Panel's basic-auth login with failed logins slowed per client address and logged.

Panel's `BasicLoginHandler` checks every posted password at once and logs nothing, so a guesser may try as fast as
the server answers. `ThrottledBasicAuthProvider` is Panel's `BasicAuthProvider` whose login handler first asks a
`LoginThrottle` whether the client's address may try now: after `FREE_FAILURES` failures in a row an address must
wait `FIRST_WAIT` s before its next try, twice as long after each further failure, at most `MAX_WAIT` s; a refused
try gets HTTP 429 with the login page and its message, without its password being looked at; a success clears the
address. Each failed try is one line on stderr with the address and the user name (as repr), never the password.

The address is tornado's `request.remote_ip`: the peer of the TCP connection, as `vitscope serve` does not turn on
tornado's `xheaders`. Behind a reverse proxy (an HTTPS front end) every client then has the proxy's address, so one
guesser slows the logins of everyone behind it; trusting X-Forwarded-For instead would let any client that reaches the
port directly pick its own address, so it is not done. Per-address throttling also cannot stop a guesser with many
addresses (an IPv6 prefix, a botnet): strong passwords remain the defence.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from panel.auth import BasicAuthProvider, BasicLoginHandler
from panel.io.resources import CDN_DIST

FREE_FAILURES = 5  # failures in a row an address may make before it has to wait
FIRST_WAIT = 1.0  # seconds after the FREE_FAILURES-th failure, doubled per further failure
MAX_WAIT = 300.0  # the longest wait
FORGET_AFTER = 3600.0  # an address without a failure for this long starts again from zero
MAX_ADDRESSES = 10_000  # the table's bound: the address whose last failure is oldest is forgotten first
MAX_LOGGED_NAME = 80  # characters of a user name that reach the log


class LoginThrottle:
    """Failed logins per address: how long an address must wait before its next try.

    `clock` (seconds, monotonic) is injectable so that tests need no sleeps. Not thread-safe: tornado calls the
    login handler on its one event loop.
    """

    def __init__(self, free: int = FREE_FAILURES, first: float = FIRST_WAIT, cap: float = MAX_WAIT,
                 forget: float = FORGET_AFTER, max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.first, self.cap, self.forget, self.max_addresses = free, first, cap, forget, max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (count, time), oldest first

    def window(self, failures: int) -> float:
        """Seconds an address with this many failures in a row must wait after the last one."""
        if failures < self.free:
            return 0.0
        return min(self.first * 2.0 ** min(failures - self.free, 64), self.cap)  # 2**64 s is past any cap

    def wait(self, address: str) -> float:
        """Seconds before `address` may try again (0: now)."""
        self._prune()
        count, last = self._failures.get(address, (0, 0.0))
        return max(0.0, last + self.window(count) - self.clock()) if count else 0.0

    def failure(self, address: str) -> int:
        """Count a failed try of `address`; returns its failures in a row."""
        count = self._failures.pop(address, (0, 0.0))[0] + 1
        self._failures[address] = (count, self.clock())  # at the end: the newest
        self._prune()
        return count

    def success(self, address: str) -> None:
        self._failures.pop(address, None)

    def __len__(self) -> int:
        return len(self._failures)

    def _prune(self) -> None:
        now = self.clock()
        while self._failures:
            count, last = next(iter(self._failures.values()))
            if len(self._failures) <= self.max_addresses and now - last < max(self.forget, self.window(count)):
                break
            self._failures.popitem(last=False)


def check_password(username: str, password: str, *, password_for_all: str | None = None,
                   users: Path | None = None) -> bool:
    """Panel's rule: one password for any user name, or the user's own in a JSON file of users, read again at each
    login so that edits apply at once. Compared in constant time; an unreadable file lets nobody in."""
    if users is not None:
        try:
            table = json.loads(users.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"vitscope: login refused: cannot read the users file {str(users)!r} ({type(e).__name__})",
                  file=sys.stderr, flush=True)
            return False
        expected = table.get(username) if isinstance(table, dict) else None
    else:
        expected = password_for_all
    return isinstance(expected, str) and bool(expected) and secrets.compare_digest(
        password.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def logged_name(username: str) -> str:
    """The user name for the log: repr escapes newlines and control characters, so a crafted name cannot forge a
    line; a long name is cut."""
    cut = username[:MAX_LOGGED_NAME]
    return repr(cut) + ("..." if len(username) > len(cut) else "")


class ThrottledLoginHandler(BasicLoginHandler):
    """Panel's login page and form; a POST from a throttled address is refused before its password is looked at.

    `ThrottledBasicAuthProvider` makes one subclass per provider with `_provider` set."""

    _provider: ThrottledBasicAuthProvider

    def post(self) -> None:
        wait = self._provider.throttle.wait(self.request.remote_ip or "")
        if wait > 0:
            seconds = math.ceil(wait)
            self.set_status(429)
            self.set_header("Retry-After", str(seconds))
            self.write(self._login_template.render(
                login_endpoint=self._login_endpoint, PANEL_CDN=CDN_DIST,
                errormessage=f"too many failed logins from this address; try again in {seconds} s"))
            return
        super().post()  # calls _validate below

    def _validate(self, username: str, password: str) -> bool:
        provider, address = self._provider, self.request.remote_ip or ""
        if check_password(username, password, password_for_all=provider.password, users=provider.users):
            provider.throttle.success(address)
            return True
        count = provider.throttle.failure(address)
        window = provider.throttle.window(count)
        after = f"; its next try in {math.ceil(window)} s at the earliest" if window else ""
        print(f"vitscope: failed login from {address} as {logged_name(username)} ({count} in a row{after})",
              file=sys.stderr, flush=True)
        return False


class ThrottledBasicAuthProvider(BasicAuthProvider):
    """Panel's `BasicAuthProvider` with `ThrottledLoginHandler`: give it to `pn.serve(auth_provider=...)` *instead of*
    `basic_auth=` (with which Panel would build its own provider), with either one password for all or a JSON file
    of users {name: password}."""

    def __init__(self, password: str | None = None, users: Path | None = None,
                 throttle: LoginThrottle | None = None) -> None:
        if (password is None) == (users is None):
            raise ValueError("give one password or a users file")
        self.password, self.users = password, users
        self.throttle = throttle if throttle is not None else LoginThrottle()  # an empty throttle is falsy (len 0)
        super().__init__()  # Bokeh validates login_handler here, so the fields above come first

    @property
    def login_handler(self) -> type[ThrottledLoginHandler]:
        # Panel sets its template on the shared BasicLoginHandler class; a subclass per provider keeps ours apart
        if "_handler" not in self.__dict__:
            self._handler = type("ThrottledLoginHandler", (ThrottledLoginHandler,), {
                "_provider": self, "_login_endpoint": self._login_endpoint, "_login_template": self._login_template})
        return self._handler
