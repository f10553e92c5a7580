"""`python -m tuner export`: a trial's selected model as one TorchScript or ONNX file that
takes grey images (float values 0-255, (N, 1, S, S)) and returns lesion probabilities, with
a JSON model card beside it that says everything needed to use and judge it."""

from __future__ import annotations

import io
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from results import storage
from results.errors import DamagedRecord, UserError
from results.experiment import Experiment, Trial
from results.layout import EXPORT_FORMATS, METRICS_FILE, SPLIT_FILE
from results.records import SPLIT_IMAGES, ModelCard, SplitManifest
from results.reference import load_reference
from trainable.augment import GREY_MEAN, GREY_STD
from trainable.preprocess import resize_rule
from tuner.inference.model import load_tuned_model, trial_threshold
from tuner.inference.predict import split_images
from tuner.inference.segmenter import card_path

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# Opset 17 (2022): every onnxruntime since 1.13 runs it, and it has every operator the
# U-Nets here use; chosen explicitly so the file does not change with torch's default.
ONNX_OPSET = 17
ONNX_INSTALL = 'pip install "busi-tune[onnx]"'
ONNX_NAMES = {"input": "images", "output": "probabilities"}


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


def recorded_split(trial: Trial) -> SplitManifest:
    """The trial's split.json, with the policy, seed, counts and hash a card names."""
    try:
        split = trial.split()
    except DamagedRecord as error:
        raise UserError(
            f"{error}; the model card cannot name the trial's split: restore the file from "
            "a copy, or export another --trial"
        ) from None
    if None in (split.policy, split.seed, split.counts, split.sha256):
        path = trial.path / SPLIT_FILE
        raise UserError(f"{path}: damaged (no policy, seed, counts or hash); restore it")
    return split


def model_card(experiment: Experiment, trial: Trial, file: Path, fmt: str) -> dict[str, Any]:
    config, selected = trial.config, trial.selected
    if selected is None:
        raise UserError(
            f"{storage.join(experiment.location, trial.name, METRICS_FILE)}: missing or "
            "damaged, so the model card cannot say what was selected; choose another --trial"
        )
    split = recorded_split(trial)
    reference = load_reference()
    size, eval_size = config.image_size, experiment.settings.base.image_size
    return {
        "file": file.name,
        # What a program that runs the ONNX file must name.
        **({"onnx": {"opset": ONNX_OPSET, **ONNX_NAMES}} if fmt == "onnx" else {}),
        "experiment": experiment.location,
        "trial": trial.name,
        "encoder": config.encoder,
        "encoder_weights": config.encoder_weights,
        # What `predict` does to an image, exactly enough to be done by another program.
        "input": {
            "size": size,
            "shape": [None, 1, size, size],
            "layout": "NCHW: any batch size, one grey channel, height, width",
            "dtype": "float32",
            "values": "grey levels 0-255, not scaled",
            "grey": "PIL Image.convert('L') (L = R*299/1000 + G*587/1000 + B*114/1000); "
            "16-bit grey scaled to 0-255",
            "resize": resize_rule(size),
            "normalisation": {
                "mean": GREY_MEAN,
                "std": GREY_STD,
                "formula": "(x / 255 - mean) / std",
                "applied": "inside the exported model",
            },
        },
        "output": {
            "shape": [None, 1, size, size],
            "values": "lesion probability per pixel, float32 0-1; lesion where > threshold",
            "to_image_size": _to_image_size(size, eval_size),
        },
        # The one the trial scored at (chosen on validation under --threshold auto).
        "threshold": trial_threshold(trial),
        "evaluation_size": eval_size,
        "training_config": config.to_flat(),
        "selected_epoch": selected.epoch,
        "split": {
            "policy": split.policy,
            "seed": split.seed,
            "counts": split.counts,
            "sha256": split.sha256,
        },
        "protocol": selected.protocol,
        "validation": selected.heldout,
        "test": selected.test,
        "published_reference": {
            "test": reference.test,
            "protocol": reference.protocol,
            "source": reference.source,
        },
        "software": _versions(),
        # The split's images by content, for predict's in_experiment column.
        SPLIT_IMAGES: split_images(experiment, trial),
    }


def _to_image_size(size: int, eval_size: int) -> str:
    """How `predict` turns the output into a mask at the image's own width x height."""
    back = (
        "cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) on one image's "
        "float32 (S, S) probabilities p, then > threshold"
    )
    if size == eval_size:
        return back
    return (
        f"torch.nn.functional.interpolate(probabilities, size=({eval_size}, {eval_size}), "
        f"mode='bilinear', align_corners=False).clamp(0, 1) (the evaluation size), then {back}"
    )


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        # smp's shape checks become constants in the trace: right for this input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript is deprecated in favour of torch.export, but it is the format that
        # libtorch (C++) and older torch releases load; the tests check it still works.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    import onnx  # present: export() checked

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as for TorchScript
        # The TorchScript-based exporter, deprecated but in torch 2.14: it traces as the
        # TorchScript export does and needs no package beyond torch; the default
        # (dynamo=True) would need onnxscript too. Batch is dynamic, the size is not.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_NAMES["input"]],
            output_names=[ONNX_NAMES["output"]],
            dynamic_axes={name: {0: "batch"} for name in ONNX_NAMES.values()},
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def export(experiment: Experiment, trial: Trial, out: Path, fmt: str = EXPORT_FORMATS[0]) -> Path:
    """Write the model to `out` and its card beside it; returns the card's path. Refuses
    to overwrite either, or an --out that the card would overwrite."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt}: not supported; valid: {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (checks the file; onnxruntime runs it in predict)
        except ImportError:
            raise UserError(
                f"--format onnx: the onnx package is not installed; {ONNX_INSTALL}"
            ) from None
    card_file = card_path(out)
    # card.JSON too: one file with card.json where names ignore case (macOS, Windows).
    if out.suffix.lower() == card_file.suffix:
        raise UserError(
            f"--out {out}: the model card is written to <out>.json, so the model would be "
            f"lost under it; name the model e.g. {out.with_suffix(SUFFIXES[fmt])}"
        )
    for path in (out, card_file):
        if path.exists():
            raise UserError(f"{path}: exists; choose another --out (nothing is overwritten)")
    if trial.config is None or trial.selected is None:
        raise UserError(f"{trial.path}: no selected model to export; choose another --trial")
    networks = load_tuned_model(experiment, trial, torch.device("cpu")).networks
    if len(networks) > 1:
        raise UserError(
            f"{trial.name}: a cross-validated trial is {len(networks)} fold models; export "
            "exports one model (use predict on the experiment for the fold ensemble)"
        )
    model = ProbabilityNet(networks[0]).eval()
    size = trial.config.image_size
    example = torch.zeros(1, 1, size, size)
    data = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(model, example)
    card = ModelCard.to_text(fmt, model_card(experiment, trial, out, fmt)) + "\n"
    written: list[Path] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # "x": a file that appeared since the check above is still not overwritten.
        with open(out, "xb") as handle:
            written.append(out)
            handle.write(data)
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
