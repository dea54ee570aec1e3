"""`vitscope ablate` as a user types it: head pairs (`--pairs K`), pruning curves of a class (`--class`, `--tol`) and
of a sample (`--max-images`), patch saliency (`--block`). Each answer is checked against numbers computed here: the
store's arrays sorted with numpy, and timm's own forward with the heads' attention zeroed (or the patches
occluded), one forward per request."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from vitscope.cli import main
from vitscope.engine.prune import zero_masks
from vitscope.engine.reference import pruned
from vitscope.heads import Head
from vitscope.service import Service
from vitscope.store import open_store
from vitscope.vocab import PRUNABLE_TOL, WHOLE_HEAD

IMAGE = 3


@pytest.fixture(scope="module")
def svc(demo16) -> Service:
    return Service(demo16)


def ablate(capsys, store, *args: str) -> tuple[int, str, str]:
    code = main(["ablate", str(store), *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def head_of(name: str) -> Head:
    layer, head = re.fullmatch(r"L(\d+)H(\d+)", name).groups()
    return Head(int(layer), int(head))


def timm_probs(svc: Service, images: list[int], heads: list[Head]) -> torch.Tensor:
    """Class probabilities [B, C] through timm's forward with the heads' attention zeroed (the naive reference)."""
    with torch.no_grad(), pruned(svc.adapter, zero_masks(svc.adapter, heads)):
        return svc.adapter.model(svc.inputs(images)).float().softmax(-1)


def test_pairs_are_the_top_k_heads_and_their_interactions(demo16, svc, capsys):
    """`--pairs 4`, the table a person reads: the image's four heads whose pruning lowers P[true] most (the store,
    sorted here), their single drops and Δ(i,j) − Δ(i) − Δ(j), every Δ from timm's forward."""
    code, out, err = ablate(capsys, demo16, "--image", IMAGE, "--pairs", 4)
    assert code == 0, err
    pruned_prob = open_store(demo16)["importance"].isel(image=IMAGE).sel(mode=WHOLE_HEAD, metric="prob").values
    H = pruned_prob.shape[1]
    names = [f"L{j // H}H{j % H}" for j in np.argsort(pruned_prob.reshape(-1), kind="stable")[:4]]
    lines = out.strip().splitlines()
    assert lines[0] == f"image {IMAGE}: interaction Δ(i,j) − Δ(i) − Δ(j) of P[true] drops, top 4 heads"
    assert lines[1].split() == names and len(lines) == 7

    label = int(svc.labels[IMAGE])
    p0 = float(timm_probs(svc, [IMAGE], [])[0, label])
    heads = [head_of(n) for n in names]
    drop = {(i, j): p0 - float(timm_probs(svc, [IMAGE], [heads[i], heads[j]])[0, label])
            for i in range(4) for j in range(i, 4)}  # (i, i): the head alone
    want = np.array([[0.0 if i == j else drop[min(i, j), max(i, j)] - drop[i, i] - drop[j, j] for j in range(4)]
                     for i in range(4)])
    for name, line, row in zip(names, lines[2:6], want, strict=True):
        assert line.split()[0] == name
        np.testing.assert_allclose([float(v) for v in line.split()[1:]], row, atol=6e-5, err_msg=name)
    assert np.abs(want).max() > 1e-3  # pruning two heads together is not the sum of their drops here
    singles = re.findall(r"(L\d+H\d+) ([+-]\d\.\d{4})", lines[6].removeprefix("single drops: "))
    assert [n for n, _ in singles] == names
    np.testing.assert_allclose([float(v) for _, v in singles], [drop[i, i] for i in range(4)], atol=6e-5)


def brute_force_prunable(accuracy: list[float], tol: float) -> int:
    """Heads pruned before top-1 falls more than tol below the unpruned (step 0), from every step's accuracy."""
    for n in range(1, len(accuracy)):
        if accuracy[0] - accuracy[n] > tol + 1e-9:
            return n - 1
    return len(accuracy) - 1


