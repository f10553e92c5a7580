"""`--gpus-per-trial auto`: trials per GPU from measured memory and the node's CPUs."""

from __future__ import annotations

from results.config import TrainConfig
from results.settings import RunSettings
from tuner.packing import Plan, heaviest_configs, trials_per_gpu

GiB = 2**30


def test_trials_fit_by_memory_with_headroom_and_by_cpus():
    # The H200 run: one reference trial held 6.8 GB of 143 GB, on 16 CPUs.
    assert trials_per_gpu(int(6.8e9), int(143e9), node_cpus=16, gpus=1) == 8  # CPUs bind
    assert trials_per_gpu(int(6.8e9), int(143e9), node_cpus=64, gpus=1) == 18  # 0.9 x 143/6.8
    assert trials_per_gpu(int(6.8e9), int(143e9), node_cpus=64, gpus=8) == 4  # 64 CPUs / 8 GPUs
    assert trials_per_gpu(int(80e9), int(80e9), node_cpus=16, gpus=1) == 1  # never 0


def test_the_heaviest_configs_are_the_largest_batch_and_size_of_each_encoder(tmp_path):
    base = TrainConfig.reference()
    sweep = RunSettings(data=tmp_path, base=base, storage=str(tmp_path), name="r")
    (heaviest,) = heaviest_configs(sweep)
    assert (heaviest.encoder, heaviest.batch_size, heaviest.image_size) == (base.encoder, 16, 256)
    wide = RunSettings(data=tmp_path, base=base, storage=str(tmp_path), name="w", space="wide")
    configs = heaviest_configs(wide)
    assert {c.encoder for c in configs} == {
        "resnext101_32x16d",
        "resnext50_32x4d",
        "resnet50",
        "efficientnet-b4",
    }
    assert {(c.batch_size, c.image_size) for c in configs} == {(16, 320)}
    reference = RunSettings(
        data=tmp_path, base=base, storage=str(tmp_path), name="f", reference_only=True
    )
    assert heaviest_configs(reference) == [base]  # its one trial, batch 8


def test_the_plan_is_one_line_that_names_what_it_measured():
    probe = TrainConfig.reference().replace(batch_size=16)
    plan = Plan(8, int(12.5 * GiB), int(140 * GiB), node_cpus=16, gpus_on_node=1, probe=probe)
    assert plan.gpus_per_trial == 0.125
    assert plan.line() == (
        "packing: 8 trials per GPU: resnext101_32x16d at batch 16, 256 px holds 12.5 of "
        "140 GiB (10% kept free), 16 CPUs for 1 GPU(s) at 2 per trial "
        "(--gpus-per-trial 0.125; a number overrides)"
    )
    unmeasured = Plan(1, None, None, node_cpus=2, gpus_on_node=1, probe=probe)
    assert unmeasured.line().startswith("packing: one trial per GPU: no CUDA device")
