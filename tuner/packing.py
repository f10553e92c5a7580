"""How many trials share a GPU: `--gpus-per-trial auto`, the default.

One reference trial kept an H200 41 % busy (6.8 GB of 143 GB): packing trials onto one GPU
is what fills it. The plan comes from a measurement, not a guess: a Ray task on a GPU node
trains one step of the heaviest config the sweep can sample (its largest batch and image
size, each encoder it can choose) and reads the device memory the process then holds
(CUDA context and cuDNN workspaces included). Trials per GPU = what fits with 10 %
headroom, and no more than the node's CPUs can feed (a GPU trial needs one CPU to train
and one for a DataLoader worker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
import torch

from results.config import TrainConfig
from results.settings import CPUS_PER_GPU_TRIAL, GPU_HEADROOM, RunSettings
from search_spaces import get_space


@dataclass(frozen=True)
class Plan:
    trials_per_gpu: int
    per_trial_bytes: int | None  # None: nothing could be measured
    gpu_bytes: int | None
    node_cpus: int
    gpus_on_node: int
    probe: TrainConfig

    @property
    def gpus_per_trial(self) -> float:
        return 1 / self.trials_per_gpu

    def line(self) -> str:
        """The plan in one line, for the console."""
        heaviest = (
            f"{self.probe.encoder} at batch {self.probe.batch_size}, {self.probe.image_size} px"
        )
        if self.per_trial_bytes is None:
            why = f"one trial per GPU: no CUDA device could measure {heaviest}"
        else:
            why = (
                f"{self.trials_per_gpu} trials per GPU: {heaviest} holds "
                f"{self.per_trial_bytes / 2**30:.1f} of {self.gpu_bytes / 2**30:.0f} GiB "
                f"({GPU_HEADROOM:.0%} kept free), {self.node_cpus} CPUs for "
                f"{self.gpus_on_node} GPU(s) at {CPUS_PER_GPU_TRIAL} per trial"
            )
        return f"packing: {why} (--gpus-per-trial {self.gpus_per_trial:.3g}; a number overrides)"


def trials_per_gpu(per_trial_bytes: int, gpu_bytes: int, node_cpus: int, gpus: int) -> int:
    """What fits in the GPU's memory with GPU_HEADROOM free, capped by the CPUs the node has
    per GPU; at least 1."""
    by_memory = math.floor((1 - GPU_HEADROOM) * gpu_bytes / per_trial_bytes)
    by_cpus = node_cpus // (max(gpus, 1) * CPUS_PER_GPU_TRIAL)
    return max(1, min(by_memory, by_cpus))


def heaviest_configs(settings: RunSettings) -> list[TrainConfig]:
    """The configs a trial of this sweep can need the most memory for: the largest batch
    and image size the space samples, with each encoder it can choose."""
    base = settings.base
    if settings.reference_only:
        return [base]
    space = get_space(settings.space)
    batch = max([base.batch_size, *space.parameters(base)["batch_size"].choices])
    size = max(space.image_sizes(base))
    return [
        base.replace(encoder=encoder, encoder_weights="none", batch_size=batch, image_size=size)
        for encoder in space.encoder_weights(base)
    ]


def device_bytes_for(config: TrainConfig) -> tuple[int, int] | None:
    """On a GPU: (bytes the process holds after one training step of `config`, the GPU's
    total); None without CUDA."""
    from trainable.engine import Precision
    from trainable.model import build_loss, build_model
    from trainable.optim import build_optimizer

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    precision = Precision.for_device(device, config)
    model = build_model(config).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    loss_fn = build_loss(config.loss)
    shape = (config.batch_size, 1, config.image_size, config.image_size)
    images = precision.layout(torch.randn(shape, device=device))
    masks = torch.randint(0, 2, shape, device=device).float()
    torch.backends.cudnn.benchmark = True  # as a trial runs: its workspaces count too
    for _ in range(2):  # the second step holds the optimiser's state as well
        with precision.autocast(device):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free, total


def plan(settings: RunSettings) -> Plan | None:
    """The packing for this sweep on the connected cluster; None when it has no GPU."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    if not nodes:
        return None
    node = min(nodes, key=lambda n: n["CPU"] / n["GPU"])  # the tightest GPU node
    gpus, cpus = int(node["GPU"]), int(node["CPU"])
    probe = ray.remote(num_gpus=1, num_cpus=1)(device_bytes_for)
    measured = [(config, ray.get(probe.remote(config))) for config in heaviest_configs(settings)]
    if any(found is None for _, found in measured):
        return Plan(1, None, None, cpus, gpus, measured[0][0])
    config, (used, total) = max(measured, key=lambda m: m[1][0])
    return Plan(trials_per_gpu(used, total, cpus, gpus), used, total, cpus, gpus, config)
