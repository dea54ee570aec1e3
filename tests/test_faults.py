"""Faults a user can cause while vitscope writes or reads: a full disk, a folder that cannot be written, a store
removed while it is served. Each is one line that says what happened and what to do, and nothing finished is lost:
a build stopped by a full disk resumes, once space is freed, to the store a clean build makes.

The disks are real: small tmpfs mounts (the tests run as root, here and in CI), full or read-only."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_build import ENV, assert_same_store

from vitscope import store, summary
from vitscope.errors import VitscopeError, write_failure

# The demo model on 16 images in two chunks, as the `demo16` fixture builds them.
ARGS = ["--model", "demo", "--images", "demo", "--limit", "16", "--chunk-size", "8", "--ae-epochs", "1"]


@contextlib.contextmanager
def disk(path: Path, size: str, *options: str):
    """A tmpfs of `size` mounted at `path` (options: e.g. "ro"), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # detached even if a failed test left a file open


def fill(filler: Path, slack: int = 0) -> None:
    """Write `filler` until its disk is full, then give back `slack` bytes."""
    with open(filler, "ab", buffering=0) as f:  # unbuffered: nothing left over to fail at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    os.truncate(filler, filler.stat().st_size - slack)


def vitscope(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitscope.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env or ENV)


def one_line(err: str, command: str, *parts: str) -> str:
    """The one error line of a command's stderr, checked to hold `parts`."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"vitscope {command}: error: "), err
    for part in parts:
        assert part in lines[0], (part, err)
    return lines[0]


# `vitscope build` whose disk fills up (FILLER grows until it is full, then gives back SLACK bytes: room for small
# files, not for a chunk's arrays) once its first chunk is written and marked done (FILL_AT=chunk), or once the head
# kinds are in and the layouts come next (FILL_AT=layouts).
FILLS_UP = """
import errno, os, sys
from vitscope import build, store
from vitscope.cli import main

def fill():
    with open(os.environ["FILLER"], "ab", buffering=0) as f:
        try:
            while True:
                f.write(bytes(65536))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    os.truncate(os.environ["FILLER"], os.path.getsize(os.environ["FILLER"]) - int(os.environ.get("SLACK", 0)))

if os.environ["FILL_AT"] == "chunk":
    write = store.write_chunk

    def first_chunk(*args, **kwargs):
        store.write_chunk = write
        write(*args, **kwargs)
        fill()

    store.write_chunk = first_chunk
else:
    heads = build.finish_heads
    build.finish_heads = lambda *args, **kwargs: (heads(*args, **kwargs), fill())
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_and_the_same_build_resumes_to_a_clean_store(tmp_path):
    clean = tmp_path / "clean.zarr"
    res = vitscope("build", *ARGS, "--out", str(clean), "--quiet")
    assert res.returncode == 0, res.stderr
    with disk(tmp_path / "disk", "32m") as mount:
        out, filler = mount / "s.zarr", mount / "filler"
        command = [sys.executable, "-c", FILLS_UP, "build", *ARGS, "--out", str(out), "--quiet"]
        env = {**ENV, "FILLER": str(filler)}
        said = f"no space left on the disk mounted at {mount} (writing {out}): free space there and run the same " \
               "command again: finished chunks are kept"

        # full while the second chunk is written (its done mark would fit): the first stays done, the second not
        res = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env={**env, "FILL_AT": "chunk", "SLACK": str(16 * 1024)})
        assert res.returncode == 2
        one_line(res.stderr, "build", said)
        assert store.done_chunks(out).tolist() == [True, False]
        filler.unlink()

        # full again once every chunk is in, as the layouts are written: the store opens, its layouts pending
        res = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**env, "FILL_AT": "layouts"})
        assert res.returncode == 2
        one_line(res.stderr, "build", said)
        assert store.done_chunks(out).tolist() == [True, True]
        assert store.open_store(out).attrs["layouts_pending"] == ["image_xy", "head_xy_cls", "head_xy_patch"]
        filler.unlink()

        res = vitscope("build", *ARGS, "--out", str(out))  # the same command, space freed
        assert res.returncode == 0, res.stderr
        assert "resuming" in res.stderr and "computing its layouts (image_xy, head_xy_cls, head_xy_patch)" in res.stderr
        assert_same_store(clean, out)
        assert not list(mount.rglob("*.partial"))  # zarr's half-written files went with their failures


