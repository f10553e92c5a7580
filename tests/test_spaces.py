import optuna
import pytest
from optuna.trial import TrialState

from search_spaces import SPACES, get_space
from trainable.config import TrainConfig
from trainable.tune_adapter import TrialSetup, resolve_config
from tuner.searcher import completion_state

CPU_BASE = TrainConfig.reference().replace(
    encoder="resnet18", encoder_weights="none", image_size=64, batch_size=2, epochs=3
)


def _points(space_name: str, base: TrainConfig, count: int, enqueue_reference: bool):
    space = get_space(space_name)
    define = space.define(base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    if enqueue_reference:
        study.enqueue_trial(space.reference_point(base))
    points = []
    for _ in range(count):
        trial = study.ask()
        constants = define(trial) or {}
        points.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return points


@pytest.mark.parametrize("space_name", sorted(SPACES))
@pytest.mark.parametrize("base", [TrainConfig.reference(), CPU_BASE], ids=["reference", "cpu"])
def test_every_point_of_every_space_is_a_valid_train_config(space_name, base):
    setup = TrialSetup(base=base)
    points = _points(space_name, base, 300, enqueue_reference=False)
    configs = [resolve_config(setup, point) for point in points]  # raises on a bad point
    assert all(isinstance(c, TrainConfig) for c in configs)
    # The space really searches: several values of each key it samples.
    for key in ("lr", "batch_size", "optimizer", "aug_hflip_p", "aug_affine_rotate"):
        assert len({getattr(c, key) for c in configs}) > 1, key
    assert all(1e-5 <= c.lr <= 1e-3 for c in configs)
    assert all(c.weight_decay == 0 for c in configs if c.optimizer == "adam")
    assert any(c.weight_decay > 0 for c in configs if c.optimizer == "adamw")
    # Epochs are the budget, never searched.
    assert {c.epochs for c in configs} == {base.epochs}


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_the_first_point_is_the_base_config(space_name):
    (point,) = _points(space_name, CPU_BASE, 1, enqueue_reference=True)
    assert resolve_config(TrialSetup(base=CPU_BASE), point) == CPU_BASE


def test_wide_space_searches_loss_schedule_encoder_and_size():
    configs = [
        resolve_config(TrialSetup(base=TrainConfig.reference()), p)
        for p in _points("wide", TrainConfig.reference(), 200, False)
    ]
    assert {c.loss for c in configs} == {"dice", "dice_bce", "dice_focal"}
    assert {c.lr_schedule for c in configs} == {"constant", "cosine"}
    assert {c.image_size for c in configs} == {192, 256, 320}
    assert {(c.encoder, c.encoder_weights) for c in configs} == {
        ("resnext101_32x16d", "instagram"),
        ("resnext50_32x4d", "imagenet"),
        ("resnet50", "imagenet"),
        ("efficientnet-b4", "imagenet"),
    }
    assert get_space("wide").image_sizes(TrainConfig.reference()) == (192, 256, 320)


def test_unknown_space_lists_valid_names():
    with pytest.raises(KeyError, match="valid: reference, wide"):
        get_space("narrow")


@pytest.mark.parametrize(
    ("value", "epochs_run", "error", "state"),
    [
        (0.3, 20, False, TrialState.COMPLETE),
        (0.3, 4, False, TrialState.PRUNED),  # stopped early by ASHA: not a full-budget trial
        (0.3, 20, True, TrialState.FAIL),
        (float("nan"), 20, False, TrialState.FAIL),
        (None, 0, False, TrialState.FAIL),
    ],
)
def test_how_a_tune_trial_is_recorded_in_the_study(value, epochs_run, error, state):
    assert completion_state(value, epochs_run, budget=20, error=error) is state
