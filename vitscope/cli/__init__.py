"""`vitscope` command line: demo | build | train-demo | serve | info | compare | ablate | explain | export | figure |
report.

One module per group of commands, each adding its parsers; the heavy layers load inside the commands, so `--help`
and early errors load no torch. User errors (VitscopeError) print one line and exit 2; they never show a
traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from vitscope.errors import FULL, VitscopeError, write_failure
from vitscope.text import printable

# Before torch or any OpenMP library loads: threads that spin while they wait slow a build down several times over
# whenever anything else runs on the machine, and waiting passively costs nothing when nothing does
# (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    from vitscope import __version__
    from vitscope.cli import ablate, build, compare, explain, files, info, serve

    parser = argparse.ArgumentParser(prog="vitscope", description="How Vision Transformers use attention.")
    parser.add_argument("--version", action="version", version=f"vitscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (build, serve, files, info, compare, ablate, explain):
        commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VitscopeError as e:
        print(f"vitscope {args.command}: error: {printable(e, limit=1000)}", file=sys.stderr)
        _quiet_leftovers()
        return 2
    except KeyboardInterrupt:
        hint = "; finished chunks are kept: run the same command to resume" if args.command in ("build", "demo") else ""
        print(f"vitscope {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # a full or read-only disk that no write point turned into its line: still one line
        if e.errno not in FULL | {errno.EROFS}:
            raise
        print(f"vitscope {args.command}: error: {printable(write_failure(e, None), limit=1000)}", file=sys.stderr)
        _quiet_leftovers()
        return 2
    return 0


def _quiet_leftovers() -> None:
    """After the one error line, nothing more: a failed store write leaves zarr's sibling writes (one per array of a
    chunk) with the same error, which asyncio would log at exit as futures nobody retrieved."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
