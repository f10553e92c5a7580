"""The U-Net, its pretrained encoder weights, and the losses.

Weights come from smp's Hugging Face hub cache (by name, e.g. "instagram") or from a
local file holding the encoder's 3-channel state dict. Either way the first convolution
is adapted to one grey channel exactly as smp does it: its RGB weights are summed.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from trainable.config import Loss, TrainConfig
from trainable.errors import WeightsError

NO_WEIGHTS = "none"


def is_weights_file(weights: str) -> bool:
    return Path(weights).suffix in {".safetensors", ".pth", ".pt", ".bin"}


def build_model(config: TrainConfig) -> nn.Module:
    """`smp.Unet(encoder, weights, in_channels=1, classes=1)`, raw logits out."""
    weights = config.encoder_weights
    if weights.lower() == NO_WEIGHTS:
        return _unet(config.encoder, None, in_channels=1)
    if is_weights_file(weights):
        return _unet_from_file(config.encoder, Path(weights))
    _ensure_hub_weights(config.encoder, weights)
    return _unet(config.encoder, weights, in_channels=1)


def check_weights(config: TrainConfig) -> None:
    """Fail early, in the driver, on an unknown encoder or weights that cannot be had."""
    if not config.encoder.startswith("tu-") and config.encoder not in smp.encoders.encoders:
        raise WeightsError(
            f"unknown encoder {config.encoder!r}; see smp.encoders.get_encoder_names()"
        )
    weights = config.encoder_weights
    if weights.lower() == NO_WEIGHTS:
        return
    if is_weights_file(weights):
        if not Path(weights).is_file():
            raise WeightsError(f"{weights}: no such weights file; pass an existing file or none")
        return
    settings = smp.encoders.encoders.get(config.encoder, {}).get("pretrained_settings", {})
    if not config.encoder.startswith("tu-") and weights not in settings:
        raise WeightsError(
            f"no {weights!r} weights for {config.encoder}; valid: "
            f"{', '.join([*settings, NO_WEIGHTS])} or a weights file"
        )
    _ensure_hub_weights(config.encoder, weights)


def _unet(encoder: str, weights: str | None, in_channels: int) -> nn.Module:
    try:
        return smp.Unet(encoder, encoder_weights=weights, in_channels=in_channels, classes=1)
    except KeyError as error:  # smp lists the valid encoder or weight names
        raise WeightsError(str(error).strip("'\"")) from None


def _unet_from_file(encoder: str, path: Path) -> nn.Module:
    if not path.is_file():
        raise WeightsError(
            f"{path}: no such weights file; pass an existing .safetensors/.pth file, "
            "an smp weights name, or --encoder-weights none"
        )
    model = _unet(encoder, None, in_channels=3)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(state)
    except Exception as error:  # any unreadable or mismatched file: one clear line
        first_line = str(error).strip().splitlines()[0]
        raise WeightsError(
            f"{path}: not a {encoder} encoder state dict ({first_line}); "
            "save `model.encoder.state_dict()` of a 3-channel smp encoder"
        ) from None
    model.encoder.set_in_channels(1, pretrained=True)
    return model


def _ensure_hub_weights(encoder: str, weights: str) -> None:
    """Fetch (or find in the hub cache) the weights smp will load, with a clear error."""
    from huggingface_hub import hf_hub_download

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if encoder.startswith("tu-") or weights not in settings:
        return  # let smp report unknown names with its list of valid ones
    repo = settings[weights]
    try:
        for filename in ("config.json", "model.safetensors"):
            hf_hub_download(repo["repo_id"], filename=filename, revision=repo["revision"])
    except Exception as error:  # offline, no cache, hub down: all end the same way
        raise WeightsError(
            f"cannot get {encoder}/{weights} weights from the Hugging Face hub "
            f"({type(error).__name__}); on a connected machine run "
            f"`hf download {repo['repo_id']} --revision {repo['revision']}` and copy "
            "~/.cache/huggingface here (or set HF_HOME), pass a weights file path, "
            "or use --encoder-weights none"
        ) from None


def build_loss(loss: Loss | str) -> nn.Module:
    """Dice (the reference), optionally plus BCE or focal, all from logits."""
    loss = Loss(loss)
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    if loss is Loss.DICE:
        return dice
    extra = nn.BCEWithLogitsLoss() if loss is Loss.DICE_BCE else smp.losses.FocalLoss(mode="binary")
    return _SumLoss(dice, extra)


class _SumLoss(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.first(logits, target) + self.second(logits, target)
