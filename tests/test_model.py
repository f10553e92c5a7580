from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from results.errors import WeightsError
from trainable.model import build_loss, build_model, check_weights, pretrained_encoders


def _first_conv(module):
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_and_sums_rgb_into_one_channel(tiny_config, tmp_path, suffix):
    torch.manual_seed(1)
    donor = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1).encoder
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_model(tiny_config.replace(encoder_weights=str(path)))
    conv = _first_conv(model.encoder)
    assert conv.in_channels == 1
    assert torch.allclose(conv.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_wrong_weights_file_is_one_clear_error(tiny_config, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="other.safetensors: not a resnet18 encoder"):
        build_model(tiny_config.replace(encoder_weights=str(path)))
    with pytest.raises(WeightsError, match="no such weights file"):
        check_weights(tiny_config.replace(encoder_weights=str(tmp_path / "missing.pth")))


def _offline_hub(monkeypatch, cache: Path) -> None:
    """No network; the Hugging Face hub cache is `cache`."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))


def test_offline_without_cached_weights_says_how_to_fix(tiny_config, tmp_path, monkeypatch):
    _offline_hub(monkeypatch, tmp_path / "empty-hf-home")
    with pytest.raises(WeightsError) as error:
        check_weights(tiny_config.replace(encoder_weights="imagenet"))
    message = str(error.value)
    assert "smp-hub/resnet18.imagenet" in message and "--encoder-weights none" in message
    assert "\n" not in message


def test_unknown_encoder_or_weights_name(tiny_config):
    with pytest.raises(WeightsError, match="unknown encoder 'resnet7'"):
        check_weights(tiny_config.replace(encoder="resnet7"))
    with pytest.raises(WeightsError, match="no 'instagram' weights for resnet18"):
        check_weights(tiny_config.replace(encoder_weights="instagram"))


def test_reference_model_is_a_one_channel_resnext101_unet():
    from results.config import TrainConfig

    config = TrainConfig.reference().replace(encoder_weights="none")
    model = build_model(config)
    assert _first_conv(model.encoder).in_channels == 1
    assert 200e6 < sum(p.numel() for p in model.parameters()) < 202e6  # 201 M parameters


def test_dice_loss_is_the_reference_and_combinations_add():
    logits = torch.tensor([[[[4.0, -4.0], [4.0, -4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    dice = build_loss("dice")(logits, target).item()
    assert 0 < dice < 0.05
    assert build_loss("dice_bce")(logits, target).item() > dice
    assert build_loss("dice_focal")(logits, target).item() > dice


def test_a_worker_without_the_hub_trains_from_the_drivers_weights(
    tiny_config, tmp_path, monkeypatch
):
    """The driver reads smp's hub cache once; a node without it (offline, empty cache)
    builds exactly the model it would have built from the hub, random decoder included."""
    hub = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo = f"models--{hub['repo_id'].replace('/', '--')}"
    snapshot = tmp_path / "hub" / repo / "snapshots" / hub["revision"]
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    save_file(
        smp.encoders.get_encoder("resnet18").state_dict(), str(snapshot / "model.safetensors")
    )
    (snapshot / "config.json").write_text("{}")
    config = tiny_config.replace(encoder_weights="imagenet")

    _offline_hub(monkeypatch, tmp_path / "hub")  # the driver, with the hub's files
    pretrained = pretrained_encoders([("resnet18", "imagenet"), ("resnet18", "none")])
    assert list(pretrained) == [("resnet18", "imagenet")]
    torch.manual_seed(0)
    from_hub = build_model(config).state_dict()

    _offline_hub(monkeypatch, tmp_path / "empty")  # a worker node, without them
    with pytest.raises(WeightsError, match="cannot get resnet18/imagenet"):
        build_model(config)
    torch.manual_seed(0)
    shipped = build_model(config, pretrained[("resnet18", "imagenet")]).state_dict()
    assert shipped.keys() == from_hub.keys()
    assert all(torch.equal(shipped[k], from_hub[k]) for k in from_hub)
    first_conv = from_hub["encoder.conv1.weight"]
    assert first_conv.shape[1] == 1 and first_conv.abs().sum() > 0
