"""The Ray part of `python -m tuner confirm`: retrain the chosen configs with several
training seeds, as one Ray Tune run beside the sweep (`<name>-confirm`).

Same base config, split policy and split seed as the sweep; FIFO, so every run trains the
full budget. The statistics are in `results.confirm`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from results import storage
from results.confirm import Candidate
from results.experiment import Experiment
from results.settings import RunSettings, Scheduler
from trainable.config import TrainConfig
from trainable.errors import UserError
from tuner.progress import TrialNamer, quiet_ray
from tuner.sweep import (
    build_run_config,
    build_trainable,
    check_resources,
    create_experiment,
    freed_if_no_trial_starts,
    init_ray,
    load_data,
    resolve_cpus,
    resolve_pretrained,
    ship,
)

SUFFIX = "-confirm"


def confirm_settings(
    experiment: Experiment,
    runs: int,
    address: str | None,
    cpus_per_trial: int | None,
    gpus_per_trial: float | None,
) -> RunSettings:
    """The sweep's settings, for a FIFO run of `runs` trials in a new experiment beside it."""
    return dataclasses.replace(
        experiment.settings,
        name=experiment.settings.name + SUFFIX,
        storage=storage.parent(experiment.location),
        trials=runs,
        max_concurrent=None,
        scheduler=Scheduler.FIFO,
        resume=False,
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
    *,
    address: str | None = None,
    cpus_per_trial: int | None = None,
    gpus_per_trial: float | None = None,
    write: Callable[[str], None] | None = None,
) -> str:
    """Train every (candidate, seed) pair; returns the new experiment's location. `write`
    takes a line per ended run (quiet output), as in a sweep."""
    settings = confirm_settings(
        experiment, len(candidates) * len(seeds), address, cpus_per_trial, gpus_per_trial
    )
    directory = settings.experiment_dir
    if storage.exists(directory):
        raise UserError(f"{directory}: a confirm run is already there; remove it to run again")
    configs = [TrainConfig.from_flat({**settings.base.to_flat(), **c.point}) for c in candidates]
    pretrained = resolve_pretrained(settings, configs)
    data = load_data(settings)
    if write is not None:
        quiet_ray()
    init_ray(settings)
    settings = resolve_cpus(settings)
    check_resources(settings)
    weights = ship(pretrained)
    del pretrained  # the object store holds them now
    create_experiment(settings, data)
    points = [dict(c.point) for c in candidates]
    with freed_if_no_trial_starts(settings):
        tuner = tune.Tuner(
            build_trainable(settings, data, weights),
            param_space=pair_grid(candidates, seeds),
            tune_config=tune.TuneConfig(
                num_samples=len(points),  # one sample per point, each expanded by the seed grid
                search_alg=BasicVariantGenerator(points_to_evaluate=points),
                trial_name_creator=TrialNamer(sweep=True),
                trial_dirname_creator=TrialNamer(sweep=True),
            ),
            run_config=build_run_config(settings, write),
        )
        tuner.fit()
    return directory
