"""A tuned model as one function from grey images of any size to lesion probabilities:
the selected model of a trial (or the average of several), or an exported TorchScript
file, with optional horizontal-flip test-time augmentation.

Every image goes through the training's own steps: one grey channel
(`trainable.dataset.grey`), resized to the model's input size (`resize_image`), the same
normalisation, and probabilities at the experiment's evaluation size
(`engine.predict_probabilities` for a checkpoint, the normalisation inside an export).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from results.experiment import Experiment
from trainable.engine import Precision, pick_device, predict_probabilities, resize_probabilities
from trainable.errors import UserError
from trainable.preprocess import resize_image
from tuner.evaluate import load_selected_models, pick_trial, reason

# Uint8 images (N, S, S) at a member's input size -> probabilities (N, E, E).
Run = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One model of a segmenter."""

    name: str
    input_size: int
    run: Run


@dataclass(frozen=True)
class Segmenter:
    members: tuple[Member, ...]
    eval_size: int  # the size every member's probabilities are averaged at
    threshold: float
    flip: bool = False  # horizontal-flip test-time augmentation

    def probabilities(self, originals: Sequence[np.ndarray]) -> np.ndarray:
        """Mean probability (N, E, E) of every member (and its flipped pass) on grey
        uint8 images of any size."""
        total = None
        for member in self.members:
            inputs = np.stack([resize_image(image, member.input_size) for image in originals])
            probs = member.run(inputs)
            if self.flip:
                flipped = member.run(np.ascontiguousarray(inputs[..., ::-1]))
                probs = (probs + flipped.flip(-1)) / 2
            total = probs if total is None else total + probs
        return (total / len(self.members)).cpu().numpy()

    def describe(self) -> str:
        names = ", ".join(m.name for m in self.members)
        return f"{names}{' with flip TTA' if self.flip else ''}, threshold {self.threshold:g}"


def from_experiment(
    experiment: Experiment,
    trial: str | None = None,
    ensemble: int = 1,
    flip: bool = False,
    threshold: float | None = None,
    device: torch.device | None = None,
) -> Segmenter:
    """The named trial's selected model, or the `ensemble` best trials' averaged."""
    device = device or pick_device()
    if ensemble < 1:
        raise UserError("--ensemble must be at least 1")
    if trial is not None and ensemble > 1:
        raise UserError("--trial and --ensemble: choose one trial or the K best, not both")
    if trial is not None or ensemble == 1:
        trials = [pick_trial(experiment, trial)]
    else:
        trials = [t for t in experiment.ranked() if t.selected is not None][:ensemble]
        if len(trials) < ensemble:
            raise UserError(
                f"--ensemble {ensemble}: {experiment.location} has only {len(trials)} trials "
                "with a selected model"
            )
    members = []
    for chosen in trials:  # a cross-validated trial brings one model per fold
        models = load_selected_models(experiment, chosen, device)
        precision = Precision.for_device(device, chosen.config)
        for fold, model in enumerate(models):
            if precision.channels_last:
                model = model.to(memory_format=torch.channels_last)
            name = chosen.name if len(models) == 1 else f"{chosen.name} fold {fold}"
            run = _checkpoint_run(model, device, precision, experiment.settings.base.image_size)
            members.append(Member(name, chosen.config.image_size, run))
    config = experiment.settings.base
    return Segmenter(
        tuple(members), config.image_size, threshold or trials[0].config.threshold, flip
    )


def _checkpoint_run(
    model: torch.nn.Module, device: torch.device, precision: Precision, eval_size: int
) -> Run:
    def run(images: np.ndarray) -> torch.Tensor:
        model.eval()
        return predict_probabilities(model, images, device, precision, eval_size)

    return run


def card_path(export_file: Path) -> Path:
    """The JSON model card beside an exported file."""
    return export_file.with_suffix(".json")


def from_export(
    path: Path, flip: bool = False, threshold: float | None = None, device=None
) -> Segmenter:
    """An exported TorchScript file and the model card beside it."""
    device = device or pick_device()
    card_file = card_path(path)
    if card_file == path:
        raise UserError(
            f"{path}: a model card, not an exported model; give the model file beside it "
            "(or export again with an --out that ends in .pt)"
        )
    if not card_file.is_file():
        raise UserError(f"{path}: no model card {card_file.name} beside it; export it again")
    try:
        card = json.loads(card_file.read_text())
        size, eval_size = card["input"]["size"], card["evaluation_size"]
        threshold = threshold or card["threshold"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{card_file}: damaged model card ({reason(error)}); export the model again"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, OSError) as error:
        raise UserError(
            f"{path}: not a TorchScript export ({reason(error)}); export it again"
        ) from None

    @torch.no_grad()
    def run(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(device).float().unsqueeze(1)
        return resize_probabilities(module(x), eval_size)

    member = Member(card.get("trial", path.name), size, run)
    return Segmenter((member,), eval_size, threshold, flip)
