"""`python -m tuner export`: a trial's selected model as one TorchScript file that takes
grey images (float values 0-255, (N, 1, S, S)) and returns lesion probabilities, with a
JSON model card beside it that says everything needed to use and judge it."""

from __future__ import annotations

import json
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from results.experiment import Experiment, Trial
from results.layout import SPLIT_FILE
from results.reference import load_reference
from trainable.augment import GREY_MEAN, GREY_STD
from trainable.errors import UserError
from tuner.evaluate import load_selected_models
from tuner.segmenter import card_path

FORMATS = ("torchscript",)


class ProbabilityNet(nn.Module):
    """The U-Net with the training's normalisation before it and a sigmoid after it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.mean, self.std = GREY_MEAN, GREY_STD

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model((images / 255.0 - self.mean) / self.std))


def _versions() -> dict[str, str]:
    packages = ("busi-tune", "torch", "segmentation-models-pytorch", "ray", "optuna")
    found = {name: metadata.version(name) for name in packages}
    return {"python": platform.python_version(), **found}


def model_card(experiment: Experiment, trial: Trial, file: Path, fmt: str) -> dict[str, Any]:
    config = trial.config
    metrics = json.loads((trial.path / "metrics.json").read_text())
    split = json.loads((trial.path / SPLIT_FILE).read_text())
    reference = load_reference()
    return {
        "file": file.name,
        "format": fmt,
        "experiment": experiment.location,
        "trial": trial.name,
        "encoder": config.encoder,
        "encoder_weights": config.encoder_weights,
        "input": {
            "size": config.image_size,
            "shape": [None, 1, config.image_size, config.image_size],
            "values": "grey levels 0-255 as float32 (one channel: RGB images converted to L)",
            "resize": "area averaging when shrinking, bilinear when growing",
            "normalisation": {
                "mean": GREY_MEAN,
                "std": GREY_STD,
                "formula": "(x / 255 - mean) / std",
                "applied": "inside the exported model",
            },
        },
        "output": "lesion probability per pixel, (N, 1, S, S); lesion where > threshold",
        "threshold": config.threshold,
        "evaluation_size": experiment.settings.base.image_size,
        "training_config": config.to_flat(),
        "selected_epoch": metrics["selected_epoch"],
        "split": {k: split[k] for k in ("policy", "seed", "counts", "sha256")},
        "protocol": metrics["protocol"],
        "validation": metrics["heldout"],
        "test": {"loss": metrics["test_loss"], **metrics["test"]},
        "published_reference": {
            "test": reference.test,
            "protocol": reference.protocol,
            "source": reference.source,
        },
        "software": _versions(),
    }


def export(experiment: Experiment, trial: Trial, out: Path, fmt: str = "torchscript") -> Path:
    """Write the model to `out` and its card beside it; returns the card's path. Refuses
    to overwrite either, or an --out that the card would overwrite."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not supported; valid: {', '.join(FORMATS)}")
    card_file = card_path(out)
    # card.JSON too: one file with card.json where names ignore case (macOS, Windows).
    if out.suffix.lower() == card_file.suffix:
        raise UserError(
            f"--out {out}: the model card is written to <out>.json, so the model would be "
            f"lost under it; name the model e.g. {out.with_suffix('.pt')}"
        )
    for path in (out, card_file):
        if path.exists():
            raise UserError(f"{path}: exists; choose another --out (nothing is overwritten)")
    if trial.config is None or trial.selected is None:
        raise UserError(f"{trial.path}: no selected model to export; choose another --trial")
    models = load_selected_models(experiment, trial, torch.device("cpu"))
    if len(models) > 1:
        raise UserError(
            f"{trial.name}: a cross-validated trial is {len(models)} fold models; export "
            "exports one model (use predict on the experiment for the fold ensemble)"
        )
    model = ProbabilityNet(models[0]).eval()
    size = trial.config.image_size
    example = torch.zeros(1, 1, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        # smp's shape checks become constants in the trace: right for this input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript is deprecated in favour of torch.export, but it is the format that
        # libtorch (C++) and older torch releases load; the tests check it still works.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
    card = json.dumps(model_card(experiment, trial, out, fmt), indent=2) + "\n"
    written: list[Path] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # "x": a file that appeared since the check above is still not overwritten.
        with open(out, "xb") as handle, warnings.catch_warnings():
            written.append(out)
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's, as above
            torch.jit.save(traced, handle)
        with open(card_file, "x") as handle:
            written.append(card_file)
            handle.write(card)
    except OSError as error:
        for path in written:  # ours and incomplete: a retry must not find them in its way
            path.unlink(missing_ok=True)
        raise UserError(
            f"--out {out}: cannot write {error.filename or out} ({error.strerror or error}); "
            "choose an --out in a folder you can write"
        ) from None
    return card_file
