"""The U-Net, its pretrained encoder weights, and the losses.

Weights come from smp's Hugging Face hub cache (by name, e.g. "instagram") or from a
local file holding the encoder's 3-channel state dict. Either way the first convolution
is adapted to one grey channel exactly as smp does it: its RGB weights are summed.

In a sweep the driver resolves them once (`pretrained_encoders`) and Ray's object store
ships them to every trial, so a worker node needs neither the hub nor the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from results.config import Loss, TrainConfig, is_weights_file
from results.errors import WeightsError

NO_WEIGHTS = "none"

# An encoder's 3-channel state dict as arrays (which Ray's object store hands to trials
# without a copy).
EncoderState = Mapping[str, np.ndarray]


def shippable(encoder: str, weights: str) -> bool:
    """Whether the driver resolves these weights for the trials (timm's `tu-` encoders
    fetch their own; "none" needs none)."""
    return weights.lower() != NO_WEIGHTS and not encoder.startswith("tu-")


def build_model(config: TrainConfig, encoder_state: EncoderState | None = None) -> nn.Module:
    """`smp.Unet(encoder, weights, in_channels=1, classes=1)`, raw logits out; the
    encoder's weights from `encoder_state` when given (the driver's copy of them)."""
    weights = config.encoder_weights
    if weights.lower() == NO_WEIGHTS:
        return _unet(config.encoder, None, in_channels=1)
    if encoder_state is not None:
        with warnings.catch_warnings():  # read-only arrays: load_state_dict copies them
            warnings.simplefilter("ignore", UserWarning)
            tensors = {name: torch.from_numpy(array) for name, array in encoder_state.items()}
        return _unet_from_state(config.encoder, tensors, weights)
    if is_weights_file(weights):
        return _unet_from_file(config.encoder, Path(weights))
    _ensure_hub_weights(config.encoder, weights)
    return _unet(config.encoder, weights, in_channels=1)


def pretrained_encoders(
    pairs: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], EncoderState]:
    """On the driver: each (encoder, weights) pair's 3-channel encoder state, from smp's
    hub cache or a file, checked (one clear line if it cannot be had). "none" needs none.
    A model built from it equals one built from the hub or the file directly, random
    decoder included (the same random draws happen in the same order)."""
    found = {}
    for encoder, weights in dict.fromkeys(pairs):
        check_weights(TrainConfig(encoder=encoder, encoder_weights=weights))
        if not shippable(encoder, weights):
            continue
        if is_weights_file(weights):
            module = smp.encoders.get_encoder(encoder, in_channels=3, weights=None)
            _load_encoder(module, _read_weights_file(Path(weights)), encoder, weights)
        else:
            module = smp.encoders.get_encoder(encoder, in_channels=3, weights=weights)
        state = module.state_dict()
        found[(encoder, weights)] = {name: t.detach().cpu().numpy() for name, t in state.items()}
    return found


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
    return _unet_from_state(encoder, _read_weights_file(path), str(path))


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"{path}: no such weights file; pass an existing .safetensors/.pth file, "
            "an smp weights name, or --encoder-weights none"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: one clear line
        raise WeightsError(f"{path}: not a weights file ({_first_line(error)})") from None


def _unet_from_state(encoder: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """A 3-channel encoder state loaded, then its first convolution summed to one channel."""
    model = _unet(encoder, None, in_channels=3)
    _load_encoder(model.encoder, state, encoder, source)
    model.encoder.set_in_channels(1, pretrained=True)
    return model


def _load_encoder(
    module: nn.Module, state: Mapping[str, torch.Tensor], encoder: str, source: str
) -> None:
    try:
        module.load_state_dict(state)
    except Exception as error:  # a mismatched state dict: one clear line
        raise WeightsError(
            f"{source}: not a {encoder} encoder state dict ({_first_line(error)}); "
            "save `model.encoder.state_dict()` of a 3-channel smp encoder"
        ) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
