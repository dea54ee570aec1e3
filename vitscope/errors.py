"""Errors a user can cause; the CLI prints them as one line, never a traceback.

Also the one place where a failed write that the user can fix (a full disk, a folder they cannot write, a folder
removed meanwhile) becomes such a line, naming the path and what to do: `writing` (and `writes`), `replacing`,
`check_writable`.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__


class VitscopeError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


class UnsupportedModelError(VitscopeError):
    """The model is not a ViT family that vitscope can ablate exactly."""


class StoreMismatch(VitscopeError):
    """A store exists but was built from other inputs or by another schema version."""


# Failed writes the user can do something about; any other OSError is not theirs to fix and keeps its traceback.
FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})
RERUN = "run the same command again"
ELSEWHERE = "give an --out where you can write"


def write_failure(e: OSError, path: str | Path | None, *, kept: str = "", elsewhere: str = ELSEWHERE,
                  ) -> VitscopeError | None:
    """The one line for `e`, raised while writing `path` (None: the path the error names), or None when it is not
    a failure the user can fix. `kept` follows the advice to run the command again (what that keeps);
    `elsewhere` is the advice when the place cannot be written."""
    where = Path(path if path is not None else e.filename or ".")
    if e.errno in FULL:
        disk = mount_point(Path(e.filename) if e.filename else where)
        what = "no space left" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return VitscopeError(f"{what} on the disk mounted at {disk} (writing {where}): free space there and "
                             f"{RERUN}{kept}")
    if e.errno in REFUSED and _concerns(e, where):
        blocker = _existing(where)
        folder_wanted = e.errno in (errno.ENOTDIR, errno.EEXIST) and not blocker.is_dir()
        why = f"{blocker} is a file, not a folder" if folder_wanted else (e.strerror or "cannot write").lower()
        return VitscopeError(f"cannot write {where}: {why}: {elsewhere}")
    if e.errno == errno.ENOENT and _concerns(e, where):
        folder = Path(e.filename).parent if e.filename else where.parent
        if not folder.is_dir():  # the folder written into went away meanwhile (a missing file of ours is a bug)
            return VitscopeError(f"cannot write {where}: {folder} was removed or moved meanwhile: {RERUN}{kept}")
    return None


@contextmanager
def writing(path: str | Path, *, kept: str = "", elsewhere: str = ELSEWHERE) -> Iterator[None]:
    """Writes to `path` inside: an OSError the user can fix (`write_failure`) leaves as one VitscopeError line."""
    try:
        yield
    except OSError as e:
        failure = write_failure(e, path, kept=kept, elsewhere=elsewhere)
        if failure is None:
            raise
        raise failure from None


def writes(*, kept: str = "", elsewhere: str = ELSEWHERE) -> Callable[[Callable], Callable]:
    """A decorator: what the function writes to its first argument (a path) fails as one line (`writing`)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def write(path, *args, **kwargs):
            with writing(path, kept=kept, elsewhere=elsewhere):
                return fn(path, *args, **kwargs)
        return write
    return wrap


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` to write to, which then replaces `path` whole: a failed write (a full disk)
    leaves neither half a file nor a damaged older one. Folders are made; failures the user can fix are one line."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield partial
            os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def check_writable(path: str | Path, *, elsewhere: str = ELSEWHERE) -> None:
    """One line now if `path` (a file or folder to write, with the folders above it) could not be written, before
    minutes of work rather than after them. Nothing is left behind: a file is made and removed in the nearest
    folder that exists."""
    path = Path(path)
    with writing(path, elsewhere=elsewhere):
        folder = _existing(path)
        if folder == path and not path.is_dir():  # a file to replace: what is written is its folder
            folder = path.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vitscope-", suffix=".probe"):
            pass


def mount_point(path: Path) -> Path:
    """The mount point of the disk that holds `path` (or would hold it)."""
    p = _existing(path.absolute()).resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _concerns(e: OSError, where: Path) -> bool:
    """Whether `e` is about `where`: the path itself, a folder above it, a file inside it, or a file beside it or
    beside a folder above it (a temporary file, a probe); not some other file that the same code happened to read."""
    if not e.filename:
        return True
    named, where = Path(os.path.abspath(e.filename)), Path(os.path.abspath(where))
    return named == where or where in named.parents or named.parent in where.parents
