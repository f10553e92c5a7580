"""The Ray cluster a run uses: started here or connected to (`--address`), what a trial
may ask of it (CPUs and GPUs per trial, and the final round's seeds, whose defaults
depend on where trials run), whether any node can give that, and the pretrained weights
put into its object store. The only place that calls `ray.init`."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket

import ray

from results.errors import UserError
from results.settings import GPU_FINAL_SEEDS, MAX_DEFAULT_CPUS, RunSettings
from trainable.model import EncoderState
from tuner import console, interrupts
from tuner.packing import plan as plan_packing

CONNECT_TIMEOUT_S = 15
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"


def init_ray(settings: RunSettings) -> None:
    if ray.is_initialized():
        return
    if settings.address:
        check_reachable(settings.address)
        try:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise UserError(f"--address {settings.address}: {error}") from None
    else:
        protect_local_ray()
        # address="local": a new Ray, never one another session left running here.
        ray.init(
            address="local",
            num_gpus=settings.local_gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    interrupts.stop_on_sigterm()  # ray.init installed its own


def protect_local_ray() -> None:
    """A local Ray's servers listen on every interface (Ray 2.60 has no option to bind
    them to localhost), and whoever reaches them can run code: require a token only this
    process and its workers know. A token mode the user set up is kept."""
    if os.environ.get(AUTH_MODE_ENV):
        return
    from ray._raylet import Config

    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    Config.initialize("")  # Ray read its configuration at import: read it again


def check_reachable(address: str) -> None:
    """Fail within seconds when nothing listens at host:port (Ray itself retries for
    minutes). `auto` finds a cluster started on this machine, or fails at once."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({error}); check the head "
            "node's address and port (`ray status` on it), or leave --address out to run here"
        ) from None


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each node that is up."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def default_cpus_per_trial(nodes: list[dict[str, float]], gpus: float) -> int:
    """The CPUs a node can give each of its GPU trials (its CPUs over the trials its GPUs
    hold, on the tightest GPU node), at most MAX_DEFAULT_CPUS; 1 for CPU trials. A GPU
    trial's augmentation needs workers: with the heaviest, 2 keep up with an H200
    (benchmarks/README.md, section 6)."""
    if gpus <= 0:
        return 1
    shares = [int(n.get("CPU", 0) * gpus // n["GPU"]) for n in nodes if n.get("GPU", 0) >= gpus]
    return max(1, min(min(shares, default=1), MAX_DEFAULT_CPUS))


def resolve_gpus(settings: RunSettings) -> RunSettings:
    """--gpus-per-trial as given, or planned for this cluster (tuner.packing; saved with
    the run, and said in one line): 0 on a cluster without GPUs."""
    if settings.gpus_per_trial is not None:
        return settings
    packing = plan_packing(settings)
    if packing is None:
        return dataclasses.replace(settings, gpus_per_trial=0.0)
    console.say(packing.line())
    return dataclasses.replace(settings, gpus_per_trial=packing.gpus_per_trial)


def resolve_cpus(settings: RunSettings) -> RunSettings:
    """--cpus-per-trial as given, or its default for this cluster (saved with the run)."""
    if settings.cpus_per_trial is not None:
        return settings
    cpus = default_cpus_per_trial(alive_nodes(), gpus_per_trial(settings))
    return dataclasses.replace(settings, cpus_per_trial=cpus)


def resolve_final_seeds(settings: RunSettings) -> RunSettings:
    """--final-seeds as given, or its default for where the trials run (saved with the
    run, so a resumed sweep ends with the same final round)."""
    if settings.final_seeds is not None or settings.reference_only:
        return settings
    seeds = GPU_FINAL_SEEDS if gpus_per_trial(settings) > 0 else 0
    return dataclasses.replace(settings, final_seeds=seeds)


def check_resources(settings: RunSettings) -> None:
    """A trial that asks for more than any node has would wait forever: refuse it."""
    cpus, gpus = settings.cpus_per_trial, gpus_per_trial(settings)
    nodes = alive_nodes()
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    raise UserError(
        f"--cpus-per-trial {cpus} --gpus-per-trial {gpus:g}: no node has that much (the "
        f"largest has {most_cpus:g} CPUs and {most_gpus:g} GPUs); lower them"
        + ("" if settings.address else ", or declare GPUs with --local-gpus")
    )


def gpus_per_trial(settings: RunSettings) -> float:
    """As resolve_gpus left it (None before it ran: no GPU)."""
    return settings.gpus_per_trial or 0.0


def ship(pretrained: dict[tuple[str, str], EncoderState]) -> dict[tuple[str, str], ray.ObjectRef]:
    """Each (encoder, weights) an object of its own in Ray's object store, which only the
    trials training from it fetch: a worker node needs no hub cache or weights file."""
    return {key: ray.put(state) for key, state in pretrained.items()}
