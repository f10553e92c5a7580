import numpy as np
import pytest

from results.config import TrainConfig
from trainable.augment import GREY_MEAN, GREY_STD, build_augmentation, normalise

ALL_ON = {
    name: 1.0
    for name in TrainConfig.field_names()
    if name.startswith("aug_") and name.endswith("_p")
}


def _pair(size=64):
    image = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[10:30, 5:20] = 1
    return image, mask


def test_reference_has_no_augmentation():
    assert build_augmentation(TrainConfig.reference()) is None


def test_flip_moves_image_and_mask_together():
    augment = build_augmentation(TrainConfig.reference().replace(aug_hflip_p=1.0))
    image, mask = _pair()
    out = augment(image=image, mask=mask)
    assert np.array_equal(out["image"], image[:, ::-1])
    assert np.array_equal(out["mask"], mask[:, ::-1])


def test_every_augmentation_on_keeps_shapes_and_binary_masks():
    augment = build_augmentation(TrainConfig.reference().replace(**ALL_ON))
    assert len(augment.transforms) == 8
    image, mask = _pair()
    for _ in range(5):
        out = augment(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 1}


def test_affine_moves_the_mask_with_the_image():
    config = TrainConfig.reference().replace(
        aug_affine_p=1.0, aug_affine_rotate=0.0, aug_affine_scale=0.0, aug_affine_shift=0.1
    )
    augment = build_augmentation(config)
    image = np.zeros((64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    image[20:40, 20:40] = 255
    mask[20:40, 20:40] = 1
    for _ in range(5):
        out = augment(image=image, mask=mask)
        assert np.array_equal(out["image"] > 127, out["mask"] == 1)


def test_one_channel_imagenet_normalisation():
    assert pytest.approx(0.449) == GREY_MEAN and pytest.approx(0.226) == GREY_STD
    values = normalise(np.array([0, 255], dtype=np.uint8))
    assert values.dtype == np.float32
    assert values == pytest.approx([-0.449 / 0.226, (1 - 0.449) / 0.226], rel=1e-3)
