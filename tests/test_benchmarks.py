"""The benchmark scripts run end to end with tiny settings on the CPU and produce every
key of their tables and JSON; the GPU scripts import nothing the GPU machine lacks."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainable.metrics import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--encoder", "resnet18", "--image-size", "64", "--threads", "1"]
EPOCH_KEYS = {
    "epoch",
    "train_loss",
    "heldout_loss",
    "combined_loss",
    "heldout_dice",
    "seconds",
    "images_per_second",
    "peak_gpu_bytes",
    "improved",
}
MODE_KEYS = {
    "mode",
    "parameters",
    "autocast",
    "channels_last",
    "compiled",
    "warmup_seconds",
    "step_seconds",
    "images_per_second",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "device_used_bytes",
    "speedup_over_fp32",
}


@pytest.fixture(scope="module")
def bench():
    """Imports a benchmark module (they run from the repository root, as `python -m`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        yield lambda name: importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def synth_cache_file(bench, synth_root, tmp_path_factory) -> Path:
    """The synthetic set's 64 px cache, as one compressed file (the GPU bundle's form)."""
    out = tmp_path_factory.mktemp("bundle") / "busi-64.npz"
    return bench("bundle_cache").write_compressed_cache(synth_root, 64, out)


def test_bundle_cache_reads_back_as_the_project_cache(synth_cache_file, synth_arrays):
    from trainable.preprocess import read_cache

    copy = read_cache(synth_cache_file)
    assert copy.names == synth_arrays.names and copy.labels == synth_arrays.labels
    for field in ("images", "masks", "groups"):
        assert np.array_equal(getattr(copy, field), getattr(synth_arrays, field))


@pytest.mark.slow
def test_data_pipeline_tiny(bench, synth_root, cache_dir, tmp_path, capsys):
    module = bench("data_pipeline")
    argv = ["--data", str(synth_root), "--cache-dir", str(cache_dir), *TINY_MODEL]
    argv += ["--batches", "2", "--repeats", "1", "--steps", "1", "--step-repeats", "1"]
    argv += ["--profile-images", "2"]
    results = module.main([*argv, "--json", str(tmp_path / "pipeline.json")])
    assert [r["augmentation"] for r in results["throughput"]] == ["off", "reference-max"]
    for row in results["throughput"]:
        assert set(row) == {
            "augmentation",
            "naive_samples_per_s",
            "cached_samples_per_s",
            "cached_over_naive",
        }
        assert row["naive_samples_per_s"] > 0 and row["cached_samples_per_s"] > 0
    profile = results["augmentation_profile"]
    assert len(profile) == 8 and all(row["ms_per_image"] > 0 for row in profile)
    for row in results["waiting"]:
        assert set(row) == {"augmentation", "step_seconds", "wait_seconds", "wait_fraction"}
        assert 0 < row["wait_fraction"] < 1
    assert json.loads((tmp_path / "pipeline.json").read_text())["waiting"]
    printed = capsys.readouterr().out
    assert "cached/naive" in printed and "waiting %" in printed and "elastic" in printed


def test_heaviest_augmentation_is_the_top_of_the_reference_space(bench):
    from results.config import TrainConfig
    from search_spaces import AUGMENTATION_STRENGTHS

    config = bench("data_pipeline").heaviest_augmentation(TrainConfig.reference())
    assert config.aug_hflip_p == config.aug_elastic_p == 0.5
    assert (
        config.aug_affine_rotate == AUGMENTATION_STRENGTHS["aug_affine_p"]["aug_affine_rotate"][1]
    )


@pytest.mark.slow
def test_gpu_throughput_tiny_on_cpu(bench, synth_cache_file, tmp_path, capsys, monkeypatch):
    import torch

    module = bench("gpu_throughput")
    # The compiled mode through Dynamo's `eager` backend: inductor's code generation
    # takes minutes on a CPU.
    plain_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: plain_compile(m, backend="eager"))
    argv = [*TINY_MODEL, "--cache", str(synth_cache_file), "--out", str(tmp_path)]
    module.main([*argv, "--warmup", "1", "--steps", "1", "--repeats", "1", "--compile"])
    results = json.loads((tmp_path / module.RESULT_FILE).read_text())
    assert [m["mode"] for m in results["modes"]] == list(module.MODES)
    assert [m["compiled"] for m in results["modes"]] == [False, False, False, True]
    for mode in results["modes"]:
        assert set(mode) == MODE_KEYS and mode["images_per_second"] > 0
    assert results["packing"]["fit"] is None  # no GPU memory figures on the CPU
    assert {"date", "cpus", "torch", "gpu"} <= set(results["machine"])
    assert "bf16+channels-last" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_reference_tiny_on_cpu(bench, synth_root, cache_dir, tmp_path, capsys):
    module = bench("gpu_reference")
    argv = [*TINY_MODEL, "--epochs", "1", "--data", str(synth_root)]
    module.main([*argv, "--cache-dir", str(cache_dir), "--out", str(tmp_path)])
    results = json.loads((tmp_path / module.RESULT_FILE).read_text())
    assert list(results["protocols"]) == ["reference", "locked-test"]
    reference, locked = results["protocols"]["reference"], results["protocols"]["locked-test"]
    assert reference["counts"]["validation"] == 0 and locked["counts"]["validation"] > 0
    for protocol in (reference, locked):
        assert [set(e) for e in protocol["epochs"]] == [EPOCH_KEYS]
        assert protocol["selected_epoch"] == 1
        assert set(protocol["test"]) == set(METRIC_KEYS)
        assert protocol["test_loss"] > 0 and protocol["total_seconds"] > 0
    assert results["config"]["encoder_weights"] == "none"
    assert results["config"]["lr"] == 1e-4 and results["config"]["batch_size"] == 8
    assert "locked-test epoch 1" in (tmp_path / module.LOG_FILE).read_text()
    assert "selected epoch" in capsys.readouterr().out


