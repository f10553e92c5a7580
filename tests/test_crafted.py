"""Someone else's experiment folder (downloaded, possibly crafted): what its files say shows
as text in report.md, readers write only in their own folders, and a damaged file is a
warning or one `error:` line naming it. Built on test_report's hand-made experiment (no
Ray, no training), so these are fast."""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
from html import unescape
from pathlib import Path

import markdown as python_markdown  # Python-Markdown, installed with tensorboard
import numpy as np
import optuna
import pytest
import test_report
import torch

from results import layout
from results.errors import UserError
from results.escape import code, text
from results.experiment import load_experiment
from results.layout import PLOT_FILES
from results.report import write_report
from trainable.model import build_model
from trainable.preprocess import load_busi
from tuner.cli import main
from tuner.retrain import confirm_settings

handmade = test_report.handmade  # the fixture: five trials with known numbers, a study
BEST = "trial_002_bbbb"  # the hand-made experiment's best trial
HOSTILE = "`<img src=http://x/y.png>` ![x](http://x/z.png) [l](http://x) |cell| ``"


def _edit_settings(experiment: Path, **changes) -> None:
    """What a crafted settings file says: written as JSON, not through RunSettings."""
    path = experiment / layout.SETTINGS_FILE
    flat = json.loads(path.read_text())
    path.write_text(json.dumps({**flat, **changes}))


def _code_spans(markdown: str) -> tuple[list[str], str]:
    """CommonMark's code spans: (their contents, the text outside them). A span opens
    with a run of backticks and closes with the next run of the same length."""
    contents, outside, position = [], [], 0
    runs = list(re.finditer(r"`+", markdown))
    i = 0
    while i < len(runs):
        opening = runs[i]
        closing = next(
            (j for j in range(i + 1, len(runs)) if len(runs[j].group()) == len(opening.group())),
            None,
        )
        if closing is None:
            i += 1
            continue
        content = markdown[opening.end() : runs[closing].start()].replace("\n", " ")
        if content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        contents.append(content)
        outside.append(markdown[position : opening.start()])
        position = runs[closing].end()
        i = closing + 1
    outside.append(markdown[position:])
    return contents, "".join(outside)


def test_code_spans_and_text_show_any_string_as_itself():
    assert code("plain") == "`plain`"
    assert code("a`b") == "``a`b``"
    assert code("a``b`") == "``` a``b` ```"  # longer fence; padded: it ends with a backtick
    assert code("one\ntwo\x1b") == "`one\\ntwo\\x1b`"  # no line break: it would end a row
    for value in ("a`b", "a``b`", "` x `", HOSTILE):
        (content,), outside = _code_spans(f"before {code(value)} after")
        assert content == value and outside == "before  after"
    assert text("<img src=x>") == "&lt;img src=x&gt;"
    assert text("![a](b) [c](d)") == "&#33;&#91;a&#93;(b) &#91;c&#93;(d)"
    assert text("a|b `c` *d* _e_ f_g\\") == "a&#124;b &#96;c&#96; &#42;d&#42; &#95;e&#95; f_g&#92;"
    assert text("trial_002_bbbb") == "trial_002_bbbb"  # intraword: no emphasis, kept


