"""One service per server process: a request queue shared by every session, in-process or on a Dask worker.

Sessions submit plain-data requests and get a Future each. Pending prune and patch requests of all
sessions are answered together (their forwards share batches); slower kinds (pairs, curves, saliency, new
images) run in a lane of their own so they never hold up a tap. Per session and channel the latest
request wins: a pending request that a newer one replaces is cancelled, never computed.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from vitscope.errors import VitscopeError, one_line

FAST = ("prune", "patch", "attention")  # answered within a tap; batched across sessions


@dataclass
class Job:
    request: dict
    future: Future = field(default_factory=Future)
    progress: Callable[[int, int], None] | None = None


class LocalBackend:
    """The model in this process (the app's own CPU or GPU)."""

    def __init__(self, store: str | Path, device: str = "cpu") -> None:
        from vitscope.service.core import Service

        self.service = Service(store, device)
        self.where = f"in this process ({device})"

    def run(self, requests: list[dict], progress=None) -> list[dict]:
        return self.service.compute_batch(requests, progress)

    def close(self) -> None:
        pass


class ServiceActor:
    """Lives on a Dask worker (e.g. a GPU host) and holds the model there."""

    def __init__(self, store: str, device: str) -> None:
        from vitscope.service.core import Service

        self.service = Service(store, device)

    def compute_batch(self, requests: list[dict]) -> list[dict]:
        return self.service.compute_batch(requests)


class DaskBackend:
    """The model in a Dask actor; the app process needs no GPU. The store path must be readable there too."""

    def __init__(self, scheduler: str, store: str | Path, device: str = "cpu", timeout: float = 30) -> None:
        try:
            from distributed import Client
        except ImportError as e:  # pragma: no cover - distributed is a dependency
            raise VitscopeError("--scheduler needs dask.distributed: pip install distributed") from e
        self.store, self.device = str(Path(store).resolve()), device
        try:
            self.client = Client(scheduler, timeout=timeout)
        except OSError as e:
            raise VitscopeError(f"cannot reach the Dask scheduler at {scheduler} ({one_line(e)}): "
                                "start one (dask scheduler) or check the address") from e
        self.where = f"on a Dask worker of {scheduler} ({device})"
        self.notes: list[str] = []  # lost workers, for the log and the page
        self._start()

    def _start(self) -> None:
        fut = self.client.submit(ServiceActor, self.store, self.device, actor=True, pure=False)
        try:
            self.actor = fut.result()
        except VitscopeError:
            raise
        except Exception as e:
            raise VitscopeError(f"the Dask worker could not load the service: {one_line(e)}") from e

    def run(self, requests: list[dict], progress=None) -> list[dict]:
        try:
            return self.actor.compute_batch(requests).result()
        except Exception as e:  # the worker holding the model is gone: report it, start a new one, retry once
            self.notes.append(f"Dask worker lost ({one_line(e)}); the request was retried on a new worker")
            self._start()
            return self.actor.compute_batch(requests).result()

    def close(self) -> None:
        self.client.close()


class Dispatcher:
    """The queue in front of a backend; thread-safe; `submit` never blocks on the computation."""

    def __init__(self, backend, max_batch: int = 64) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._lanes: dict[str, OrderedDict[tuple[str, str], Job]] = {"fast": OrderedDict(), "slow": OrderedDict()}
        self._closed = False
        self.answered = 0  # requests computed (not counting cancelled stale ones)
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True, name=f"vitscope-{lane}")
                         for lane in self._lanes]
        for t in self._threads:
            t.start()

    def submit(self, session: str, request: dict, channel: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> Future:
        """Queue `request` for `session`; a pending request of the same session and channel is dropped."""
        kind = request.get("kind") if isinstance(request, dict) else None
        lane = self._lanes["fast" if kind in FAST else "slow"]
        key = (str(session), channel or str(kind))
        job = Job(request, progress=progress)
        with self._cond:
            if self._closed:
                raise VitscopeError("the vitscope service is closed")
            for other in self._lanes.values():
                old = other.pop(key, None)
                if old is not None:
                    old.future.cancel()
            lane[key] = job
            self._cond.notify_all()
        return job.future

    def ask(self, session: str, request: dict, timeout: float | None = None) -> dict:
        """Submit and wait (CLI, Jupyter, tests)."""
        return self.submit(session, request).result(timeout)

    def _take(self, lane: str) -> list[Job]:
        queue = self._lanes[lane]
        with self._cond:
            while not queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            if lane == "slow":
                return [queue.popitem(last=False)[1]]
            jobs = [queue.popitem(last=False)[1] for _ in range(min(self.max_batch, len(queue)))]
        return jobs

    def _loop(self, lane: str) -> None:
        while True:
            jobs = self._take(lane)
            if not jobs:
                return
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            progress = _safe(jobs[0].progress) if len(jobs) == 1 else None
            try:
                results = self.backend.run([j.request for j in jobs], progress)
            except Exception as e:  # a bug or a lost service: every job hears of it, the queue keeps serving
                results = [{"kind": j.request.get("kind"), "error": f"the service failed: {one_line(e)}"}
                           for j in jobs]
            for j, r in zip(jobs, results, strict=True):
                j.future.set_result(r)
            with self._cond:
                self.answered += len(jobs)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for lane in self._lanes.values():
                for job in lane.values():
                    job.future.cancel()
                lane.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self.backend.close()


def _safe(progress: Callable[[int, int], None] | None) -> Callable[[int, int], None] | None:
    """A progress report that fails (a closed page) never fails the computation it reports on."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception:  # noqa: BLE001, S110 - progress is a courtesy
            pass

    return report


def make_dispatcher(store: str | Path, device: str = "cpu", scheduler: str | None = None) -> Dispatcher:
    """The service for one store: in this process, or on a Dask worker when `scheduler` is given."""
    backend = DaskBackend(scheduler, store, device) if scheduler else LocalBackend(store, device)
    return Dispatcher(backend)


_loading = threading.Lock()  # one model load per store, whether a warm-up thread or a tap asks first


@lru_cache(maxsize=4)
def _dispatcher_or_error(path: str, device: str, scheduler: str | None) -> Dispatcher | VitscopeError:
    try:
        return make_dispatcher(path, device, scheduler)
    except VitscopeError as e:
        return e


def shared_dispatcher(path: str, device: str, scheduler: str | None = None) -> Dispatcher:
    """The one route to the model for a store in this process: every session's requests, attention included,
    share its queue. The model loads once, here or (with `scheduler`) on a Dask worker, and then this process
    loads none; a model that cannot be loaded fails once, then at once with the same line."""
    with _loading:
        got = _dispatcher_or_error(path, device, scheduler)
    if isinstance(got, VitscopeError):
        raise got
    return got


def warm(path: str, device: str, scheduler: str | None = None) -> None:
    """Load the model now (`vitscope serve`, Jupyter), so the first tap is quick. An unreachable scheduler is one
    line now; a model that cannot be loaded here turns on-demand work off (the views still show the store)."""
    try:
        shared_dispatcher(path, device, scheduler)
    except VitscopeError as e:
        if scheduler:
            raise
        print(f"vitscope: warning: on-demand attention is unavailable: {e}", file=sys.stderr)


def ask_attention(d: Dispatcher, session: str, image: int, layer: int | None = None) -> np.ndarray:
    """[L, H, P, P] attention of a stored image ([H, P, P] of one `layer`), asked of the dispatcher; its error line
    raised as one."""
    request = {"kind": "attention", "image": int(image)}
    if layer is not None:
        request["layer"] = int(layer)
    r = d.ask(session, request)
    if "error" in r:
        raise VitscopeError(r["error"])
    return r["attention"]


def ask_explain(d: Dispatcher, session: str, image: int) -> dict:
    """`Service.explain`'s dict of a stored image (all four maps), asked of the dispatcher; its error line raised as
    one."""
    r = d.ask(session, {"kind": "explain", "image": int(image)})
    if "error" in r:
        raise VitscopeError(r["error"])
    return {k: v for k, v in r.items() if k != "kind"}
