"""Peak memory of one trial and of two concurrent trials, and where the dataset lives:
in Ray's object store, mapped shared by every trial, or copied into each.

    python -m benchmarks.memory --data ../shared/busi/Dataset_BUSI_with_GT

Runs the project's trainable through the project's Tuner settings (data shared with
`tune.with_parameters`), 1 trial then 2 concurrent identical trials, each run stopped
after --seconds, while a thread reads /proc/<pid>/smaps of this process and all its
descendants (Ray's raylet, GCS and workers) every --interval seconds. A trial is a Ray
worker whose command line names Tune's function-trainable actor (ImplicitFunc). Memory
in a mapping of the object store's file (/dev/shm/plasma...) is the dataset as the
trial sees it; USS is memory private to a process, PSS shares each shared page among
the processes that map it (so PSS adds up to physical memory).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from benchmarks.common import OWN_RAY, add_data_flags, table, write_json
from results.config import TrainConfig
from results.settings import RunSettings
from tuner import cluster, sweep
from tuner.progress import TrialNamer

TRIAL_MARK = "ImplicitFunc"  # Ray's process title of a Tune function-trainable actor
STORE_MARK = "plasma"  # the object store's memory-mapped file
MB = 1e6


@dataclass
class Usage:
    """One process at one moment, in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    store_rss: int = 0
    store_pss: int = 0
    store_private: int = 0


