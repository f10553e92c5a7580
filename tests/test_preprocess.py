import numpy as np
import pytest

import trainable.preprocess as preprocess
from trainable.dataset import discover, load_sample
from trainable.preprocess import load_busi, resize_pair, resized


def _files(root):
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_arrays_are_compact_binary_and_aligned(synth_root, tmp_path):
    data = load_busi(synth_root, 64, tmp_path, progress=False)
    assert data.images.shape == data.masks.shape == (44, 64, 64)
    assert data.images.dtype == data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) <= {0, 1}
    normal = [i for i, label in enumerate(data.labels) if label == "normal"]
    assert len(normal) == 8 and data.masks[normal].sum() == 0
    assert all(data.masks[i].any() for i, label in enumerate(data.labels) if label != "normal")


def test_second_load_is_a_cache_hit_and_writes_nothing_in_the_dataset(
    synth_root, tmp_path, monkeypatch
):
    before = _files(synth_root)
    first = load_busi(synth_root, 64, tmp_path, progress=False)
    assert len(list(tmp_path.glob("busi-*-64px-*.npz"))) == 1

    def no_decoding(sample):
        raise AssertionError("a cache hit must not decode PNGs")

    monkeypatch.setattr(preprocess, "read_sample", no_decoding)
    second = load_busi(synth_root, 64, tmp_path, progress=False)
    assert np.array_equal(first.images, second.images) and first.names == second.names
    assert np.array_equal(first.groups, second.groups)
    assert _files(synth_root) == before


def test_cache_key_follows_content_and_size(synth_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    load_busi(copy, 64, tmp_path / "cache", progress=False)
    load_busi(copy, 96, tmp_path / "cache", progress=False)
    # Change one image's content: a new key, not a stale cache.
    image = copy / "benign" / "benign (1).png"
    from PIL import Image

    Image.fromarray(np.zeros((50, 60), dtype=np.uint8)).convert("RGB").save(image)
    (copy / "benign" / "benign (1)_mask.png").unlink()
    Image.fromarray(np.zeros((50, 60), dtype=np.uint8)).save(
        copy / "benign" / "benign (1)_mask.png"
    )
    changed = load_busi(copy, 64, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    assert changed.images[changed.names.index("benign (1)")].max() == 0


def test_resize_keeps_masks_binary_and_shrinks_by_area():
    image = np.zeros((100, 200), dtype=np.uint8)
    image[:, :103] = 200  # the boundary falls inside output column 16
    mask = np.zeros((100, 200), dtype=bool)
    mask[20:60, 40:160] = True
    small_image, small_mask = resize_pair(image, mask, 32)
    assert small_image.shape == small_mask.shape == (32, 32)
    assert set(np.unique(small_mask)) == {0, 1}
    assert small_image[:, :16].min() == 200 and small_image[:, 17:].max() == 0
    # Area averaging gives the boundary column a value in between.
    assert 0 < small_image[0, 16] < 200


def test_resized_dataset(synth_arrays):
    smaller = resized(synth_arrays, 32)
    assert smaller.images.shape == (len(synth_arrays), 32, 32)
    assert smaller.names == synth_arrays.names and set(np.unique(smaller.masks)) <= {0, 1}
    assert resized(synth_arrays, 64) is synth_arrays


def test_real_busi_mask_union_of_three_files(busi_root):
    sample = next(s for s in discover(busi_root) if s.name == "benign (195)")
    assert [p.name for p in sample.mask_paths] == [
        "benign (195)_mask.png",
        "benign (195)_mask_1.png",
        "benign (195)_mask_2.png",
    ]
    from PIL import Image

    parts = [np.asarray(Image.open(p)).astype(bool) for p in sample.mask_paths]
    _, union = load_sample(sample)
    assert np.array_equal(union, parts[0] | parts[1] | parts[2])
    assert union.sum() > max(p.sum() for p in parts)


@pytest.mark.slow
def test_real_busi_arrays(busi_root, tmp_path):
    data = load_busi(busi_root, 64, tmp_path, progress=False)
    assert len(data) == 780 and data.images.shape == (780, 64, 64)
    assert [label.value for label in data.labels].count("normal") == 133
    lesion_images = sum(bool(m.any()) for m in data.masks)
    assert lesion_images == 647  # every benign and malignant image keeps a lesion at 64 px