def test_a_class_curve_with_a_tolerance(demo16, svc, capsys):
    """`--curve ORDERS --class NAME --tol T`: the class's images only, the exact order sorted here from the store,
    top-1 after each step from timm's forward, and each prunable count at T read off those steps."""
    ds = open_store(demo16)
    valid = ds["valid"].values.astype(bool)
    labels = ds["label"].values
    counts = np.bincount(labels[valid], minlength=ds.sizes["class"])
    cls = int(np.argmax(counts))  # the class with most images (ties: the first)
    name = str(ds["class_name"].values[cls])
    scope = np.flatnonzero(valid & (labels == cls)).tolist()
    assert len(scope) >= 2
    tol = 0.4  # a class of three: one wrong image is within it, and not within the default 0.01
    orders = ["exact-harmless-first", "random"]
    code, out, err = ablate(capsys, demo16, "--curve", *orders, "--class", name, "--tol", tol, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["cls"] == cls and r["images"] == r["of"] == len(scope) and r["tol"] == tol
    L, H = ds.sizes["layer"], ds.sizes["head"]
    assert r["steps"] == list(range(L * H + 1)) and list(r["curves"]) == orders

    # exact-harmless-first: the highest mean P'[true] with the head pruned alone first, ties in head order
    mean = ds["importance"].isel(image=scope).sel(mode=WHOLE_HEAD, metric="prob").values.astype(np.float64).mean(0)
    flat = mean.reshape(-1)
    assert r["orders"]["exact-harmless-first"] == [f"L{j // H}H{j % H}"
                                                   for j in sorted(range(L * H), key=lambda j: (-flat[j], j))]
    assert sorted(r["orders"]["random"]) == sorted(r["orders"]["exact-harmless-first"])

    for o in orders:
        heads = [head_of(n) for n in r["orders"][o]]
        for n in (0, 1, 2, 3, 6, 12, 18, L * H):  # top-1 of the class's images with the first n heads pruned
            top1 = timm_probs(svc, scope, heads[:n]).argmax(-1).numpy()
            assert r["curves"][o][n] == pytest.approx(float((top1 == cls).mean()), abs=1e-12), (o, n)
        # every step is in the curve: the count at the tolerance can be read off it
        assert r["prunable"][o] == brute_force_prunable(r["curves"][o], tol), o
    assert r["baseline"] == pytest.approx(r["curves"][orders[0]][0])
    assert any(brute_force_prunable(r["curves"][o], tol) != brute_force_prunable(r["curves"][o], PRUNABLE_TOL)
               for o in orders), "the tolerance changes no count here: the test would not see --tol"


def test_a_curve_over_a_sample_of_max_images(demo16, svc, capsys):
    """`--curve ORDERS --max-images N` over all images: a seeded sample of N of the 16, as the service's Python
    API draws it, each value a count of N images; the table says so and shows the same numbers."""
    orders = ["proxy-harmless-first"]
    code, out, err = ablate(capsys, demo16, "--curve", *orders, "--max-images", 6)
    assert code == 0, err
    want = svc.compute({"kind": "curve", "orders": orders, "max_images": 6})
    assert "error" not in want, want
    assert want["images"] == 6 and want["of"] == int(svc.valid.sum()) == 16
    lines = out.strip().splitlines()
    assert lines[0] == "progressive pruning, all images (a sample of 6 of 16): top-1 accuracy after pruning n heads " \
                       "in each order"
    assert lines[1].split() == ["n", *orders]
    rows = [line.split() for line in lines[2:2 + len(want["steps"])]]
    assert [int(row[0]) for row in rows] == want["steps"]
    got = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(got, np.array([want["curves"][o] for o in orders]).T, atol=6e-5)
    np.testing.assert_allclose(got * 6, np.round(got * 6), atol=1e-3)  # accuracies of 6 images, not of 16
    assert f"drops by more than {PRUNABLE_TOL:g}" in out
    assert [line.split() for line in lines[-len(orders):]] == [[o, str(want["prunable"][o])] for o in orders]


def test_saliency_occludes_block_by_block_squares(demo16, svc, capsys):
    """`--saliency --block 2`: a 4 × 4 grid of drops on the demo's 8 × 8 patches, each the drop of P[true] when that
    2 × 2-patch square is set to the mean colour (0 after normalisation) before timm's forward."""
    code, out, err = ablate(capsys, demo16, "--image", IMAGE, "--saliency", "--block", 2, "--json")
    assert code == 0, err
    r = json.loads(out)
    label = int(svc.labels[IMAGE])
    x = svc.input(IMAGE)
    with torch.no_grad():
        p0 = float(svc.adapter.model(x).softmax(-1)[0, label])
    assert r["block"] == 2 and r["baseline_prob"] == pytest.approx(p0, abs=1e-5)
    assert r["baseline_prob"] == pytest.approx(float(open_store(demo16)["baseline_prob"][IMAGE]), abs=1e-5)
    side = 2 * svc.adapter.patch_size
    s = svc.adapter.grid // 2
    occluded = x.repeat(s * s, 1, 1, 1)
    for k in range(s * s):
        row, col = divmod(k, s)
        occluded[k, :, row * side:(row + 1) * side, col * side:(col + 1) * side] = 0
    with torch.no_grad():
        want = p0 - svc.adapter.model(occluded).softmax(-1)[:, label].numpy().reshape(s, s)
    assert np.shape(r["drops"]) == (4, 4)
    np.testing.assert_allclose(r["drops"], want, atol=1e-5)
    assert np.ptp(want) > 1e-4  # the squares differ: a wrong square would show

    code, out, err = ablate(capsys, demo16, "--image", IMAGE, "--saliency", "--block", 3)
    shown = err.rsplit("\r", 1)[-1].strip()  # what the terminal keeps once the progress bar has cleared its line
    assert code == 2 and not out and "Traceback" not in err
    assert shown == "vitscope ablate: error: saliency block 3 must divide the 8×8 patch grid"

