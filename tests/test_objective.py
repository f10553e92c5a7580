"""The test part decides nothing: two sweeps on datasets that differ only in the test
part's masks make identical decisions, and `evaluate` reproduces what trials recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from results import keys
from results.layout import METRICS_FILE
from trainable.metrics import METRIC_KEYS
from tuner.cli import main

pytestmark = pytest.mark.slow


def _trials(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.name.startswith("trial_"))


def _rows(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]


def test_changing_only_test_masks_changes_no_decision(twin_sweeps, twin_base):
    original, altered = twin_sweeps
    pairs = list(zip(_trials(original), _trials(altered), strict=True))
    assert len(pairs) == 4
    decided = [keys.EPOCH, keys.BEST_EPOCH, keys.COMBINED_LOSS, *keys.HELDOUT_METRICS]
    decided += [keys.SELECTED_LOSS, *keys.SELECTED_METRICS, keys.TRAIN_LOSS]
    epochs_run = []
    test_differs = False
    for a, b in pairs:
        assert (a / "params.json").read_text() == (b / "params.json").read_text()
        rows_a, rows_b = _rows(a), _rows(b)
        assert len(rows_a) == len(rows_b)  # the same early stops
        epochs_run.append(len(rows_a))
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            assert {k: row_a[k] for k in decided} == pytest.approx(
                {k: row_b[k] for k in decided}, nan_ok=True
            )
            test_differs |= row_a[keys.on_test("dice")] != row_b[keys.on_test("dice")]
        selected_a = json.loads((a / METRICS_FILE).read_text())
        selected_b = json.loads((b / METRICS_FILE).read_text())
        assert selected_a["selected_epoch"] == selected_b["selected_epoch"]
        assert selected_a["threshold"] == selected_b["threshold"] == 0.5
        assert set(selected_a["heldout"]) == set(selected_a["test"]) | {"loss"}
        assert selected_a["heldout"] == pytest.approx(selected_b["heldout"], nan_ok=True)
    assert test_differs  # the test part really changed, and only the test_* values saw it
    assert min(epochs_run) < twin_base.epochs == max(epochs_run), epochs_run  # ASHA decided


def _evaluated(capsys, *args: str) -> dict:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_reproduces_the_recorded_metrics_at_any_batch_size(twin_sweeps, capsys):
    experiment = twin_sweeps[0]
    trial = _trials(experiment)[0]
    recorded = json.loads((trial / METRICS_FILE).read_text())
    expected = {
        "validation": recorded["heldout"],
        "test": {"loss": recorded[keys.TEST_LOSS], **recorded["test"]},
    }
    for part, values in expected.items():
        for batch_size in ("1", "7"):
            got = _evaluated(
                capsys, str(experiment), "--trial", trial.name, "--part", part,
                "--batch-size", batch_size,
            )  # fmt: skip
            assert got["part"] == part and got["trial"] == trial.name
            assert got["tta"] == "none" and got["threshold"] == recorded["threshold"] == 0.5
            for key in ("loss", *METRIC_KEYS):
                assert got[key] == pytest.approx(values[key], abs=1e-5, nan_ok=True), key
    # The default is the best trial on the test part; --data scores a whole other folder.
    best = _evaluated(capsys, str(experiment))
    assert best["part"] == "test" and best["images"] == recorded["protocol"]["counts"]["test"]
    other = _evaluated(
        capsys, str(experiment), "--data", str(twin_sweeps[1].parents[1] / "altered")
    )
    assert other["images"] == 44 and 0.0 <= other["dice"] <= 1.0


def test_evaluate_scores_flip_tta_and_an_ensemble_as_predict_offers_them(twin_sweeps, capsys):
    experiment = str(twin_sweeps[0])
    plain = _evaluated(capsys, experiment)
    flipped = _evaluated(capsys, experiment, "--tta", "flip")
    ensemble = _evaluated(capsys, experiment, "--ensemble", "2")
    assert flipped["tta"] == "flip" and flipped["models"] == plain["models"] == [plain["trial"]]
    assert len(ensemble["models"]) == 2 and ensemble["models"][0] == plain["trial"]
    for result in (flipped, ensemble):  # other probabilities, valid metrics
        assert result["images"] == plain["images"] and result["threshold"] == 0.5
        assert result["loss"] != pytest.approx(plain["loss"], abs=1e-6)
        assert all(0.0 <= result[k] <= 1.0 for k in ("loss", "dice", "dice_per_image", "iou"))
        for hd95 in (result[keys.HD95], result[keys.HD95_MEDIAN]):
            assert 0.0 <= hd95 <= 64 * 2**0.5  # at most the diagonal at 64 px
    assert main(["evaluate", experiment, "--tta", "flip"]) == 0
    text = capsys.readouterr().out
    assert "with flip TTA" in text and "recorded (one model, no TTA)" in text
    assert "hd95_median" in text and "dice_per_image_sd" in text
    assert main(["evaluate", experiment, "--trial", "trial_000", "--ensemble", "2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_evaluate_refuses_an_unknown_trial_in_one_line(twin_sweeps, capsys):
    assert main(["evaluate", str(twin_sweeps[0]), "--trial", "trial_099"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such trial" in error and "trial_001" in error
