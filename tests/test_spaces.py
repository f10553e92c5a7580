import optuna
import pytest
from optuna.trial import TrialState

from results.config import TrainConfig
from search_spaces import SPACES, get_space
from trainable.trial_setup import TrialSetup, resolve_config
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
    # The driver resolves exactly the weights the trials can ask for.
    wide = get_space("wide")
    assert set(wide.encoder_weights(TrainConfig.reference()).items()) == {
        (c.encoder, c.encoder_weights) for c in configs
    }
    assert set(wide.encoder_weights(CPU_BASE).values()) == {"none"}
    assert get_space("reference").encoder_weights(CPU_BASE) == {"resnet18": "none"}
    assert wide.image_sizes(TrainConfig.reference()) == (192, 256, 320)


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_parameters_lists_every_parameter_a_trial_can_sample(space_name):
    """What TensorBoard's HParams columns are made of: every parameter any trial samples,
    with the distribution Optuna records, conditional ones included."""
    space = get_space(space_name)
    listed = space.parameters(CPU_BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = space.define(CPU_BASE)

    def objective(trial: optuna.Trial) -> float:
        define(trial)
        return 0.0

    study.optimize(objective, n_trials=60)
    sampled = {k: v for t in study.trials for k, v in t.distributions.items()}
    assert sampled == listed
    assert {"weight_decay", "aug_elastic_alpha"} <= set(listed)


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


def _searcher(tmp_path, budget=4, experiment=None):
    from search_spaces import get_space
    from tuner.searcher import BudgetAwareOptunaSearch, StudyStorage

    space = get_space("reference")
    searcher = BudgetAwareOptunaSearch(
        space=space.define(CPU_BASE),
        metric="best_combined_loss",
        mode="min",
        points_to_evaluate=[space.reference_point(CPU_BASE)],
        seed=0,
        study_name="s",
        storage=StudyStorage(experiment or str(tmp_path), "s"),
        budget_epochs=budget,
    )
    searcher.set_search_properties("best_combined_loss", "min", {})
    return searcher


def test_searcher_records_tune_id_epochs_and_states(tmp_path):
    searcher = _searcher(tmp_path)
    first = searcher.suggest("t1")
    assert first["lr"] == CPU_BASE.lr  # the reference point comes first
    searcher.suggest("t2")
    for epoch in (1, 2, 3, 4):
        searcher.on_trial_result("t1", {"best_combined_loss": 0.5, "training_iteration": epoch})
    searcher.on_trial_complete("t1", {"best_combined_loss": 0.5, "training_iteration": 4})
    searcher.on_trial_result("t2", {"best_combined_loss": 0.9, "training_iteration": 1})
    searcher.on_trial_complete("t2", {"best_combined_loss": 0.9, "training_iteration": 1})
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.sqlite").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.user_attrs for t in trials] == [
        {"tune_trial_id": "t1", "trial_name": "trial_000_t1", "epochs_run": 4},
        {"tune_trial_id": "t2", "trial_name": "trial_001_t2", "epochs_run": 1},
    ]
    assert trials[0].value == 0.5
    assert trials[1].intermediate_values == {1: 0.9}  # kept, but not a full-budget value


def test_a_remote_sweeps_study_is_uploaded_with_tunes_state_and_found_again(
    tmp_path, monkeypatch, s3_storage
):
    """With s3:// storage the study is a local SQLite file; each of Tune's snapshots of
    the searcher first uploads a copy of it to the experiment, and an unpickled storage
    opens the study of the experiment being restored, on this driver, whatever the
    pickled location (another machine's cache, or a folder since moved)."""
    import pickle

    from results import storage
    from tuner.searcher import restoring

    experiment = storage.join(s3_storage, "sweep")
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "driver-1"))
    searcher = _searcher(tmp_path, experiment=experiment)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"best_combined_loss": 0.5, "training_iteration": 4})
    live = searcher._storage.file
    assert live.is_relative_to(tmp_path / "driver-1")
    staging = tmp_path / "staging"
    staging.mkdir()
    searcher.save_to_dir(str(staging), "now")
    assert [p.name for p in staging.iterdir()] == ["searcher-state-now.pkl"]
    (tmp_path / "uploaded.sqlite").write_bytes(storage.read_bytes(f"{experiment}/s.sqlite"))
    uploaded = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/uploaded.sqlite")
    assert [t.state for t in uploaded.trials] == [TrialState.COMPLETE]

    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "driver-2"))
    restored = pickle.loads(pickle.dumps(searcher._storage))
    assert restored.file == tmp_path / "driver-2" / live.relative_to(tmp_path / "driver-1")

    (tmp_path / "before").mkdir()  # local storage: the study lives in the experiment
    local = _searcher(tmp_path / "before")
    local.suggest("t1")
    pickled = pickle.dumps(local._storage)
    (tmp_path / "before").rename(tmp_path / "after")
    with restoring(str(tmp_path / "after")):
        moved = pickle.loads(pickled)
    assert moved.file == tmp_path / "after" / "s.sqlite"
    assert len(optuna.load_study(study_name="s", storage=moved).trials) == 1
    assert not (tmp_path / "before").exists()  # nothing made where it used to be


