"""The command line: every bad input is one line, no traceback, nothing written."""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from trainable.metrics import METRIC_KEYS
from tuner.cli import main

REPO = Path(__file__).resolve().parents[1]


def _png(path, size=(40, 30), mode="L"):
    Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).convert(mode).save(path)


def _broken(tmp_path, problem):
    """A tiny BUSI folder with one problem; returns (root, the file the error must name)."""
    root = tmp_path / "busi"
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
    _png(root / "benign" / "benign (1).png", mode="RGB")
    _png(root / "benign" / "benign (1)_mask.png", mode="1")
    named = root
    if problem == "missing folder":
        shutil.rmtree(root)
    elif problem == "no class folders":
        for cls in ("benign", "malignant", "normal"):
            shutil.rmtree(root / cls)
    elif problem == "image without mask":
        named = root / "benign" / "benign (2).png"
        _png(named, mode="RGB")
    elif problem == "mask without image":
        named = root / "benign" / "benign (3)_mask.png"
        _png(named, mode="1")
    elif problem == "size mismatch":
        named = root / "benign" / "benign (1)_mask.png"
        _png(named, size=(41, 30), mode="1")
    elif problem == "corrupt png":
        named = root / "benign" / "benign (1).png"
        named.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    elif problem == "empty dataset":
        for path in (root / "benign").iterdir():
            path.unlink()
    return root, named


def _listing(root):
    if not root.exists():
        return None
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


PROBLEMS = [
    "missing folder",
    "no class folders",
    "image without mask",
    "mask without image",
    "size mismatch",
    "corrupt png",
    "empty dataset",
]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_run_refuses_bad_data_with_one_line(problem, tmp_path, capsys):
    root, named = _broken(tmp_path, problem)
    before = _listing(root)
    storage = tmp_path / "runs"
    code = main(
        shlex.split(
            f"run --reference --data '{root}' --encoder resnet18 --encoder-weights none "
            f"--storage '{storage}' --name x --cache-dir '{tmp_path / 'cache'}'"
        )
    )
    err = capsys.readouterr().err
    assert code == 2
    # One error line (after any progress bar), no traceback.
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and err.count("error:") == 1
    assert "Traceback" not in err and str(named) in last_line
    assert _listing(root) == before
    assert not (storage / "x").exists()  # no half-made experiment left behind


