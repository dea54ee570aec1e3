"""The on-demand service: its computations against one timm forward per request, the queue (batching, latest
wins, errors), the Dask backend, the CLI, and 8 concurrent sessions."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import threading
from concurrent.futures import CancelledError

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.engine.prune import HeadPrune, zero_masks
from vitscope.engine.reference import pruned
from vitscope.service import Dispatcher, LocalBackend, Service
from vitscope.service.requests import parse_heads
from vitscope.vocab import METRICS


@pytest.fixture(scope="module")
def store(demo16):
    return demo16


@pytest.fixture(scope="module")
def svc(store):
    return Service(store)


def timm_forward(svc: Service, image: int, heads) -> torch.Tensor:
    """P′ of one image through timm's own forward with the heads' regions zeroed (the naive reference)."""
    with torch.no_grad(), pruned(svc.adapter, zero_masks(svc.adapter, parse_heads(heads))):
        return svc.adapter.model(svc.input(image)).float().softmax(-1)[0]


def random_heads(rng: random.Random, count: int) -> list:
    out = []
    for _ in range(count):
        layer, head = rng.randrange(6), rng.randrange(4)
        if rng.random() < 0.25:
            out.append({"layer": layer, "head": head, "region": {"source": [0, 0, rng.randint(1, 8), 8],
                                                                  "cls_cols": rng.random() < 0.5}})
        else:
            out.append(f"{layer}:{head}:{rng.randint(1, 5)}")
    return out


def test_prune_requests_match_timm_forward(svc):
    rng = random.Random(0)
    reqs = [{"kind": "prune", "image": rng.randrange(16), "heads": random_heads(rng, rng.randint(1, 12))}
            for _ in range(10)]
    got = svc.compute_batch(reqs)
    moved = 0.0
    for r, g in zip(reqs, got, strict=True):
        p = timm_forward(svc, r["image"], r["heads"])
        label = int(svc.labels[r["image"]])
        assert g["prob"] == pytest.approx(float(p[label]), abs=1e-5)
        top = p.topk(5)
        assert [c for c, _ in g["top5"]] == [svc.class_names[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([q for _, q in g["top5"]], top.values.numpy(), atol=1e-5)
        moved = max(moved, abs(g["drop"]))
    assert moved > 1e-3


def test_single_drops_come_from_the_store(svc):
    [r] = svc.compute_batch([{"kind": "prune", "image": 2, "heads": ["1:0", "3:2:5"]}])
    imp = svc.ds["importance"].isel(image=2).values
    base = float(svc.ds["baseline_prob"][2])
    p = METRICS.index("prob")
    assert r["single_drops"] == pytest.approx([base - imp[1, 0, 1, p], base - imp[3, 2, 5, p]], abs=1e-6)
    assert r["cls_dist"] is None  # two layers: the distances are not defined


def test_pairs_curve_and_saliency(svc):
    pairs = svc.compute({"kind": "pairs", "image": 1, "k": 4})
    assert "error" not in pairs
    top = [(h.layer, h.head) for h in svc.top_heads(1, 4)]
    assert pairs["heads"] == [f"L{a}H{b}" for a, b in top]
    # the 4 heads are those whose pruning lowers P[true] most, in order
    prob = svc.ds["importance"].isel(image=1).values[:, :, 1, 0].reshape(-1)
    assert [a * 4 + b for a, b in top] == list(np.argsort(prob, kind="stable")[:4])
    base = float(svc.baseline([1]).probs[0, int(svc.labels[1])])
    p = timm_forward(svc, 1, [f"{a}:{b}" for a, b in top[1:3]])
    assert pairs["pair"][1][2] == pytest.approx(base - float(p[int(svc.labels[1])]), abs=1e-5)
    inter = np.asarray(pairs["interaction"])
    assert inter[1, 2] == pytest.approx(pairs["pair"][1][2] - pairs["single"][1] - pairs["single"][2], abs=1e-6)

    curve = svc.compute({"kind": "curve", "image": 1, "orders": ["exact", "random"]})
    assert curve["steps"] == list(range(25)) and curve["y"] == "prob"
    assert curve["curves"]["exact-harmful-first"][0] == pytest.approx(base, abs=1e-5)  # "exact": its old name
    first3 = [h.replace("L", "").replace("H", ":") for h in curve["orders"]["exact-harmful-first"][:3]]
    p3 = float(timm_forward(svc, 1, first3)[int(svc.labels[1])])
    assert curve["curves"]["exact-harmful-first"][3] == pytest.approx(p3, abs=1e-5)
    cls = int(svc.labels[0])
    acc = svc.compute({"kind": "curve", "cls": cls, "orders": ["proxy"], "steps": [0, 24]})
    images = np.flatnonzero(svc.labels == cls)
    correct = svc.ds["topk_idx"].values[images, 0, 0, 0, 0] == cls
    assert acc["images"] == acc["of"] == len(images) and acc["curves"]["proxy-harmful-first"][0] == pytest.approx(
        correct.mean())
    sample = svc.compute({"kind": "curve", "orders": ["random"], "steps": [0, 3], "max_images": 5})
    assert (sample["images"], sample["of"]) == (5, 16)

    seen = []
    sal = svc.compute({"kind": "saliency", "image": 1, "block": 2}, progress=lambda d, t: seen.append((d, t)))
    assert np.asarray(sal["drops"]).shape == (4, 4) and seen[-1] == (16, 16)


def test_new_image_is_the_builds_analysis(svc, tmp_path):
    path = tmp_path / "seven.png"
    Image.fromarray(svc.ds["thumbnail"][5].values).save(path)
    r = svc.compute({"kind": "new_image", "path": str(path), "label": int(svc.labels[5])})
    assert "error" not in r, r
    for name in ("importance", "strength", "attention_distance", "pattern_label", "binary_index"):
        np.testing.assert_allclose(r["arrays"][name], svc.ds[name][5].values, atol=1e-5, err_msg=name)
    # The same picture as stored image 5: the store's fitted layout places it on image 5, far nearer to it than any
    # other stored image is (the placed point is not at 5 exactly: openTSNE optimises it, from its neighbours)
    assert r["placed_by"] == {"image_xy": "transform", "head_xy_cls": "transform", "head_xy_patch": "transform"}
    xy = svc.ds["image_xy"].values
    apart = np.linalg.norm(xy - np.asarray(r["image_xy"]), axis=1)
    others = np.linalg.norm(np.delete(xy, 5, 0) - xy[5], axis=1)
    assert apart.argmin() == 5 and apart[5] < 0.1 * others.min(), (apart[5], others.min())
    assert np.asarray(r["head_xy_patch"]).shape == (6, 4, 2)
    guessed = svc.compute({"kind": "new_image", "data": path.read_bytes()})
    assert guessed["label_from"] == "prediction" and guessed["label"] == guessed["predicted"]


def test_one_layers_attention_runs_the_pass_only_that_far_and_the_rest_continues_it(store):
    """A layer's attention equals that layer of the whole pass's; it costs the blocks before it and that block's
    attention alone; asked deeper, the pass continues (it never recomputes a block or an attention: counted), and
    the image's prune requests then start from it and still match timm."""
    svc = Service(store)
    full = Service(store).attention(3)  # [L, H, P, P] from a fresh service
    blocks, attended = [], []
    ad = svc.adapter
    finish, attend = ad.finish_block, ad.attention
    ad.finish_block = lambda i, x, z: blocks.append(i) or finish(i, x, z)
    ad.attention = lambda i, x: attended.append(i) or attend(i, x)
    try:
        a2 = svc.attention(3, 2)
        assert a2.shape == full.shape[1:] and blocks == [0, 1] and attended == [0, 1, 2]
        np.testing.assert_array_equal(a2, full[2])
        np.testing.assert_array_equal(svc.attention(3, 0), full[0])  # already computed: nothing runs
        np.testing.assert_array_equal(svc.compute({"kind": "attention", "image": 3, "layer": 4})["attention"],
                                      full[4])
        assert blocks == [0, 1, 2, 3] and attended == [0, 1, 2, 3, 4]  # block 2 finished from its kept attention
        [r] = svc.compute_batch([{"kind": "prune", "image": 3, "heads": ["4:1:2", "1:3"]}])
        assert blocks[:6] == [0, 1, 2, 3, 4, 5] and blocks.count(0) == 1  # the pass finished, not run again
        assert attended[:6] == [0, 1, 2, 3, 4, 5] and attended.count(0) == 1
        p = timm_forward(svc, 3, ["4:1:2", "1:3"])
        assert r["prob"] == pytest.approx(float(p[int(svc.labels[3])]), abs=1e-5)
        np.testing.assert_array_equal(svc.attention(3), full)
    finally:
        ad.finish_block, ad.attention = finish, attend


