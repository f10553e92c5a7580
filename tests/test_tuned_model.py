"""A trial's tuned model comes from one function, `load_tuned_model`, which every inference
command uses: it holds the weights the trial saved, one network per fold. A hand-made
experiment (no Ray, no training), so these are fast."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import torch
from test_inference_errors import TRIAL, make_experiment

from results import layout
from results.experiment import load_experiment
from tuner.inference.model import load_tuned_model, pick_trial

INFERENCE = Path(__file__).resolve().parents[1] / "tuner" / "inference"


def _trained(state: dict[str, torch.Tensor], step: float) -> dict[str, torch.Tensor]:
    """Weights no freshly built network has: every float tensor moved by `step`."""
    return {k: v + step if v.is_floating_point() else v for k, v in state.items()}


def _same(loaded: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> bool:
    return loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_the_tuned_model_holds_the_weights_the_trial_saved(tmp_path):
    folder = make_experiment(tmp_path)
    model_file = folder / TRIAL / layout.MODEL_FILE
    saved = _trained(torch.load(model_file, weights_only=True), 0.25)
    torch.save(saved, model_file)
    experiment = load_experiment(folder)
    tuned = load_tuned_model(experiment, pick_trial(experiment, None))
    assert tuned.trial.name == TRIAL
    (network,) = tuned.networks
    assert _same(network.state_dict(), saved)
    assert next(network.parameters()).device == torch.device("cpu")


def test_a_cross_validated_trial_is_one_network_per_fold_in_fold_order(tmp_path):
    folder = make_experiment(tmp_path)
    trial = folder / TRIAL
    state = torch.load(trial / layout.MODEL_FILE, weights_only=True)
    (trial / layout.MODEL_FILE).unlink()
    folds = layout.model_files(3)
    saved = [_trained(state, 0.1 * (fold + 1)) for fold in range(3)]
    for name, weights in zip(folds, saved, strict=True):
        torch.save(weights, trial / name)
    metrics = json.loads((trial / layout.METRICS_FILE).read_text())
    (trial / layout.METRICS_FILE).write_text(json.dumps({**metrics, "models": folds}))
    experiment = load_experiment(folder)
    tuned = load_tuned_model(experiment, pick_trial(experiment, TRIAL))
    assert len(tuned.networks) == 3
    assert all(_same(n.state_dict(), s) for n, s in zip(tuned.networks, saved, strict=True))


def test_no_other_inference_module_builds_or_loads_a_model():
    """evaluate, predict (the segmenter) and export get a trial's model from
    load_tuned_model alone: none of them builds a network or reads weights itself."""
    loaders = {"build_model", "load_state_dict", "MODEL_FILE", "FOLD_MODEL_FILE"}
    found = []
    for path in sorted(INFERENCE.glob("*.py")):
        if path.name == "model.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
            if isinstance(node, ast.Attribute) and name == "load":
                name = f"{ast.unparse(node.value)}.load"  # torch.load
            if name in loaders or name == "torch.load":
                found.append(f"{path.name}:{node.lineno} {name}")
    assert found == []
