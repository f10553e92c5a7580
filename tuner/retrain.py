"""The Ray part of `python -m tuner confirm` and of a sweep's final round: retrain the
chosen configs with several training seeds, as Ray Tune runs beside the sweep.

`confirm`: one run per split, `<name>-confirm` on the sweep's split and
`<name>-confirm-split<seed>` on each other one (--split-seeds), in turn. The final round
(`run --final-seeds S`): one run, `<name>-final`, on the sweep's split, after the sweep's
last trial; `run --resume` continues it where it stopped (Tune's own restore: finished
runs are not trained again), and its assessment is written into the sweep's folder
(final.json). An extra Tune run rather than trials appended to the sweep: the sweep's
searcher and scheduler would rank and stop them, and their study would count them.

Same base config and split policy as the sweep; FIFO, so every run trains the full
budget. The statistics are in `results.confirm`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from results import storage
from results.config import TrainConfig
from results.confirm import FINAL, confirmation, training_seeds
from results.errors import UserError
from results.experiment import Experiment, load_experiment
from results.layout import (
    CONFIRM_SUFFIX,
    FINAL_FILE,
    FINAL_SUFFIX,
    TUNE_STATE_FILE,
    retraining_name,
)
from results.records import Candidate, Confirmation
from results.settings import RunSettings, Scheduler
from tuner.cluster import check_resources, init_ray, resolve_cpus, resolve_gpus, ship
from tuner.experiment_folder import create_experiment, freed_if_no_trial_starts
from tuner.progress import TrialNamer, quiet_ray
from tuner.sweep import (
    all_ended,
    build_run_config,
    build_trainable,
    load_data,
    resolve_pretrained,
)

# The retraining runs' trials are numbered from 0 (Tune's basic generator counts from 0).
NAMER = TrialNamer(sweep=False)


def confirm_settings(
    experiment: Experiment,
    runs: int,
    address: str | None,
    cpus_per_trial: int | None,
    gpus_per_trial: float | None,
    suffix: str = CONFIRM_SUFFIX,
    split_seed: int | None = None,
) -> RunSettings:
    """The sweep's settings, for a FIFO run of `runs` trials in a new experiment beside it,
    on the sweep's split or on the split of `split_seed`."""
    sweep = experiment.settings
    split_seed = sweep.seed if split_seed is None else split_seed
    name = retraining_name(sweep.name, suffix, split_seed, sweep.seed)
    return dataclasses.replace(
        sweep,
        name=name,
        storage=storage.parent(experiment.location),
        trials=runs,
        max_concurrent=None,
        scheduler=Scheduler.FIFO,
        seed=split_seed,  # the split's; each run's training seed is in its config
        resume=False,
        final_seeds=0,
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
    )


def pair_grid(candidates: Sequence[Candidate], seeds: Sequence[int]) -> dict[str, Any]:
    """A param_space whose grid, expanded over every candidate point, is the (config, seed)
    pairs. Tune requires each key a point sets to be declared in param_space; the choices
    declared here are never sampled, since every point sets every key."""
    keys = candidates[0].point.keys()
    return {
        **{k: tune.choice(list(dict.fromkeys(c.point[k] for c in candidates))) for k in keys},
        "seed": tune.grid_search(list(seeds)),
    }


def run(
    experiment: Experiment,
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    splits: Sequence[int] | None = None,
    *,
    suffix: str = CONFIRM_SUFFIX,
    resume: bool = False,
    address: str | None = None,
    cpus_per_trial: int | None = None,
    gpus_per_trial: float | None = None,
    write: Callable[[str], None] | None = None,
) -> tuple[list[str], bool]:
    """Train every (candidate, seed) pair on each split of `splits` (default: the sweep's),
    one Tune run per split, in turn. Returns the runs' locations and whether every run
    ended (False: interrupted). With `resume`, a run already there is continued; without,
    it is refused. `write` takes a line per ended run (quiet output), as in a sweep."""
    runs = len(candidates) * len(seeds)
    plans = [
        confirm_settings(
            experiment, runs, address, cpus_per_trial, gpus_per_trial, suffix, split_seed
        )
        for split_seed in (splits or [experiment.settings.seed])
    ]
    for settings in plans:
        directory = settings.experiment_dir
        if storage.exists(directory) and not resume:
            raise UserError(
                f"{directory}: a retraining run is already there; remove it to run again"
            )
    configs = [TrainConfig.from_flat({**plans[0].base.to_flat(), **c.point}) for c in candidates]
    pretrained = resolve_pretrained(plans[0], configs)
    data = load_data(plans[0])  # one split or another: the same data
    if write is not None:
        quiet_ray()
    init_ray(plans[0])
    weights = ship(pretrained)
    del pretrained  # the object store holds them now
    done = []
    for settings in plans:
        settings = resolve_cpus(resolve_gpus(settings))
        check_resources(settings)
        _fit(settings, data, weights, candidates, seeds, write)
        done.append(settings.experiment_dir)
        # As a sweep's: every planned run trained its whole budget (FIFO) or errored.
        if not all_ended(settings, load_experiment(settings.experiment_dir)):
            return done, False
    return done, True


def _fit(settings: RunSettings, data, weights, candidates, seeds, write) -> tune.ResultGrid:
    """One split's Tune run: new, or continued where it stopped (a finished one returns
    its results at once)."""
    trainable = build_trainable(settings, data, weights)
    directory = settings.experiment_dir
    if storage.exists(directory):
        if not storage.is_file(storage.join(directory, TUNE_STATE_FILE)):
            raise UserError(
                f"{directory}: not a retraining run Tune can continue (no {TUNE_STATE_FILE}); "
                "remove it to run again"
            )
        return tune.Tuner.restore(directory, trainable, resume_errored=True).fit()
    create_experiment(settings, data)
    points = [dict(c.point) for c in candidates]
    with freed_if_no_trial_starts(settings):
        tuner = tune.Tuner(
            trainable,
            param_space=pair_grid(candidates, seeds),
            tune_config=tune.TuneConfig(
                num_samples=len(points),  # one sample per point, each expanded by the seed grid
                search_alg=BasicVariantGenerator(points_to_evaluate=points),
                trial_name_creator=NAMER,
                trial_dirname_creator=NAMER,
            ),
            run_config=build_run_config(settings, write, namer=NAMER),
        )
        return tuner.fit()


def final_round(
    settings: RunSettings,
    experiment: Experiment,
    candidates: Sequence[Candidate],
    write: Callable[[str], None] | None = None,
) -> Confirmation | None:
    """A sweep's final round: `candidates` (its reference and best configs) retrained with
    --final-seeds fresh seeds each on the sweep's split, as `<name>-final` beside it; the
    assessment (the winner on validation, test intervals) goes into the sweep's folder
    as final.json and is returned. None when interrupted (`run --resume` continues it)."""
    seeds = training_seeds(settings.base.seed, settings.final_seeds or 0)
    locations, complete = run(
        experiment,
        candidates,
        seeds,
        suffix=FINAL_SUFFIX,
        resume=settings.resume,
        address=settings.address,
        cpus_per_trial=settings.cpus_per_trial,
        gpus_per_trial=settings.gpus_per_trial,
        write=write,
    )
    if not complete:
        return None
    result = confirmation(experiment, candidates, [load_experiment(p) for p in locations], FINAL)
    text = result.to_text()
    storage.write_bytes(storage.join(settings.experiment_dir, FINAL_FILE), text.encode())
    return result