def test_searcher_survives_a_study_ahead_of_the_restored_snapshot(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "snapshot.pkl"))  # Tune's snapshot, taken mid-trial
    searcher.on_trial_complete("t1", {"best_combined_loss": 0.5, "training_iteration": 4})
    restored = _searcher(tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    # Tune re-runs t1 from its checkpoint: its results reach a trial the study finished.
    restored.on_trial_result("t1", {"best_combined_loss": 0.4, "training_iteration": 4})
    restored.on_trial_complete("t1", {"best_combined_loss": 0.4, "training_iteration": 4})
    trial = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.sqlite").trials[0]
    assert trial.user_attrs["tune_trial_id"] == "t1"
    assert trial.state is TrialState.COMPLETE and trial.value == 0.5


def test_a_failed_trial_that_resume_reruns_to_its_end_is_recorded_as_a_retry(tmp_path):
    """A disk-full run: t1 errors and the study holds it FAIL; --resume re-runs it (Tune's
    resume_errored) from a restored searcher, and it finishes. The study's last trial of
    t1 says so, as Optuna's RetryFailedTrialCallback would record it; t2 still failed."""
    from results.experiment import optuna_states

    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.on_trial_result("t1", {"best_combined_loss": 0.7, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"best_combined_loss": 0.7, "training_iteration": 1}, True)
    searcher.on_trial_complete("t2", None, error=True)
    searcher.save(str(tmp_path / "snapshot.pkl"))
    restored = _searcher(tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    for epoch in (1, 2, 3, 4):
        restored.on_trial_result("t1", {"best_combined_loss": 0.5, "training_iteration": epoch})
    last = {"best_combined_loss": 0.4, "training_iteration": 4}
    restored.on_trial_complete("t1", last)
    restored.on_trial_complete("t1", last)  # told twice: recorded once
    restored.on_trial_complete("t2", None, error=True)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.sqlite")
    # (_searcher enqueues the reference point again: a WAITING trial Tune's own restore,
    # which unpickles the searcher, does not make.)
    failed, failed_too, retry = [t for t in study.trials if t.state.is_finished()]
    assert [failed.state, failed_too.state] == [TrialState.FAIL, TrialState.FAIL]
    assert retry.state is TrialState.COMPLETE and retry.value == 0.4
    assert retry.params == failed.params
    assert retry.user_attrs == {**failed.user_attrs, "epochs_run": 4}
    assert retry.system_attrs == {"failed_trial": 0, "retry_history": [0]}
    assert retry.intermediate_values == {1: 0.7, 4: 0.4}
    assert optuna_states(study) == {"t1": "COMPLETE", "t2": "FAIL"}


def test_every_epoch_reaches_the_study_and_a_stopped_trial_keeps_its_value(tmp_path):
    """Tune sends a trial's last result only to on_trial_complete: it must still become an
    intermediate value, once, and a trial stopped at its first rung must show its value."""
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.suggest("t2")
    for epoch, value in ((1, 0.7), (2, 0.6), (3, 0.55)):
        searcher.on_trial_result("t1", {"best_combined_loss": value, "training_iteration": epoch})
    last = {"best_combined_loss": 0.5, "training_iteration": 4}
    searcher.on_trial_result("t1", last)  # Tune repeats the last result when a trial ends
    searcher.on_trial_complete("t1", last)
    searcher.on_trial_complete("t2", {"best_combined_loss": 0.9, "training_iteration": 1})
    full, stopped = optuna.load_study(
        study_name="s", storage=f"sqlite:///{tmp_path}/s.sqlite"
    ).trials
    assert full.intermediate_values == {1: 0.7, 2: 0.6, 3: 0.55, 4: 0.5}
    assert full.state is TrialState.COMPLETE and full.value == 0.5
    assert stopped.intermediate_values == {1: 0.9}
    assert stopped.state is TrialState.PRUNED and stopped.value == 0.9


def test_the_sampler_is_multivariate_grouped_tpe_with_a_constant_liar():
    from tuner.searcher import tpe_sampler

    sampler = tpe_sampler(7)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._group and sampler._constant_liar


def test_confirm_never_reuses_the_sweeps_training_seed():
    from results.confirm import training_seeds

    assert training_seeds(0, 3) == [1, 2, 3]
    assert 5 not in training_seeds(5, 4)
