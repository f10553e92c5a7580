"""A tuned model as one function from grey images of any size to lesion probabilities:
the selected model of a trial (or the average of several), or an exported TorchScript
or ONNX file (run by onnxruntime), with optional horizontal-flip test-time augmentation.

Every image goes through the training's own steps: one grey channel
(`trainable.dataset.grey`), resized to the model's input size (`resize_image`), the same
normalisation, and probabilities at the experiment's evaluation size
(`engine.predict_probabilities` for a checkpoint, the normalisation inside an export).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from results.errors import UserError
from results.experiment import Experiment
from results.records import ModelCard
from trainable.engine import Precision, pick_device, predict_probabilities, resize_probabilities
from trainable.preprocess import resize_image
from tuner.inference import ENSEMBLE
from tuner.inference.model import load_tuned_model, pick_trial, reason, trial_threshold

# Uint8 images (N, S, S) at a member's input size -> probabilities (N, E, E).
Run = Callable[[np.ndarray], torch.Tensor]
# An export's model: float32 grey values (N, 1, S, S) -> probabilities (N, 1, S, S).
Forward = Callable[[np.ndarray], torch.Tensor]


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
        return self.averaged(
            lambda size: np.stack([resize_image(image, size) for image in originals])
        )

    def averaged(self, inputs_at: Callable[[int], np.ndarray]) -> np.ndarray:
        """The same mean, each member run on `inputs_at(its input size)`: uint8 images
        (N, S, S) already at that size (`evaluate` passes the arrays a trial trained on)."""
        total = None
        for member in self.members:
            inputs = inputs_at(member.input_size)
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
    ensemble: int = ENSEMBLE,
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
        networks = load_tuned_model(experiment, chosen, device).networks
        precision = Precision.for_device(device, chosen.config)
        for fold, model in enumerate(networks):
            if precision.channels_last:
                model = model.to(memory_format=torch.channels_last)
            name = chosen.name if len(networks) == 1 else f"{chosen.name} fold {fold}"
            run = _checkpoint_run(model, device, precision, experiment.settings.base.image_size)
            members.append(Member(name, chosen.config.image_size, run))
    config = experiment.settings.base
    return Segmenter(
        tuple(members), config.image_size, threshold or trial_threshold(trials[0]), flip
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


def read_card(path: Path) -> ModelCard:
    """The model card beside the exported file `path`; one line when there is none or it
    cannot be read."""
    card_file = card_path(path)
    if card_file == path:
        raise UserError(
            f"{path}: a model card, not an exported model; give the model file beside it "
            "(or export again with an --out that ends in .pt)"
        )
    if not card_file.is_file():
        raise UserError(f"{path}: no model card {card_file.name} beside it; export it again")
    try:
        return ModelCard.from_text(card_file.read_bytes(), card_file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise UserError(
            f"{card_file}: damaged model card ({reason(error)}); export the model again"
        ) from None


def from_export(
    path: Path, flip: bool = False, threshold: float | None = None, device=None
) -> Segmenter:
    """An exported TorchScript or ONNX file and the model card beside it (whose "runtime"
    says which)."""
    device = device or pick_device()
    card = read_card(path)
    size, eval_size = card.input_size, card.evaluation_size
    threshold = threshold or card.threshold
    onnx = card.runtime == "onnx"
    forward = _onnx_forward(path) if onnx else _torchscript_forward(path, device)

    @torch.no_grad()
    def run(images: np.ndarray) -> torch.Tensor:
        x = images.astype(np.float32)[:, None]  # grey values 0-255, (N, 1, S, S)
        return resize_probabilities(forward(x), eval_size)

    member = Member(card.trial or path.name, size, run)
    return Segmenter((member,), eval_size, threshold, flip)


def _torchscript_forward(path: Path, device: torch.device) -> Forward:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, OSError) as error:
        raise UserError(
            f"{path}: not a TorchScript export ({reason(error)}); export it again"
        ) from None
    return lambda x: module(torch.from_numpy(x).to(device))


def _onnx_forward(path: Path) -> Forward:
    """onnxruntime on the CPU: the one provider every onnxruntime package has."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            f'{path}: an ONNX export is run by onnxruntime; pip install "busi-tune[onnx]"'
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's to fix
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's errors derive from Exception only
        raise UserError(f"{path}: not an ONNX export ({reason(error)}); export it again") from None
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x})[0])