@pytest.fixture
def crafted(handmade, tmp_path) -> Path:
    """The hand-made experiment as a crafted download: markup in its folder's name, its
    settings (name, data path), data.json, a trial's folder name, a searched value, an
    error message and the parts' names."""
    folder = tmp_path / f"download {HOSTILE.replace('/', '')}"
    shutil.copytree(handmade, folder)
    name = "hm<img src=x.png>![n](n.png)`"
    optuna.copy_study(
        from_study_name="handmade",
        from_storage=f"sqlite:///{folder / 'handmade.sqlite'}",
        to_storage=f"sqlite:///{folder / f'{name}.sqlite'}",
        to_study_name=name,
    )
    _edit_settings(folder, name=name, data=f"/gone/data {HOSTILE}")
    provenance = {"path": f"/data {HOSTILE}", "content_hash": "0f", "images": 39}
    (folder / layout.DATA_FILE).write_text(json.dumps({**provenance, "synthetic": False}))
    (folder / "trial_003_cccc").rename(folder / f"trial_003_{HOSTILE.replace('/', '')}")
    params = folder / BEST / layout.PARAMS_FILE
    searched = json.loads(params.read_text())
    params.write_text(json.dumps({**searched, "encoder": f"resnet18 {HOSTILE}"}))
    error = f"=1+1 boom {HOSTILE}"  # a formula to a spreadsheet
    (folder / "trial_004_dddd" / layout.ERROR_FILE).write_text(f"Traceback\n{error}\n")
    metrics_path = folder / "trial_001_aaaa" / layout.METRICS_FILE
    metrics = json.loads(metrics_path.read_text())
    metrics["protocol"]["counts"] = {f"train {HOSTILE}": 28, "test": 4}
    metrics_path.write_text(json.dumps(metrics))
    return folder


def test_strings_from_a_crafted_experiment_never_become_markup(crafted):
    paths = write_report(load_experiment(crafted))
    markdown = paths.markdown.read_text()
    spans, outside = _code_spans(markdown)
    # Folders by their names (never a local absolute path), code spans, each one whole.
    assert Path(f"/data {HOSTILE}").name in spans  # data.json's
    assert crafted.name in spans  # the folder itself
    assert str(crafted.parent) not in markdown and "/data " not in markdown
    # Outside the code spans: no HTML, no link, and no image but the report's own plots.
    assert "<img" not in outside and "](http" not in outside
    images = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", outside)
    assert images and set(images) <= set(PLOT_FILES)
    # Every table row has as many cells as its header: no cell was split open.
    for table in re.findall(r"(?:^\|.*\|$\n?)+", markdown, flags=re.MULTILINE):
        rows = table.strip().splitlines()
        assert len({row.count("|") for row in rows}) == 1, rows
    # A real renderer agrees: the only images are the plots, no link leads to the host,
    # and every string shows as itself.
    html = python_markdown.markdown(markdown, extensions=["tables"])
    assert set(re.findall(r"<img[^>]*src=\"([^\"]*)\"", html)) <= set(PLOT_FILES)
    assert not re.search(r"<a |<script|<iframe", html)
    shown = unescape(re.sub(r"<[^>]+>", "", html))
    for value in (
        "hm<img src=x.png>![n](n.png)`",  # the experiment's name
        Path(f"/gone/data {HOSTILE}").name,  # the settings' data folder, in a plot's note
        Path(f"/data {HOSTILE}").name,  # data.json's
        f"trial_003_{HOSTILE.replace('/', '')}",  # a trial's folder
        f"encoder=resnet18 {HOSTILE}",  # a searched value
        f"=1+1 boom {HOSTILE}",  # an error message
        f"28 train {HOSTILE}",  # a part's name
    ):
        assert value in shown, value
    # trials.csv: text a spreadsheet would run as a formula starts with a quote.
    with open(paths.trials_csv, newline="") as handle:
        errors = {row["trial"]: row["error"] for row in csv.DictReader(handle)}
    assert errors["trial_004_dddd"] == f"'=1+1 boom {HOSTILE}"
    assert errors["trial_001_aaaa"] == ""