@pytest.mark.parametrize("problem", PROBLEMS)
def test_data_check_lists_the_problem_and_exits_1(problem, tmp_path, capsys):
    root, named = _broken(tmp_path, problem)
    before = _listing(root)
    if problem == "missing folder":  # one error line, no empty table before it
        assert main(["data", "check", str(root)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and str(root) in captured.err
        return
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert str(named) in out and "Traceback" not in out
    assert _listing(root) == before


def test_data_check_of_a_good_folder_exits_0(synth_root, capsys):
    assert main(["data", "check", str(synth_root)]) == 0
    assert "usable" in capsys.readouterr().out


def test_data_synth_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "synthetic"
    assert (
        main(["data", "synth", str(target), "--benign", "3", "--malignant", "2", "--normal", "1"])
        == 0
    )
    before = _listing(target)
    assert main(["data", "synth", str(target)]) == 2
    assert "error:" in capsys.readouterr().err
    assert _listing(target) == before


def test_resume_of_a_missing_experiment_and_reuse_of_a_name(synth_root, tmp_path, capsys):
    common = shlex.split(
        f"--data '{synth_root}' --storage '{tmp_path}' --encoder resnet18 --encoder-weights none"
    )
    assert main(["run", *common, "--resume", "--name", "nothing"]) == 2
    assert "no experiment to resume" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("precious")
    assert main(["run", *common, "--name", "taken"]) == 2
    # Not an experiment: --resume would fail, so it is not advised.
    assert "exists and is not an experiment; choose another --name" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "precious"
    (tmp_path / "taken" / "busi_tune_settings.json").write_text("{}")
    assert main(["run", *common, "--name", "taken"]) == 2
    assert "exists; continue it with --resume" in capsys.readouterr().err


def test_a_name_is_one_folder_inside_storage(synth_root, tmp_path, capsys):
    storage = tmp_path / "runs"
    for name in ("../escape", "/abs/path", "a/b", ".."):
        assert main(["run", "--data", str(synth_root), "--storage", str(storage),
                     "--name", name]) == 2  # fmt: skip
        assert "one folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_abbreviations_are_refused_and_typos_get_a_suggestion(capsys):
    for argv, hint in (
        (["run", "--dem"], "did you mean --demo?"),
        (["run", "--data", "x", "--epoch", "2"], "did you mean --epochs?"),
        (["run", "--data", "x", "--trails", "2"], "did you mean --trials?"),
        (["rn"], "did you mean run?"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert hint in capsys.readouterr().err, argv


def test_an_argument_error_comes_back_before_ray_or_torch_load(tmp_path):
    """Measured in a fresh interpreter against one that does nothing: a bad flag is
    refused after parsing, not after importing Ray and torch (which take seconds)."""
    import time

    def seconds(*args):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, check=False)
        return time.perf_counter() - started

    baseline = min(seconds("-c", "pass") for _ in range(3))
    refused = min(seconds("-m", "tuner", "run", "--data", "x", "--image-size", "100")
                  for _ in range(3))  # fmt: skip
    assert refused < 1.0 + 5 * baseline, (refused, baseline)
    probe = "import sys, tuner.cli as c; c.main(['run', '--data', 'x', '--image-size', '100']); "
    probe += "print('torch' in sys.modules, 'ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr


@pytest.mark.parametrize("problem", ["no such folder", "no class folders"])
def test_a_wrong_data_path_is_one_line_before_weights_ray_or_torch(tmp_path, problem):
    """With default flags (pretrained weights, which a connected machine would download
    first): the path is named at once, and nothing heavy is imported."""
    data = tmp_path / "busi"
    if problem == "no class folders":
        data.mkdir()
    probe = (
        "import sys, tuner.cli as c; code = c.main(['run', '--data', sys.argv[1]]); "
        "print(code, 'torch' in sys.modules, 'ray' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(data)], cwd=REPO, capture_output=True, text=True
    )
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert done.stderr.startswith(f"error: {data}: {problem}") and done.stderr.count("\n") == 1


def test_a_flag_of_another_command_says_which_and_demo_refuses_data(capsys):
    for argv, hint in (
        (
            ["run", "--demo", "--json"],
            "--json is an option of `data check`, `evaluate`, not of this command",
        ),
        (["report", "x", "--trials", "3"], "--trials is an option of `run`, not of this command"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert capsys.readouterr().err.strip().endswith(hint), argv
    assert main(["run", "--demo", "--data", "elsewhere"]) == 2
    assert capsys.readouterr().err == (
        "error: run: --demo writes and uses its own synthetic data, so --data elsewhere would "
        "be ignored; drop --demo to run on that folder\n"
    )


def test_the_printed_resume_command_works_from_any_folder(tmp_path, monkeypatch):
    from results.config import TrainConfig
    from results.settings import RunSettings
    from tuner.experiment_folder import resume_command

    monkeypatch.chdir(tmp_path)
    settings = RunSettings(
        data=Path("busi data"), base=TrainConfig.reference(), storage="runs", name="s"
    )
    command = shlex.split(resume_command(settings))
    assert command[command.index("--data") + 1] == str(tmp_path / "busi data")
    assert command[command.index("--storage") + 1] == str(tmp_path / "runs")


def test_printed_commands_survive_the_shell(tmp_path):
    from results.config import TrainConfig
    from results.experiment import Experiment
    from results.settings import RunSettings
    from tuner.summary import summarise

    settings = RunSettings(
        data=tmp_path, base=TrainConfig.reference(), storage=str(tmp_path / "my runs"),
        name="my sweep; rm -rf x",
    )  # fmt: skip
    no_trials = Experiment(
        path=tmp_path, settings=settings, trials=(), best=None, reference=None,
        study_path=None, location=settings.experiment_dir,
    )  # fmt: skip
    text = summarise(settings, no_trials)
    report = next(line for line in text.splitlines() if line.startswith("report:"))
    assert shlex.split(report.split(":", 1)[1]) == ["python", "-m", "tuner", "report",
                                                     settings.experiment_dir]  # fmt: skip


def test_bad_flags_are_one_line(synth_root, tmp_path, capsys):
    base = ["run", "--data", str(synth_root), "--storage", str(tmp_path)]
    assert main([*base, "--image-size", "100"]) == 2
    assert "image_size=100" in capsys.readouterr().err
    assert main([*base, "--space", "nope"]) == 2
    assert "valid: reference, wide" in capsys.readouterr().err
    assert main([*base, "--encoder", "resnet18", "--encoder-weights", "/no/such.pth"]) == 2
    assert "/no/such.pth: no such weights file" in capsys.readouterr().err
    assert main([*base, "--address", "auto"]) == 2
    assert "needs storage every node can reach" in capsys.readouterr().err


def test_an_objective_on_the_test_part_is_refused_and_nothing_is_written(
    synth_root, tmp_path, capsys
):
    storage = tmp_path / "runs"
    for metric in ("test_dice", "heldout_dice", "nonsense", "selected_heldout_dice_per_image_sd"):
        assert (
            main(["run", "--data", str(synth_root), "--storage", str(storage), "--metric", metric])
            == 2
        )
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"--metric {metric}: not an objective" in error
        assert "selected_heldout_dice" in error and "best_combined_loss" in error
    assert not storage.exists()


def test_per_image_objectives_and_the_threshold_flag(synth_root, tmp_path, capsys):
    from tuner.cli import build_parser
    from tuner.commands import settings_from_args

    base = ["run", "--data", str(synth_root), "--storage", str(tmp_path / "runs")]

    def settings(*flags):
        return settings_from_args(build_parser().parse_args([*base, *flags]))

    assert settings("--metric", "selected_heldout_dice_per_image").mode == "max"
    assert settings("--metric", "selected_heldout_hd95").mode == "min"
    default, auto, fixed = (
        settings(),
        settings("--threshold", "auto"),
        settings("--threshold", "0.3"),
    )
    assert (default.base.threshold, default.choose_threshold) == (0.5, False)
    assert (auto.base.threshold, auto.choose_threshold) == (0.5, True)
    assert (fixed.base.threshold, fixed.choose_threshold) == (0.3, False)
    # The reference protocol has no validation part: auto would choose on the test part.
    assert main([*base, "--reference", "--threshold", "auto"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--threshold auto" in error and "--reference" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("folds", [8, 50])
def test_folds_the_data_cannot_hold_are_refused_before_ray_with_the_largest_that_works(
    folds, tmp_path, capsys
):
    """16 images: 12 in the training part, 4 without a lesion; at most 6 folds each hold
    a lesion image."""
    from trainable.synth import write_synthetic_busi

    write_synthetic_busi(tmp_path / "small", n_benign=8, n_malignant=4, n_normal=4)
    args = shlex.split(
        f"run --data '{tmp_path / 'small'}' --encoder resnet18 --encoder-weights none "
        f"--image-size 32 --folds {folds} --storage '{tmp_path / 'runs'}' --name cv "
        f"--cache-dir '{tmp_path / 'cache'}'"
    )
    assert main(args) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        f"error: --folds {folds}: the training part of this data cannot make {folds} "
        "validation folds that each hold a lesion image (groups stay whole, classes "
        "stratified); the most that do is 6"
    )
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


def test_a_cache_dir_that_cannot_be_written_is_one_line(synth_root, tmp_path, capsys):
    """A path under a file: refused for root too (chmod would not stop root)."""
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    args = shlex.split(
        f"run --data '{synth_root}' --encoder resnet18 --encoder-weights none --image-size 32 "
        f"--storage '{tmp_path / 'runs'}' --name c --cache-dir '{cache}'"
    )
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {cache}: the preprocessed-data cache cannot be written there (Not a "
        "directory); give a writable --cache-dir, or set BUSI_TUNE_CACHE"
    )
    assert not (tmp_path / "runs").exists()


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    flags = [line.split()[0] for line in help_text.splitlines() if line.strip().startswith("--")]
    assert len(flags) > 20
    # Every option but the switches' own help carries "(default: ...)".
    squashed = " ".join(help_text.split())
    for flag in ("--trials", "--epochs", "--storage", "--gpus-per-trial", "--split", "--seed"):
        after = squashed.split(flag, 2)[-1]
        assert "(default:" in after.split(" --")[0], flag


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_states_the_defaults_the_tuner_uses(capsys):
    """The defaults settled later (by the budget or the cluster) and the rules the help
    describes are read from where the tuner reads them, never typed again."""
    import inspect

    from results import settings
    from results.config import TrainConfig
    from trainable.synth import write_synthetic_busi
    from tuner.commands import DEMO

    epochs = TrainConfig.reference().epochs
    grace = settings.default_grace_period(epochs)
    run = _help(capsys, "run")
    assert (
        f"(default: {settings.GRACE_SHARE:.0%} of the budget: {grace} of {epochs} epochs; "
        f"--demo: {settings.default_grace_period(DEMO['epochs'])})"
    ) in run
    assert f"epoch, x{settings.REDUCTION_FACTOR}, ..." in run
    assert f"(default: {settings.GPU_FINAL_SEEDS} when trials run on GPUs, 0 on CPUs)" in run
    weight = TrainConfig.reference().selection_train_weight
    assert f"holds {weight:.0%} training loss" in run
    confirm = _help(capsys, "confirm")
    for text in (run, confirm):
        assert f"GPU trials, at most {settings.MAX_DEFAULT_CPUS})" in text
        assert f"with {settings.GPU_HEADROOM:.0%} free" in text
        assert f"one trial per {settings.CPUS_PER_GPU_TRIAL} of the node's CPUs" in text
    synth = _help(capsys, "data", "synth")
    written = inspect.signature(write_synthetic_busi).parameters
    for flag, parameter in (("benign", "n_benign"), ("malignant", "n_malignant"),
                            ("normal", "n_normal"), ("seed", "seed")):  # fmt: skip
        default = written[parameter].default
        assert re.search(rf"--{flag} \S+ [^(]*\(default: {default}\)", synth), flag


def run_cli(*args, cwd, env_extra=None, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_reference_run_on_real_busi(busi_root, tmp_path):
    """1 epoch at 32 px, small encoder, through `python -m tuner run --reference`."""
    args = shlex.split(
        f"run --reference --data '{busi_root}' --encoder resnet18 --encoder-weights none "
        f"--image-size 32 --epochs 1 --storage '{tmp_path / 'runs'}' --name ref"
    )
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "selection on the held-out = test part (reference protocol; optimistic)" in done.stdout
    assert "published" in done.stdout and "0.7680" in done.stdout
    (trial,) = [p for p in (tmp_path / "runs" / "ref").iterdir() if p.name.startswith("trial_")]
    metrics = json.loads((trial / "metrics.json").read_text())
    assert set(metrics["test"]) == set(METRIC_KEYS)
    in_pixels = {"hd95", "hd95_median"}
    assert all(0.0 <= metrics["test"][k] <= 1.0 for k in set(METRIC_KEYS) - in_pixels)
    assert all(0.0 <= metrics["test"][k] <= 32 * 2**0.5 for k in in_pixels)
    assert metrics["protocol"]["counts"] == {"train": 624, "validation": 0, "test": 156}
    assert metrics["selected_epoch"] == 1
    assert (trial / metrics["models"][0]).is_file()
    assert metrics["protocol"]["evaluation_size"] == 32
    split = json.loads((trial / "split.json").read_text())
    assert len(split["test"]) == 156 and split["policy"] == "random"
    config = json.loads((trial / "config.json").read_text())
    assert config["lr"] == 1e-4 and config["loss"] == "dice" and config["epochs"] == 1
    assert list(trial.glob("events.out.tfevents.*"))


def test_gpu_trials_get_the_cpus_their_node_can_give_them():
    from tuner.cluster import default_cpus_per_trial

    h200_node = {"CPU": 16.0, "GPU": 1.0}
    assert default_cpus_per_trial([h200_node], gpus=1.0) == 8  # 16 CPUs, at most 8
    assert default_cpus_per_trial([h200_node], gpus=0.25) == 4  # 4 trials share 16 CPUs
    eight_gpus = {"CPU": 96.0, "GPU": 8.0}
    assert default_cpus_per_trial([eight_gpus, h200_node], gpus=0.5) == 6  # the tightest
    assert default_cpus_per_trial([{"CPU": 2.0}], gpus=0.0) == 1  # CPU trials: one CPU
    assert default_cpus_per_trial([{"CPU": 2.0, "GPU": 4.0}], gpus=1.0) == 1  # never 0


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_exit_status_names_it(monkeypatch):
    """SIGTERM is handed to whatever stops a run on Ctrl-C (Tune's handler while it runs);
    the run then exits 130 after Ctrl-C, 143 after SIGTERM (128 + the signal)."""
    import signal

    from tuner import interrupts

    monkeypatch.setattr(interrupts, "_received", [])
    assert interrupts.exit_status() == 130
    stopped = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    try:
        interrupts._on_sigterm(signal.SIGTERM, None)  # while Tune runs: its handler
        assert stopped == [signal.SIGINT] and interrupts.exit_status() == 143
        signal.signal(signal.SIGINT, signal.default_int_handler)  # before Tune: Python's
        with pytest.raises(KeyboardInterrupt):
            interrupts._on_sigterm(signal.SIGTERM, None)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # no Python handler at all
        with pytest.raises(KeyboardInterrupt):
            interrupts._on_sigterm(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_every_run_flag_defaults_to_the_settings_it_sets():
    """A flag's default is read from RunSettings or TrainConfig.reference(), never typed
    again: each default the parser holds is the field's, and `run --data x` alone makes
    the settings' defaults (a flag left None is filled from them, or from --demo or
    --reference)."""
    import dataclasses

    from results.config import TrainConfig
    from results.settings import RunSettings
    from tuner.cli import build_parser
    from tuner.commands import settings_from_args

    parser = build_parser()
    (subcommands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = subcommands.choices["run"]
    run_fields = {f.name: f.default for f in dataclasses.fields(RunSettings)}
    config_fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    renamed = {"compile": "compiled", "reference": "reference_only"}
    not_settings = {"help", "demo", "threshold"}  # threshold: base.threshold or auto
    for action in run._actions:
        field = renamed.get(action.dest, action.dest)
        if field in run_fields:
            default = run_fields[field]
        elif field in config_fields:
            default = config_fields[field]
        else:
            assert action.dest in not_settings, f"--{action.dest}: which setting does it set?"
            continue
        assert action.default is None or action.default == default, action.dest
    settings = settings_from_args(parser.parse_args(["run", "--data", "x"]))
    made = RunSettings(data=Path("x"), base=TrainConfig.reference(), name=settings.name)
    assert settings == made


def test_the_inference_commands_defaults_are_their_functions():
    """evaluate's and predict's --batch-size and export's --format, read by the parser
    from tuner.inference (which imports no torch), are the functions' own defaults."""
    import inspect

    from tuner.cli import build_parser
    from tuner.inference.evaluate import evaluate_trial
    from tuner.inference.export import export
    from tuner.inference.predict import predict_folder

    parser = build_parser()

    def default(function, name: str):
        return inspect.signature(function).parameters[name].default

    assert parser.parse_args(["evaluate", "x"]).batch_size == default(evaluate_trial, "batch_size")
    predict = parser.parse_args(["predict", "x", "--images", "i", "--out", "o"])
    assert predict.batch_size == default(predict_folder, "batch_size")
    assert parser.parse_args(["export", "x", "--out", "m.pt"]).format == default(export, "fmt")


def test_a_readers_warning_is_a_warning_line_as_the_commands_own(tmp_path):
    """Library code logs; without -v its warnings read as the commands' own `warning:`
    lines, not as `WARNING results.experiment: …`."""
    from test_inference_errors import TRIAL, make_experiment

    from results.layout import OUTCOME_FILE

    folder = make_experiment(tmp_path)
    damaged = folder / TRIAL / OUTCOME_FILE
    damaged.write_text("{")
    done = run_cli(
        "report", str(folder), cwd=tmp_path, env_extra={"BUSI_TUNE_CACHE": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    assert f"warning: {damaged}: damaged (" in done.stderr
    assert "WARNING" not in done.stderr


def test_a_wrong_choice_lists_the_choices_as_typed(capsys):
    for argv in (["evaluate", "x", "--tta", "flp"], ["evaluate", "x", "--part", "tst"]):
        with pytest.raises(SystemExit):
            main(argv)
    err = capsys.readouterr().err
    assert "(choose from 'none', 'flip')" in err and "(choose from 'validation', 'test')" in err