def test_a_cached_baseline_holds_its_own_image_not_its_batch(store):
    """The baseline cache is bounded in images: an image computed in a batch must not keep the batch's tensors."""
    svc = Service(store)
    batch = svc.baseline([0, 1, 2, 3])
    one = svc.baseline([2])
    for x, b in zip(one.inputs + one.outputs, batch.inputs + batch.outputs, strict=True):
        assert x.untyped_storage().nbytes() == x.nbytes == b.nbytes // 4
        torch.testing.assert_close(x[0], b[2])


@pytest.mark.parametrize("request_, says", [
    ({"kind": "attention", "image": 0, "layer": 6}, "layer 6 out of range: this model has layers 0..5"),
    ({"kind": "attention", "image": 0, "layer": "2"}, "'layer' must be an integer"),
    ({"kind": "prune", "image": 0, "heads": ["9:0"]}, "unknown head L9H0"),
    ({"kind": "prune", "image": 0, "heads": ["1:0:8"]}, "mode 8 out of range"),
    ({"kind": "prune", "image": 0, "heads": [{"layer": 1, "head": 0, "region": {}}]}, "empty region"),
    ({"kind": "prune", "image": 99, "heads": ["1:0"]}, "image 99 out of range"),
    ({"kind": "prune", "image": 0, "heads": []}, "needs 'heads'"),
    ({"kind": "nope"}, "unknown request 'nope'"),
    ({"kind": "new_image", "data": b"not an image"}, "cannot use upload as an image"),
    ({"kind": "new_image", "data": b"0" * (50 * 2**20 + 1)}, "over 50 MB are refused"),
    ({"kind": "curve", "orders": ["best"]}, "unknown pruning order 'best'"),
])
def test_bad_requests_are_one_line_and_the_service_goes_on(svc, request_, says):
    bad, good = svc.compute_batch([request_, {"kind": "prune", "image": 0, "heads": ["1:1"]}])
    assert says in bad["error"] and "\n" not in bad["error"]
    assert "error" not in good