def test_readers_use_their_own_cache_never_the_one_the_settings_name(
    handmade, synth_root, tmp_path, monkeypatch, capsys
):
    """A tampered cache_dir: report (its examples decode the data), evaluate and the
    settings confirm would train with all cache in the reader's $BUSI_TUNE_CACHE."""
    elsewhere = tmp_path / "elsewhere"
    reader_cache = tmp_path / "reader-cache"
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(reader_cache))
    _edit_settings(handmade, data=str(synth_root), cache_dir=str(elsewhere))
    experiment = load_experiment(handmade)
    assert experiment.settings.cache_dir is None

    write_report(experiment, read_images=functools.partial(load_busi, progress=False))
    assert len(list(reader_cache.glob("busi-*.npz"))) == 1  # decoded at 32 px, once
    # evaluate loads the best trial's model, decodes the data too, then finds no
    # split.json: one line naming it.
    config = next(t for t in experiment.trials if t.name == BEST).config
    torch.save(build_model(config).state_dict(), handmade / BEST / layout.MODEL_FILE)
    assert main(["evaluate", str(handmade)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert str(handmade / BEST / layout.SPLIT_FILE) in error
    assert not elsewhere.exists()
    settings = confirm_settings(experiment, 4, None, None, None)
    assert settings.cache_dir is None and settings.name == "handmade-confirm"


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"lr": "fast"}', '{"image_size": 33}', '{"colour": "red"}', "[1, 2]"],
)
def test_a_tampered_trial_config_is_a_warning_and_the_trial_keeps_its_values(
    handmade, damage, caplog, capsys
):
    """Non-JSON, a wrong type, an invalid or unknown key, not an object: the trial's config
    is rebuilt from the base config and its searched values, as the sweep built it."""
    config = handmade / BEST / layout.CONFIG_FILE
    config.write_text(damage)
    assert main(["report", str(handmade)]) == 0
    warnings = [r.getMessage() for r in caplog.records if str(config) in r.getMessage()]
    assert len(warnings) == 1 and ("not a valid config" in warnings[0] or "damaged" in warnings[0])
    best = load_experiment(handmade).best
    assert best.name == BEST and best.config.lr == 1e-3 and best.config.image_size == 32
    markdown = (handmade / "report" / "report.md").read_text()
    assert "0.7000 (-0.0680)" in markdown  # the best trial's Dice and its delta, as before
    assert (handmade / "report" / "roc_pr.png").is_file()  # its selection.npz was read


def test_other_damaged_trial_files_are_warnings_naming_them(handmade, caplog):
    """Each of these stopped `report` with a traceback."""
    damaged = {
        handmade / BEST / layout.PARAMS_FILE: '{"lr": [1]}',
        handmade / BEST / layout.SELECTION_FILE: "not a zip",
        handmade / "trial_001_aaaa" / layout.PLACEMENT_FILE: "[]\n",
        handmade / layout.DATA_FILE: '{"path": 1}',
    }
    for path, content in damaged.items():
        path.write_text(content)
    metrics = handmade / "trial_003_cccc" / layout.METRICS_FILE
    raw = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**raw, "test": {**raw["test"], "dice": "high"}}))
    escaping = handmade / "trial_005_eeee" / layout.METRICS_FILE
    escaping.write_text(json.dumps({**json.loads(escaping.read_text()), "models": ["../../x"]}))
    rows = handmade / "trial_001_aaaa" / layout.RESULT_FILE
    rows.write_text(rows.read_text() + '[1]\n{"epoch": "4"}\n')
    (handmade / "trial_x_y").mkdir()

    experiment = load_experiment(handmade)
    paths = write_report(experiment)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for path in (*damaged, metrics, escaping, rows, handmade / "trial_x_y"):
        assert str(path) in messages, path
    assert [t.number for t in experiment.trials] == [1, 2, 3, 4, 5]  # trial_x_y skipped
    trials = {t.name: t for t in experiment.trials}
    assert trials[BEST].params == {} and trials[BEST].selection() is None
    assert trials["trial_003_cccc"].selected is None
    assert trials["trial_005_eeee"].selected is None
    assert trials["trial_001_aaaa"].epochs_run == 3  # the damaged lines skipped
    assert trials["trial_001_aaaa"].device_time(None, None) == "—"
    assert experiment.provenance is None
    markdown = paths.markdown.read_text()
    assert "data: folder `data-that-is-gone` (no data.json)" in markdown
    assert "absent: the winner's trial has no selection.npz" in markdown


