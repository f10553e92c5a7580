import pytest

from results.config import Loss, Optimizer, TrainConfig


def test_reference_is_the_published_setup():
    ref = TrainConfig.reference()
    assert (ref.encoder, ref.encoder_weights, ref.image_size) == (
        "resnext101_32x16d",
        "instagram",
        256,
    )
    assert (ref.batch_size, ref.lr, ref.epochs) == (8, 1e-4, 20)
    assert ref.optimizer is Optimizer.ADAM and ref.loss is Loss.DICE
    assert ref.selection_train_weight == 0.2 and ref.threshold == 0.5
    assert not ref.has_augmentation


def test_from_flat_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\]") as err:
        TrainConfig.from_flat({"learning_rate": 0.1})
    assert "lr" in str(err.value) and "aug_clahe_p" in str(err.value)


def test_flat_round_trip_and_string_enums():
    config = TrainConfig.from_flat({"optimizer": "adamw", "loss": "dice_bce", "aug_hflip_p": 0.5})
    assert config.optimizer is Optimizer.ADAMW and config.loss is Loss.DICE_BCE
    assert config.has_augmentation
    assert TrainConfig.from_flat(config.to_flat()) == config
    assert config.to_flat()["optimizer"] == "adamw"


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 100},
        {"batch_size": 0},
        {"lr": 0.0},
        {"aug_affine_p": 1.5},
        {"selection_train_weight": 2.0},
        {"optimizer": "sgd"},
    ],
)
def test_invalid_values_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig.from_flat(bad)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TrainConfig.reference().lr = 1.0  # type: ignore[misc]