class GatedBackend:
    """Runs the real service, but waits for `gate` first and records each batch it is given; `entered` is released
    once per call as it reaches the gate (a lane's thread is then busy, whatever the machine's timing)."""

    def __init__(self, svc: Service, fail: bool = False) -> None:
        self.svc, self.fail = svc, fail
        self.gate, self.calls, self.entered = threading.Event(), [], threading.Semaphore(0)

    def run(self, requests, progress=None):
        self.entered.release()
        # the lane's thread: a failed assert becomes every request's "the service failed: …" answer, which the
        # tests check for
        assert self.gate.wait(60), "the test never opened the gate (60 s)"
        self.calls.append([r.get("kind") for r in requests])
        if self.fail:
            raise RuntimeError("device lost\nsecond line")
        return self.svc.compute_batch(requests, progress)

    def close(self):
        pass


def test_queue_batches_sessions_and_latest_wins(svc):
    backend = GatedBackend(svc)
    d = Dispatcher(backend)
    try:
        first = d.submit("a", {"kind": "saliency", "image": 0, "block": 4})
        busy = d.submit("z", {"kind": "prune", "image": 5, "heads": ["0:1"]})
        for _ in range(2):  # both lanes' threads wait at the gate: what follows stays queued until it opens
            assert backend.entered.acquire(timeout=60)
        stale = d.submit("a", {"kind": "prune", "image": 0, "heads": ["0:0"]})
        futures = {s: d.submit(s, {"kind": "prune", "image": i, "heads": ["2:1"]}) for i, s in enumerate("bcde")}
        latest = d.submit("a", {"kind": "prune", "image": 3, "heads": ["1:1"]})  # replaces `stale`
        assert stale.cancelled()
        backend.gate.set()
        answers = [first.result(60), busy.result(60), latest.result(60), *(f.result(60) for f in futures.values())]
        assert not [a["error"] for a in answers if "error" in a]
        assert first.result(60)["kind"] == "saliency" and busy.result(60)["image"] == 5
        with pytest.raises(CancelledError):
            stale.result(60)
        assert latest.result(60)["image"] == 3 and latest.result()["heads"] == ["L1H1 (mode 1)"]
        for i, s in enumerate("bcde"):
            assert futures[s].result(60)["image"] == i
        # the five queued prune requests of five sessions shared one call; the stale one was never computed
        assert sorted(backend.calls) == [["prune"], ["prune"] * 5, ["saliency"]]
    finally:
        d.close()  # joins the lanes' threads: each has counted what it answered
    assert d.answered == 7


def test_a_failing_backend_answers_one_line_and_keeps_serving(svc):
    backend = GatedBackend(svc, fail=True)
    backend.gate.set()
    d = Dispatcher(backend)
    try:
        r = d.ask("a", {"kind": "prune", "image": 0, "heads": ["0:0"]}, timeout=60)
        assert r["error"] == "the service failed: device lost"
        backend.fail = False
        assert "error" not in d.ask("a", {"kind": "prune", "image": 0, "heads": ["0:0"]}, timeout=60)
    finally:
        d.close()