def test_damaged_settings_are_one_line_naming_them(handmade, capsys):
    for change in ({"folds": "3"}, {"base": {"lr": "fast"}}, {"space": "nope"}, {"x": 1}):
        original = (handmade / layout.SETTINGS_FILE).read_text()
        _edit_settings(handmade, **change)
        assert main(["report", str(handmade)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {handmade / layout.SETTINGS_FILE}: not the settings")
        assert error.count("\n") == 1
        (handmade / layout.SETTINGS_FILE).write_text(original)
    assert not (handmade / "report").exists()


def test_report_writes_only_inside_the_experiment(handmade, tmp_path, capsys):
    """A report/ folder or file that is a link in a downloaded experiment: never written
    through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.md").write_text("precious")
    (handmade / "report").symlink_to(outside)
    assert main(["report", str(handmade)]) == 2
    assert "a link or a file, not a folder" in capsys.readouterr().err
    assert [p.name for p in outside.iterdir()] == ["report.md"]
    assert (outside / "report.md").read_text() == "precious"

    (handmade / "report").unlink()
    (handmade / "report").mkdir()
    (handmade / "report" / "report.md").symlink_to(outside / "report.md")
    assert main(["report", str(handmade)]) == 0
    assert (outside / "report.md").read_text() == "precious"
    assert not (handmade / "report" / "report.md").is_symlink()
    assert "# Report: handmade" in (handmade / "report" / "report.md").read_text()


def test_selection_predictions_are_read_at_their_own_size(handmade):
    """A trial trained at another size than the evaluation's (the wide space searches
    image_size) has its test predictions at the evaluation size."""
    config = handmade / BEST / layout.CONFIG_FILE
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_size": 64}))
    selection = load_experiment(handmade).best.selection()
    assert selection.predictions.shape == (4, 32, 32)
    assert np.count_nonzero(selection.predictions[0]) == 12 * 12


def test_a_crafted_bucket_is_never_copied_outside_the_mirror(
    handmade, s3_storage, tmp_path, monkeypatch, caplog
):
    """An object store's keys may hold `..`: the key below, read back as `escaped.txt` at
    the bucket's root, would be copied four folders above the mirror, out of the cache."""
    import boto3

    from results import storage

    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "reader" / "cache"))
    location = storage.join(s3_storage, "a", "b", "handmade")
    storage.upload_folder(handmade, location)
    bucket = boto3.client("s3")
    key = "runs/a/b/handmade/../../../../escaped.txt"
    for name in (key, "escaped.txt"):
        bucket.put_object(Bucket="busi-tune", Key=name, Body=b"from the bucket")
    experiment = load_experiment(location)
    assert [t.name for t in experiment.trials] == [t.name for t in load_experiment(handmade).trials]
    assert not list(tmp_path.rglob("escaped.txt"))
    assert f"{s3_storage}/a/b/handmade/../../../../escaped.txt: leads out" in caplog.text
    with pytest.raises(UserError, match="leads out of the experiment"):
        storage.fetch(location, experiment.path, "trial_001_aaaa/../../../escaped.txt")


def test_evaluate_scores_the_part_the_trial_recorded_or_names_what_is_missing(
    handmade, synth_root, tmp_path, monkeypatch, capsys
):
    """The part's images come from the trial's split.json, never a split recomputed with
    today's grouping: names the data lacks are one line."""
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "cache"))
    _edit_settings(handmade, data=str(synth_root))
    experiment = load_experiment(handmade)
    config = next(t for t in experiment.trials if t.name == BEST).config
    torch.save(build_model(config).state_dict(), handmade / BEST / layout.MODEL_FILE)
    split = {"test": ["benign (1)", "malignant (2)", "normal (3)"], "validation": []}
    (handmade / BEST / layout.SPLIT_FILE).write_text(json.dumps(split))
    assert main(["evaluate", str(handmade), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    split["test"].append("benign (999)")
    (handmade / BEST / layout.SPLIT_FILE).write_text(json.dumps(split))
    assert main(["evaluate", str(handmade)]) == 2
    assert capsys.readouterr().err == (
        f"error: {synth_root}: lacks 1 of the 4 images of the trial's test part (e.g. "
        "'benign (999)'); pass the data it ran on\n"
    )