def test_gpu_scripts_need_neither_ray_nor_optuna():
    """The GPU machine has no Ray (and no optuna): the GPU scripts must not import them."""
    code = (
        "import sys, benchmarks.gpu_reference, benchmarks.gpu_throughput\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.gpu
def test_gpu_scripts_on_cuda_with_the_reference_model(bench, synth_root, cache_dir, tmp_path):
    """The real model with bf16 autocast and channels-last: a few steps and one epoch."""
    throughput = bench("gpu_throughput").main(
        ["--data", str(synth_root), "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
        + ["--warmup", "1", "--steps", "2", "--repeats", "1"]
    )
    assert throughput["packing"]["fit"] >= 1
    assert all(m["peak_allocated_bytes"] > 0 for m in throughput["modes"])
    reference = bench("gpu_reference").main(
        ["--data", str(synth_root), "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
        + ["--epochs", "1", "--protocols", "locked-test"]
    )
    assert reference["precision"]["channels_last"] and reference["precision"]["autocast"]
    (epoch,) = reference["protocols"]["locked-test"]["epochs"]
    assert np.isfinite(epoch["train_loss"]) and epoch["peak_gpu_bytes"] > 0


def test_asha_expected_fraction_follows_the_sweeps_rungs(bench):
    fraction = bench("early_stopping").asha_expected_fraction
    assert fraction(1) == 1.0  # no rung below the budget: ASHA stops nothing
    assert fraction(6) == pytest.approx((2 + 4 / 3) / 6)  # one rung, at 2 (40 % of 6)
    assert fraction(20) == pytest.approx((8 + 12 / 3) / 20)  # one rung, at 8


def test_scaling_estimate_covers_each_layout(bench, capsys):
    rows = bench("scaling").main([])
    assert [(r["gpus"], r["trials_at_once"]) for r in rows] == [(1, 1), (1, 4), (8, 8), (64, 32)]
    assert rows[-1]["idle_gpus"] == 32  # 32 trials cannot use 64 GPUs
    assert all(r["wall_s"] >= max(r["bounds_s"].values()) for r in rows)
    assert rows[0]["wall_s"] > rows[2]["wall_s"] > rows[3]["wall_s"]
    assert "bound by" in capsys.readouterr().out


def test_memory_reads_this_process_from_proc(bench):
    import os

    memory = bench("memory")
    usage = memory.read_usage(os.getpid())
    assert usage.rss >= usage.pss >= usage.uss > 0
    assert usage.store_rss == 0  # no Ray object store mapped here
    assert os.getpid() in memory.descendants(os.getpid())


def test_checkpoint_cost_measures_both_policies(bench, tmp_path, capsys, monkeypatch):
    checkpoint_cost = bench("checkpoint_cost")
    out = tmp_path / "ckpt.json"
    argv = ["checkpoint_cost", "--encoder", "resnet18", "--input-size", "32", "--every", "2"]
    argv += ["--epochs", "4", "--improvements", "4", "--scratch", str(tmp_path), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    checkpoint_cost.main()
    results = json.loads(out.read_text())
    state, weights = results["state_gb"], results["weights_gb"]
    assert state > 2 * weights  # weights + Adam's two moments
    # Before: 4 epochs x 2 copies of the state + 4 weights; after: 1 state + 4 weights.
    assert results["gb_per_trial"]["before"] == pytest.approx(8 * state + 4 * weights)
    assert results["gb_per_trial"]["after"] == pytest.approx(state + 4 * weights)
    assert set(results["blocked_per_epoch_s"]) == {"before", "then", "now"}
    assert "blocked per epoch" in capsys.readouterr().out


@pytest.mark.slow
def test_reused_workers_start_trials_with_identical_results(bench):
    results = bench("trial_startup").main(["--trials", "2", "--attempts", "1"])
    assert results["identical"]  # reusing a worker changes no trial's result
    assert set(results["sweep_seconds"]) == {"fresh", "reused"}


@pytest.mark.slow
def test_startup_parts_are_timed_in_a_fresh_process(synth_root, cache_dir, tmp_path, short_dir):
    out = tmp_path / "parts.json"
    command = [sys.executable, "-m", "benchmarks.startup_parts", "--encoder", "resnet18"]
    command += ["--image-size", "32", "--workers", "1", "--data", str(synth_root)]
    command += ["--cache-dir", str(cache_dir), "--json", str(out)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_TMPDIR": str(short_dir())},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert list(results["imports_s"]) == ["torch", "ray.tune", "trainable.tune_adapter"]
    assert list(results["model_build_s"]) == ["resnet18"]
    assert list(results["first_batch_s"]) == ["0 workers", "1 workers"]
    assert set(results["ray_s"]) == {"ray.init", "bare worker", "worker + imports"}
    assert all(s > 0 for part in ("imports_s", "ray_s") for s in results[part].values())
    assert "import trainable.tune_adapter" in done.stdout


@pytest.mark.slow
def test_gpu_sweep_tiny_on_cpu(bench, synth_root, cache_dir, tmp_path, capsys):
    """Every figure of the GPU sweep benchmark, from a 2-trial, 2-epoch sweep on the CPU:
    the GPU ones absent (no NVML, no CUDA), the rest measured."""
    results = bench("gpu_sweep").main(
        ["--data", str(synth_root), "--cache-dir", str(cache_dir), "--trials", "2"]
        + ["--epochs", "2", "--encoder", "resnet18", "--image-size", "32"]
        + ["--out", str(tmp_path)]
    )
    assert results["sweep"]["gpus_per_trial"] == 0  # auto, on a cluster without GPUs
    assert results["sweep"]["train_images_per_s"] > 0
    assert results["driver_on_trial_result_s"]["results"] == 4  # 2 trials x 2 epochs
    assert 0 < results["driver_on_trial_result_s"]["median"] < 5
    assert results["gpu"]["samples"] == 0 and "NVML" in results["gpu"]["error"]
    first, second = results["trials"]
    assert first["epochs"] == second["epochs"] == 2
    parts = first["tax_parts_s"]
    assert set(parts) == {
        "worker_start",
        "weights_from_object_store",
        "setup_and_model_build",
        "first_training_beyond_steady",
        "first_evaluation_beyond_steady",
    }
    assert parts["worker_start"] > 0  # a fresh worker: its imports at least
    assert second["tax_parts_s"]["worker_start"] == 0  # the first trial's worker, reused
    assert first["peak_gpu_bytes"] is None
    assert json.loads((tmp_path / "gpu_sweep.json").read_text())["sweep"]["trials"] == 2
    assert "training images/s in aggregate" in capsys.readouterr().out