def test_dask_backend_gives_the_same_answers_and_survives_a_lost_worker(store, svc):
    from distributed import LocalCluster

    from vitscope.service import DaskBackend

    req = {"kind": "prune", "image": 4, "heads": ["0:2", "4:1:3"]}
    want = svc.compute(req)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        backend = DaskBackend(cluster.scheduler_address, store)
        d = Dispatcher(backend)
        try:
            got = d.ask("s", req, timeout=120)
            assert got["prob"] == pytest.approx(want["prob"], abs=1e-5) and got["top5"][0][0] == want["top5"][0][0]
            bad = d.ask("s", {"kind": "prune", "image": 4, "heads": ["7:0"]}, timeout=120)
            assert "unknown head L7H0" in bad["error"]
            backend.client.restart()  # the worker holding the model goes away
            again = d.ask("s", req, timeout=180)
            assert again["prob"] == pytest.approx(want["prob"], abs=1e-5)
            assert backend.notes and "Dask worker lost" in backend.notes[0]
        finally:
            d.close()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_eight_sessions_fifty_mixed_requests_each(store, svc):
    d = Dispatcher(LocalBackend(store))
    rng = random.Random(1)

    def requests_for(s: int) -> list[dict]:
        out = []
        for _ in range(50):
            kind = rng.choices(["prune", "attention", "pairs", "saliency"], [0.7, 0.1, 0.1, 0.1])[0]
            r = {"kind": kind, "image": rng.randrange(16)}
            if kind == "prune":
                r["heads"] = random_heads(rng, rng.randint(1, 6))
            elif kind == "pairs":
                r["k"] = 3
            elif kind == "saliency":
                r["block"] = 4
            out.append(r)
        return out

    plans = {f"s{s}": requests_for(s) for s in range(8)}
    answers: dict[str, list[dict]] = {s: [] for s in plans}

    def session(name: str) -> None:
        for n, r in enumerate(plans[name]):  # one channel per request: nothing is stale, every one is answered
            answers[name].append(d.submit(name, r, channel=str(n)).result(120))

    try:
        session("s0")  # warm-up, then measure memory across the concurrent run
        answers["s0"].clear()
        before = rss_mb()
        threads = [threading.Thread(target=session, args=(s,)) for s in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not [t for t in threads if t.is_alive()], "a session still waits for its answers after 300 s"
        grown = rss_mb() - before
    finally:
        d.close()
    assert d.answered == 8 * 50 + 50
    for name, reqs in plans.items():
        assert len(answers[name]) == 50
        for r, a in zip(reqs, answers[name], strict=True):
            want = svc.compute(r)  # the direct engine call for the same inputs
            assert a["kind"] == r["kind"] and a.get("image") == r["image"] and "error" not in a
            if r["kind"] == "prune":
                assert a["prob"] == pytest.approx(want["prob"], abs=1e-5)
            elif r["kind"] == "attention":
                np.testing.assert_allclose(a["attention"], want["attention"], atol=1e-5)
            else:
                key = "pair" if r["kind"] == "pairs" else "drops"
                np.testing.assert_allclose(a[key], want[key], atol=1e-5)
    assert grown < 300, f"memory grew by {grown:.0f} MB over 400 requests"


def test_cli_ablate_json_and_errors(store, capsys):
    from vitscope.cli import main

    def run(*args):  # `vitscope ablate` in this process: its wiring, without a fresh interpreter's imports each time
        code = main(["ablate", str(store), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    res = run("--image", "3", "--prune", "2:1", "4:0:5", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    want = Service(store).compute({"kind": "prune", "image": 3, "heads": ["2:1", "4:0:5"]})
    assert out["prob"] == pytest.approx(want["prob"], abs=1e-6) and out["jsd"] == pytest.approx(want["jsd"], abs=1e-6)
    assert len(out["top5"]) == 5 and all(len(t) == 2 for t in out["top5"])
    region = '{"layer": 1, "head": 2, "region": {"source": [0, 0, 4, 8], "cls_cols": true}}'
    res = run("--image", "3", "--prune", "2:1", region, "--json")
    assert res.returncode == 0, res.stderr
    want = Service(store).compute({"kind": "prune", "image": 3, "heads": [
        "2:1", {"layer": 1, "head": 2, "region": {"source": [0, 0, 4, 8], "cls_cols": True}}]})
    assert json.loads(res.stdout)["prob"] == pytest.approx(want["prob"], abs=1e-6)
    table = run("--image", "3", "--prune", "2:1")
    assert table.returncode == 0 and "P'[true]" in table.stdout and "top-5" in table.stdout
    bad = run("--image", "3", "--prune", "2:9")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown head L2H9" in bad.stderr
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(buf, format="PNG")
    (store.parent / "black.png").write_bytes(buf.getvalue())
    new = run("--file", str(store.parent / "black.png"))
    assert new.returncode == 0, new.stderr
    assert "predicted" in new.stdout and "Image Overview" in new.stdout


def test_head_prune_round_trips_as_plain_data():
    from vitscope.engine.prune import Region
    from vitscope.service.requests import head_dict, parse_head

    for h in (HeadPrune(1, 2, 5), HeadPrune(0, 3, Region(source=(0, 0, 2, 2), cls_rows=True))):
        assert parse_head(json.loads(json.dumps(head_dict(h)))) == h
