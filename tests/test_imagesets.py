"""Image sets from folders and CSVs, robust decoding, and the model's own preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.errors import VitscopeError
from vitscope.imagesets import demo
from vitscope.imagesets.folders import BadImage, Preprocessor, image_folder, read_rgb
from vitscope.models import load_model


def _png(path, colour=(200, 10, 10), size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def test_class_folders(tmp_path):
    for c, n in (("cat", 3), ("ant", 2)):
        for i in range(n):
            _png(tmp_path / c / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image, ignored")
    s = image_folder(tmp_path, num_classes=10)
    assert s.ids == ["ant/0.png", "ant/1.png", "cat/0.png", "cat/1.png", "cat/2.png"]
    assert s.labels.tolist() == [0, 0, 1, 1, 1]
    assert s.class_names[:2] == ["ant", "cat"] and len(s.class_names) == 10
    sub = image_folder(tmp_path, num_classes=10, limit=3, seed=1)
    assert len(sub) == 3 and sub.ids == image_folder(tmp_path, num_classes=10, limit=3, seed=1).ids
    assert s.fingerprint() != sub.fingerprint()
    with pytest.raises(VitscopeError, match="3 classes but the model has 2 outputs"):
        _png(tmp_path / "dog" / "0.png")
        image_folder(tmp_path, num_classes=2)


def test_wordnet_folders_map_to_imagenet_indices(tmp_path):
    _png(tmp_path / "n01440764" / "a.png")  # tench = 0
    _png(tmp_path / "n01443537" / "b.png")  # goldfish = 1
    _png(tmp_path / "n04591713" / "c.png")  # wine bottle = 907
    s = image_folder(tmp_path, num_classes=1000)
    assert s.labels.tolist() == [0, 1, 907]
    assert s.class_names[0] == "tench" and len(s.class_names) == 1000


def test_flat_folder_with_csv(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "img" / n)
    (tmp_path / "ints.csv").write_text("file,label\na.png,3\nb.png,0\nc.png,3\n")
    s = image_folder(tmp_path / "img", num_classes=5, labels_csv=tmp_path / "ints.csv")
    assert s.ids == ["a.png", "b.png", "c.png"] and s.labels.tolist() == [3, 0, 3]
    (tmp_path / "names.csv").write_text("a.png,zebra\nb.png,apple\nc.png,zebra\n")
    s = image_folder(tmp_path / "img", num_classes=5, labels_csv=tmp_path / "names.csv")
    assert s.labels.tolist() == [1, 0, 1] and s.class_names[:2] == ["apple", "zebra"]
    (tmp_path / "bad.csv").write_text("a.png,7\n")
    with pytest.raises(VitscopeError, match="label 7 outside"):
        image_folder(tmp_path / "img", num_classes=5, labels_csv=tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("zzz.png,1\n")
    with pytest.raises(VitscopeError, match=r"missing.csv:1: 'zzz.png' not found under"):
        image_folder(tmp_path / "img", num_classes=5, labels_csv=tmp_path / "missing.csv")
    with pytest.raises(VitscopeError, match="no class sub-folders"):
        image_folder(tmp_path / "img", num_classes=5)
    with pytest.raises(VitscopeError, match="image folder not found"):
        image_folder(tmp_path / "nope", num_classes=5)


def test_odd_images_are_converted(tmp_path):
    gray = _png(tmp_path / "g.png", colour=128, mode="L")
    assert read_rgb(gray).getpixel((0, 0)) == (128, 128, 128)
    rgba = tmp_path / "t.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(rgba)
    assert read_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)
    r, g, b = read_rgb(cmyk).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(deep)
    assert read_rgb(deep).getpixel((0, 0)) == (255, 255, 255)


def test_bad_files_raise_badimage(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    good = _png(tmp_path / "ok.png", size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    jpg = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    (tmp_path / "trunc.jpg").write_bytes(jpg.read_bytes()[:600])
    for name in ("empty.png", "text.jpg", "trunc.png", "trunc.jpg"):
        with pytest.raises(BadImage):
            read_rgb(tmp_path / name)


def test_preprocessing_follows_the_model_config():
    ad = load_model("demo")
    pre = Preprocessor(ad.model)
    images, _ = demo.eval_set(4)
    s = demo.image_set(4)
    for i in range(4):
        x, thumb = pre(s.load(i))
        assert np.array_equal(thumb, images[i])  # the demo images are already at input size
        torch.testing.assert_close(x, demo.to_tensor(images[i:i + 1])[0])
    big = Image.fromarray(np.zeros((300, 200, 3), np.uint8))
    x, thumb = pre(big)
    assert x.shape == (3, 64, 64) and thumb.shape == (64, 64, 3)