def test_a_disk_too_full_for_the_stores_metadata_leaves_no_half_made_store(tmp_path, capsys):
    """Not even room for the store's metadata: one line, and no half-made store that the same command would then
    refuse or trip over; with space freed, the same command builds it."""
    from vitscope.cli import main

    command = ["build", "--model", "demo", "--images", "demo", "--limit", "4", "--chunk-size", "4", "--ae-epochs", "1",
               "--quiet"]
    with disk(tmp_path / "disk", "4m") as mount:
        out = mount / "s.zarr"
        fill(mount / "filler", slack=64 * 1024)
        assert main([*command, "--out", str(out)]) == 2
        one_line(capsys.readouterr().err, "build", f"no space left on the disk mounted at {mount} (writing {out})")
        assert not out.exists()
        (mount / "filler").unlink()
        assert main([*command, "--out", str(out)]) == 0
        assert store.open_store(out).sizes["image"] == 4


@pytest.fixture
def unwritable(request, tmp_path):
    """A folder to write into that cannot be written, as root too: on a read-only disk, or under a file."""
    if request.param == "read-only disk":
        with disk(tmp_path / "ro", "1m", "ro") as mount:
            yield mount / "new" / "folder", "read-only file system"
    else:
        (tmp_path / "a-file").write_text("x")
        yield tmp_path / "a-file" / "folder", f"{tmp_path / 'a-file'} is a file, not a folder"


WAYS = ["read-only disk", "under a file"]


