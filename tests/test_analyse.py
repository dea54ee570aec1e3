"""The per-image analysis (`vitscope.analyse`): the build's chunks and the service's new image are the same call."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vitscope import store
from vitscope.models import load_model
from vitscope.service import newimage


def test_a_new_image_has_every_stored_variable_in_the_stores_dtype(demo16):
    ds = store.open_store(demo16)
    lay = store.read_layout(demo16)
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
