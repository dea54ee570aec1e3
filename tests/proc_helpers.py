"""Waiting on the processes tests start, always with a deadline: a server that hangs fails its test, not CI."""

from __future__ import annotations

import subprocess
import threading


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    """Read `proc`'s text stdout until a line containing `pattern`; returns the output so far.

    Stops the process and fails with its output when no such line came within `timeout` seconds or it ended first.
    A thread keeps reading afterwards, so a chatty server never blocks on a full pipe.
    """
    seen: list[str] = []
    found, done = threading.Event(), threading.Event()

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if not found.is_set() and pattern in line:
                found.set()
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True, name="read-stdout").start()
    done.wait(timeout)
    if found.is_set():
        return "".join(seen)
    ended = done.is_set()  # before stop(), which ends the output too
    stop(proc)
    why = f"ended ({proc.returncode})" if ended else f"did not print it within {timeout:.0f} s"
    raise AssertionError(f"waiting for {pattern!r}: {proc.args[:4]} {why}; its output:\n{''.join(seen)[-5000:]}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate, then kill what does not end within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
