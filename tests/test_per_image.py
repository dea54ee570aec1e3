"""The per-image analysis (`vitscope.per_image`): the build's chunks and the service's new image are the same call."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vitscope import store
from vitscope.models import load_model
from vitscope.service import newimage


def test_a_new_image_has_every_stored_variable_in_the_stores_dtype(demo16):
    ds = store.open_store(demo16)
    lay = store.read_shape(demo16)
    image = Image.fromarray(ds["thumbnail"][3].values)
    r = newimage.analyse(load_model("demo"), ds, lay, image, "three.png", int(ds["label"][3]))
    arrays = r["arrays"]
    assert list(arrays) == [k for k in store.PER_CHUNK if k in ds]  # the store's order, as `ablate --json` prints
    for name, value in arrays.items():
        stored = ds[name][3].values
        assert value.dtype == stored.dtype and value.shape == stored.shape, name
    for name in ("topk_idx", "pattern_label", "pattern_offset", "binary_index", "thumbnail", "label", "valid"):
        np.testing.assert_array_equal(arrays[name], ds[name][3].values, err_msg=name)
    np.testing.assert_allclose(arrays["importance"], ds["importance"][3].values, atol=1e-5)


def test_a_new_image_is_placed_by_the_fitted_layouts_transform(demo16):
    """A stored image analysed again as new lands where the build put it: by the transform of the fitted layout
    rebuilt from the store's fit record (the patch layout: of the latents by the store's own autoencoder)."""
    ds = store.open_store(demo16)
    lay = store.read_shape(demo16)
    assert lay.fits and ds.attrs["layout_fits"]["head_xy_cls"]["sample"] == 16 * 6 * 4  # a small store: all fitted
    r = newimage.analyse(load_model("demo"), ds, lay, Image.fromarray(ds["thumbnail"][3].values), "three.png",
                         int(ds["label"][3]))
    assert r["placed_by"] == {"image_xy": "transform", "head_xy_cls": "transform", "head_xy_patch": "transform"}
    image_xy, head_xy = ds["image_xy"].values, ds["head_xy_cls"].values  # [16, 2], [16, L, H, 2]
    spacing = np.median(np.sort(np.linalg.norm(image_xy[:, None] - image_xy[None], axis=-1), 1)[:, 1])
    assert np.linalg.norm(np.asarray(r["image_xy"]) - image_xy[3]) < spacing  # nearer than a typical neighbour
    err = np.linalg.norm(np.asarray(r["head_xy_cls"]) - head_xy[3], axis=-1)  # [L, H]
    assert np.median(err) < 0.05, err
    err = np.linalg.norm(np.asarray(r["head_xy_patch"]) - ds["head_xy_patch"].values[3], axis=-1)
    assert np.median(err) < 0.05, err


def test_a_store_without_the_fit_record_places_new_images_by_neighbours(demo16, tmp_path):
    """Stores built before the fit record: their layouts' fits cannot be rebuilt, nearest neighbours place."""
    import shutil

    import zarr

    old = tmp_path / "old.zarr"
    shutil.copytree(demo16, old)
    group = zarr.open_group(str(old), mode="r+")
    del group.attrs["layout_fits"]
    for name in ("image_xy_fit", "head_xy_cls_fit", "head_xy_patch_fit", "ae_weights"):
        shutil.rmtree(old / name)
    zarr.consolidate_metadata(str(old))
    ds = store.open_store(old)
    r = newimage.analyse(load_model("demo"), ds, store.read_shape(old), Image.fromarray(ds["thumbnail"][3].values),
                         "three.png", int(ds["label"][3]))
    assert set(r["placed_by"].values()) == {"neighbours"}
    assert np.isfinite(r["image_xy"]).all() and np.asarray(r["head_xy_cls"]).shape == (6, 4, 2)
