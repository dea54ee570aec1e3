"""A real JupyterLab, offline, driven by headless Chromium: shared by tests/test_jupyter.py and
benchmarks/jupyter_browser.py.

The server runs as the user would start it (`jupyter lab`, `--allow-root` since CI runs as root) with a private
HOME, config, data-free settings and runtime dir, so it neither reads nor writes the user's Jupyter files; its
kernel imports this tree (PYTHONPATH). The page runs the notebook through JupyterLab's own commands
(`window.jupyterapp`, exposed by `--LabApp.expose_app_in_browser`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from proc_helpers import stop, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "vitscope-test"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
LOCAL = ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "ws://localhost", "data:", "blob:")
# JupyterLab settings: every cell rendered (no windowing: the app's cell stays in the page when scrolled past),
# no news or update checks.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
SCRATCH = 3  # empty code cells appended to the notebook, for the test's own code

KERNEL_READY_JS = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(k && k.connectionStatus === 'connected' && k.status === 'idle' && w.content.widgets.length); }"""
# The command's promise settles once the kernel has replied and gone idle (all of the cell's outputs are in).
RUN_CELL_JS = """([i, code]) => { const w = window.jupyterapp.shell.currentWidget, cell = w.content.widgets[i];
  if (code !== null) cell.model.sharedModel.setSource(code);
  w.content.activeCellIndex = i;
  window.vsRuns = window.vsRuns || {};
  const run = window.vsRuns[i] = {done: false};
  window.jupyterapp.commands.execute('notebook:run-cell').finally(() => { run.done = true; }); }"""
OUTPUT_JS = """(i) => { const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
  const out = cell.model.outputs.toJSON(), run = (window.vsRuns || {})[i];
  return {count: cell.model.executionCount, done: !run || run.done,
          text: out.map(o => o.text || (o.data && o.data['text/plain']) || '').map(t => Array.isArray(t) ?
                t.join('') : t).join('')}; }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_copy(store: Path, out: Path) -> tuple[Path, list[int]]:
    """apps/explore.ipynb with its STORE pointed at `store`, plus SCRATCH empty code cells; (path, code cell
    indices of the original cells in notebook order)."""
    nb = json.loads((ROOT / "apps" / "explore.ipynb").read_text())
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    for i in code:
        src = "".join(nb["cells"][i]["source"])
        nb["cells"][i]["source"] = src.replace('cache_root() / "demo.zarr"', repr(str(store)))
    for k in range(SCRATCH):
        nb["cells"].append({"cell_type": "code", "id": f"scratch{k}", "metadata": {}, "outputs": [],
                            "execution_count": None, "source": ""})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "explore.ipynb"
    path.write_text(json.dumps(nb))
    return path, code


class Lab:
    """`jupyter lab` on 127.0.0.1 serving `root`, with private config; `url(path)` opens a file in it."""

    def __init__(self, root: Path, home: Path) -> None:
        self.port = free_port()
        settings = home / "lab-settings"
        for name, value in SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("JUPYTER_PATH", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
             "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
        wait_for_line(self.proc, f"127.0.0.1:{self.port}/lab", timeout=120)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?token={TOKEN}"

    def close(self) -> None:
        stop(self.proc)


def open_notebook(page, url: str, timeout: float = 120) -> None:
    page.goto(url)
    page.wait_for_function(KERNEL_READY_JS, timeout=timeout * 1000)


def run_cell(page, i: int, code: str | None = None) -> None:
    """Run cell `i` (after replacing its source with `code`), as the user's Shift+Enter would; returns at once."""
    page.evaluate(RUN_CELL_JS, [i, code])


def output(page, i: int) -> dict:
    """Cell `i`'s outputs as JupyterLab holds them: {count, done (False while its last run_cell is queued or
    running), text}."""
    return page.evaluate(OUTPUT_JS, i)


def cell_result(page, i: int, code: str, timeout: float = 120) -> str:
    """Run `code` in cell `i` and return its text output once the cell has run."""
    run_cell(page, i, code)
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = output(page, i)
        if out["done"]:
            return out["text"]
        time.sleep(0.1)
    raise AssertionError(f"cell {i} did not finish within {timeout:.0f} s: {code!r}")


def external(requests: list[str]) -> list[str]:
    """The requests that left the machine (anything but this host, data: and blob:)."""
    return [u for u in requests if not u.startswith(LOCAL)]