def read_usage(pid: int) -> Usage:
    usage, in_store = Usage(), False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            name, _, rest = line.partition(" ")
            if not name.endswith(":"):  # a mapping's header: address range ... path
                in_store = STORE_MARK in rest
                continue
            if not rest.rstrip().endswith("kB"):
                continue
            size = int(rest.split()[0]) * 1024
            if name == "Rss:":
                usage.rss += size
                usage.store_rss += size if in_store else 0
            elif name == "Pss:":
                usage.pss += size
                usage.store_pss += size if in_store else 0
            elif name in ("Private_Clean:", "Private_Dirty:"):
                usage.uss += size
                usage.store_private += size if in_store else 0
    return usage


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from the parent ids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces; the parent id follows its ")".
                parent = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _command(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().replace(b"\0", b" ").decode(errors="replace")


@dataclass
class Sampler:
    """Peaks over time: per trial worker, and summed over the whole process tree."""

    interval: float
    workers: dict[int, Usage] = field(default_factory=dict)
    tree_pss: int = 0
    store_pss: int = 0
    samples: int = 0

    def sample(self) -> None:
        tree = Usage()
        for pid in descendants(os.getpid()):
            try:
                usage, command = read_usage(pid), _command(pid)
            except OSError:
                continue  # ended meanwhile
            tree.pss += usage.pss
            tree.store_pss += usage.store_pss
            if TRIAL_MARK in command:
                peak = self.workers.setdefault(pid, Usage())
                for name, value in vars(usage).items():
                    setattr(peak, name, max(getattr(peak, name), value))
        self.tree_pss = max(self.tree_pss, tree.pss)
        self.store_pss = max(self.store_pss, tree.store_pss)
        self.samples += 1

    def run_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.sample()


def measure(settings: RunSettings, data, trials: int, seconds: float, interval: float) -> dict:
    """Run `trials` identical concurrent trials for `seconds`, sampling memory."""
    os.environ.update(OWN_RAY)  # a Ray of our own: its processes are our descendants
    cluster.init_ray(settings)
    tuner = tune.Tuner(
        sweep.build_trainable(settings, data, weights={}),  # encoder_weights none
        param_space={},
        tune_config=tune.TuneConfig(
            num_samples=trials,
            max_concurrent_trials=trials,
            time_budget_s=seconds,
            trial_dirname_creator=TrialNamer(sweep=False),
        ),
        run_config=sweep.build_run_config(settings),
    )
    sampler, stop = Sampler(interval), threading.Event()
    thread = threading.Thread(target=sampler.run_until, args=(stop,), daemon=True)
    thread.start()
    try:
        results = tuner.fit()
    finally:
        stop.set()
        thread.join()
        ray.shutdown()
    return {
        "trials": trials,
        "workers": [vars(sampler.workers[pid]) | {"pid": pid} for pid in sorted(sampler.workers)],
        "tree_peak_pss": sampler.tree_pss,
        "store_peak_pss": sampler.store_pss,
        "samples": sampler.samples,
        "epochs_done": [int((r.metrics or {}).get("training_iteration") or 0) for r in results],
    }


def summarise(one: dict, two: dict, dataset_bytes: int) -> dict[str, Any]:
    """The dataset memory the second trial adds: its private pages in the object store
    plus any growth of the store's physical pages, against the bytes a copy would take."""
    if len(one["workers"]) != 1 or len(two["workers"]) != 2:
        raise RuntimeError(
            f"expected 1 and 2 trial workers, sampled {len(one['workers'])} and "
            f"{len(two['workers'])}: raise --seconds so the trials start"
        )
    second = two["workers"][1]
    added = second["store_private"] + max(0, two["store_peak_pss"] - one["store_peak_pss"])
    return {
        "dataset_bytes": dataset_bytes,
        "second_trial_dataset_bytes": added,
        "second_over_first_dataset": added / dataset_bytes,
        "second_trial_tree_pss_bytes": two["tree_peak_pss"] - one["tree_peak_pss"],
    }


def format_results(results: dict[str, Any]) -> str:
    one, two, s = results["one_trial"], results["two_trials"], results["summary"]
    workers = [("1 trial", one["workers"][0])] + [
        (f"2 trials, #{i + 1}", w) for i, w in enumerate(two["workers"])
    ]
    settings = results["settings"]
    lines = [
        f"memory: {settings['encoder']}, {settings['image_size']} px, batch "
        f"{settings['batch_size']}, runs of {settings['seconds']:.0f} s (epochs done: 1 trial "
        f"{one['epochs_done']}, 2 trials {two['epochs_done']}); dataset "
        f"{s['dataset_bytes'] / MB:.1f} MB; peaks in MB",
        table(
            ["trial worker", "RSS", "USS", "PSS", "store RSS", "store private"],
            [
                [
                    name,
                    w["rss"] / MB,
                    w["uss"] / MB,
                    w["pss"] / MB,
                    w["store_rss"] / MB,
                    w["store_private"] / MB,
                ]
                for name, w in workers
            ],
        ),
        "",
        table(
            ["all processes (driver, Ray, trials)", "1 trial", "2 trials"],
            [
                ["PSS peak", one["tree_peak_pss"] / MB, two["tree_peak_pss"] / MB],
                ["object-store PSS peak", one["store_peak_pss"] / MB, two["store_peak_pss"] / MB],
            ],
        ),
        f"the second trial adds {s['second_trial_dataset_bytes'] / MB:.1f} MB of dataset memory "
        f"= {s['second_over_first_dataset']:.1%} of the {s['dataset_bytes'] / MB:.1f} MB a copy "
        f"would take (target < 50 %); all it adds: {s['second_trial_tree_pss_bytes'] / MB:.0f} "
        "MB PSS (its own torch, model and activations)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0]
    )
    add_data_flags(parser)
    parser.add_argument("--image-size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--encoder", default="resnet18", help="(default: %(default)s)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=90,
        help="length of each run, from its start (default: %(default)s)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between samples (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    base = TrainConfig.reference().replace(
        encoder=args.encoder, encoder_weights="none", image_size=args.image_size
    )
    with tempfile.TemporaryDirectory() as storage:

        def settings(name: str) -> RunSettings:
            return RunSettings(
                data=args.data,
                base=base,
                reference_only=True,
                storage=storage,
                name=name,
                cache_dir=args.cache_dir,
            )

        data = sweep.load_data(settings("memory"))
        one = measure(settings("one-trial"), data, 1, args.seconds, args.interval)
        two = measure(settings("two-trials"), data, 2, args.seconds, args.interval)
    results = {
        "settings": {
            "encoder": base.encoder,
            "image_size": base.image_size,
            "batch_size": base.batch_size,
            "seconds": args.seconds,
        },
        "one_trial": one,
        "two_trials": two,
        "summary": summarise(one, two, data.images.nbytes + data.masks.nbytes),
    }
    print(format_results(results))
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
