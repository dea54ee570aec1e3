"""A user error of `vitscope serve` / `vitscope demo` is one line on stderr and nothing else.

The checks of the address, port, login and store come before the app's heavy stack (datashader → numba,
torch → triton) is imported: such stacks can print their own lines when the interpreter exits.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from app_helpers import make_store

HEAVY = ("numba", "datashader", "torch", "triton", "timm")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("quiet") / "s.zarr", 12, 1, 2, 2, 3)


@pytest.fixture(scope="module")
def taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_line(out: subprocess.CompletedProcess, command: str) -> str:
    assert out.returncode == 2, out
    assert out.stdout == "", out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vitscope {command}: error: "), out.stderr
    return lines[0]


def test_a_taken_port_is_one_line(store, taken):
    line = one_line(run("serve", str(store), "--port", str(taken)), "serve")
    assert f"127.0.0.1:{taken}" in line and "--port" in line


def test_an_open_address_without_a_login_is_one_line_naming_the_flags(store):
    line = one_line(run("serve", str(store), "--address", "0.0.0.0"), "serve")
    assert "--basic-auth" in line and "--no-auth" in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_store_is_one_line(tmp_path):
    # a free port: the port is checked first, and the default 5006 may be another server's on a shared machine
    line = one_line(run("serve", str(tmp_path / "nope.zarr"), "--port", str(free_port())), "serve")
    assert "store not found" in line


def test_demo_refuses_before_building(tmp_path, taken):
    """A refused address or a taken port is said at once, not after the demo's build of minutes."""
    env = {"VITSCOPE_CACHE": str(tmp_path)}
    assert "--basic-auth" in one_line(run("demo", "--limit", "8", "--address", "0.0.0.0", env=env), "demo")
    assert "--port" in one_line(run("demo", "--limit", "8", "--port", str(taken), env=env), "demo")
    assert "users" in one_line(run("demo", "--basic-auth", str(tmp_path / "users.json"), env=env), "demo")
    assert not any(tmp_path.iterdir())  # nothing was built


def test_early_errors_never_load_the_heavy_stack(store, taken):
    code = ("import sys; from vitscope.cli import main; rc = main(sys.argv[1:]); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    for args in (["serve", str(store), "--port", str(taken)], ["serve", str(store), "--address", "0.0.0.0"],
                 ["serve", str(store) + "-missing", "--port", str(free_port())], ["demo", "--port", str(taken)],
                 ["serve", str(store), "--basic-auth", "pw", "--no-auth"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out
        assert out.stdout.strip() == "", f"{args} loaded {out.stdout.strip()}"


def test_the_cli_knows_the_shipped_weights_without_torch():
    from vitscope.cli import build
    from vitscope.models.loading import DEMO_WEIGHTS

    assert build.DEMO_WEIGHTS == DEMO_WEIGHTS and DEMO_WEIGHTS.is_file()