@pytest.mark.parametrize("unwritable", WAYS, indirect=True)
def test_a_build_into_an_unwritable_folder_is_one_line_before_the_model_loads(unwritable, monkeypatch, capsys):
    from vitscope import build
    from vitscope.cli import main

    folder, why = unwritable
    monkeypatch.setattr(build, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    assert main(["build", *ARGS, "--out", str(folder / "s.zarr"), "--quiet"]) == 2
    one_line(capsys.readouterr().err, "build", f"cannot write {folder / 's.zarr'}: {why}: build it where you can write")


def test_any_other_full_disk_is_still_one_line_in_the_cli(demo16, monkeypatch, capsys):
    """A write that no write point translated (here `info`, which writes nothing) still never shows a traceback."""
    from vitscope.cli import main

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(summary, "describe", full)
    assert main(["info", str(demo16)]) == 2
    one_line(capsys.readouterr().err, "info", "no space left on the disk mounted at", "run the same command again")


def test_only_failures_the_user_can_fix_become_a_line(tmp_path):
    """A full disk, a refused or vanished folder of the write: one line naming the path and what to do. An error about
    another file (a font the renderer reads) or of another kind (an I/O error) stays what it is: a fault to report."""
    out, partial = tmp_path / "a.html", tmp_path / ".a.html.1234.partial"
    assert str(write_failure(OSError(errno.ENOSPC, "No space left on device"), out)).startswith(
        "no space left on the disk mounted at ")
    assert str(write_failure(PermissionError(errno.EACCES, "Permission denied", str(partial)), out)) == \
        f"cannot write {out}: permission denied: give an --out where you can write"
    gone = tmp_path / "gone" / "a.html"
    assert str(write_failure(FileNotFoundError(errno.ENOENT, "No such file", str(gone.parent / ".a.partial")), gone)) \
        == f"cannot write {gone}: {gone.parent} was removed or moved meanwhile: run the same command again"
    font = "/usr/share/fonts/some.ttf"
    assert write_failure(FileNotFoundError(errno.ENOENT, "No such file", font), out) is None
    assert write_failure(PermissionError(errno.EACCES, "Permission denied", font), out) is None
    assert write_failure(OSError(errno.EIO, "Input/output error"), out) is None


@pytest.mark.parametrize("unwritable", WAYS, indirect=True)
@pytest.mark.parametrize("command, out", [
    (["export", "--image", "1"], "snapshot.html"),
    (["figure", "--only", "importance-matrix"], "figs"),
    (["report", "--no-curves"], "report.html"),
])
def test_export_figure_and_report_into_an_unwritable_folder_are_one_line(demo16, unwritable, command, out, capsys):
    from vitscope.cli import main

    folder, why = unwritable
    assert main([command[0], str(demo16), *command[1:], "--out", str(folder / out)]) == 2
    one_line(capsys.readouterr().err, command[0], f"cannot write {folder / out}: {why}: give an --out where you can "
                                                  "write")


def test_a_report_into_an_unwritable_folder_says_so_before_its_curves(demo16, tmp_path, monkeypatch, capsys):
    import vitscope.report
    from vitscope.cli import main

    monkeypatch.setattr(vitscope.report, "curves", lambda *a, **k: pytest.fail("curves computed before the check"))
    monkeypatch.setattr(vitscope.report, "explanations",
                        lambda *a, **k: pytest.fail("explanations computed before the check"))
    (tmp_path / "a-file").write_text("x")
    assert main(["report", str(demo16), "--out", str(tmp_path / "a-file" / "r.html"), "--quiet"]) == 2
    one_line(capsys.readouterr().err, "report", "is a file, not a folder")


@pytest.mark.parametrize("command, out, kept", [
    (["export", "--image", "1"], "snapshot.html", "snapshot.html"),
    (["figure", "--only", "importance-matrix"], "figs", "figs/importance-matrix.svg"),
    (["report", "--no-curves", "--no-explain"], "report.html", "report.html"),
    (["report", "--no-curves", "--no-explain"], "report.pdf", "report.pdf"),
])
def test_export_figure_and_report_on_a_full_disk_are_one_line_and_keep_the_older_file(demo16, tmp_path, command, out,
                                                                                        kept, capsys):
    from vitscope.cli import main

    with disk(tmp_path / "disk", "1m") as mount:
        (mount / kept).parent.mkdir(parents=True, exist_ok=True)
        (mount / kept).write_text("the file of an earlier run")
        fill(mount / "filler")
        assert main([command[0], str(demo16), *command[1:], "--out", str(mount / out)]) == 2
        one_line(capsys.readouterr().err, command[0], f"no space left on the disk mounted at {mount} (writing "
                                                      f"{mount / kept}): free space there and run the same command "
                                                      "again")
        assert (mount / kept).read_text() == "the file of an earlier run"
        assert sorted(p.name for p in mount.rglob("*") if p.is_file()) == sorted([Path(kept).name, "filler"])


REMOVED = "was removed or moved while in use: restart `vitscope serve` (or run the command again) on its new path"


@pytest.fixture
def served(demo16, tmp_path):
    """A copy of the demo16 store, to remove while it is in use."""
    return Path(shutil.copytree(demo16, tmp_path / "served.zarr"))


def test_a_store_removed_while_served_is_one_line_from_the_data_and_the_service(served):
    from vitscope.readout.store_data import StoreData
    from vitscope.service import Service

    data, service = StoreData(served), Service(served)
    assert data.thumbnail(0).any() and "error" not in service.compute({"kind": "attention", "image": 0})
    shutil.rmtree(served)
    with pytest.raises(VitscopeError) as e:
        data.thumbnail(3)  # zarr reads a missing chunk as its fill value: a black image, without this check
    assert str(e.value) == f"the store {served} {REMOVED}"
    for request in ({"kind": "attention", "image": 4}, {"kind": "prune", "image": 5, "heads": ["1:2"]},
                    {"kind": "curve", "image": 6, "orders": ["exact-harmful-first"], "steps": [0, 1]}):
        r = service.compute(request)
        assert r.get("error") == f"the store {served} {REMOVED}", (request, r)


def test_a_store_removed_while_served_is_one_line_in_the_page(served):
    from vitscope.app import Explorer
    from vitscope.app.explorer import warm

    app = Explorer(served)
    warm(app.path, "cpu")  # as `vitscope serve` does: the model and its service are up before the removal
    app.selection.image = 1
    assert app.selection.message == ""
    shutil.rmtree(served)
    app.selection.image = 2
    assert app.selection.message.endswith(f"the store {app.path} {REMOVED}")
    assert "\n" not in app.selection.message


def test_a_store_removed_while_its_layouts_are_awaited_stops_the_poll_with_one_line(tmp_path, monkeypatch):
    import zarr
    from app_helpers import fake_served_page, make_store

    from vitscope.app.session import poll_layouts
    from vitscope.readout.store_data import StoreData

    path = make_store(tmp_path / "p.zarr", 16, 2, 2, 4, 3)
    zarr.open_group(str(path), mode="r+").attrs["layouts_pending"] = ["image_xy"]
    zarr.consolidate_metadata(str(path))
    data = StoreData(path)

    made, loaded = fake_served_page(monkeypatch)
    said: list[str] = []
    assert poll_layouts(data, {"image_xy"}, lambda names: pytest.fail(f"{names} arrived"), said.append)
    loaded[0]()
    look, periodic = made[0]
    shutil.rmtree(path)
    look()  # a second later
    assert periodic.stopped and said == [f"the store {path} {REMOVED}"]


def test_the_same_store_still_reads_while_it_is_there(served):
    """The check costs nothing while the store is there: the data read through it are the store's."""
    ds = store.open_store(served)
    plain = xr.open_zarr(str(served), consolidated=True)
    for name in ("thumbnail", "importance", "image_xy"):
        np.testing.assert_array_equal(ds[name].values, plain[name].values)
