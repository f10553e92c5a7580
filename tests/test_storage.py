"""results.storage against a real S3 API (moto's server on localhost) and a local folder:
the same calls, the same answers."""

from __future__ import annotations

import dataclasses
import shutil
import time

import pytest

from results import storage
from results.errors import UserError


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_storage")


def test_files_are_written_read_listed_and_deleted_alike(place):
    exp = storage.join(place, "exp")
    assert not storage.exists(exp) and storage.read_bytes(storage.join(exp, "a.json")) is None
    storage.write_bytes(storage.join(exp, "a.json"), b"{}")
    storage.write_bytes(storage.join(exp, "trial_000_x", "model.pt"), b"12345")
    assert storage.exists(exp) and storage.is_file(storage.join(exp, "a.json"))
    assert not storage.is_file(exp)
    assert storage.read_bytes(storage.join(exp, "a.json")) == b"{}"
    assert storage.size(storage.join(exp, "trial_000_x", "model.pt")) == 5
    assert set(storage.list_files(exp)) == {"a.json", "trial_000_x/model.pt"}
    assert set(storage.list_files(exp, recursive=False)) == {"a.json"}
    storage.delete_dir(storage.join(exp, "trial_000_x"))
    assert set(storage.list_files(exp)) == {"a.json"}


def test_a_mirror_copies_what_readers_need_and_follows_changes(s3_storage, tmp_path, monkeypatch):
    monkeypatch.setenv("BUSI_TUNE_CACHE", str(tmp_path / "cache"))
    exp = storage.join(s3_storage, "exp")
    files = {
        "busi_tune_settings.json": b"{}",
        "trial_000_x/result.json": b"1\n",
        "trial_000_x/model.pt": b"weights",
        "trial_000_x/state/epoch_0002.pt": b"state",
        "trial_000_x/checkpoint_000001/state.json": b"{}",
        "trial_000_x/events.out.tfevents.1.host": b"tb",
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(exp, name), data)
    local = storage.mirror(exp, "busi_tune_settings.json")
    assert local.name == "exp" and local.is_relative_to(tmp_path / "cache")
    copied = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert copied == {"busi_tune_settings.json", "trial_000_x/result.json"}

    weights = storage.fetch(exp, local, "trial_000_x/model.pt")  # on demand only
    assert weights.read_bytes() == b"weights"
    assert not storage.fetch(exp, local, "trial_000_x/missing.pt").exists()

    time.sleep(1.1)  # a rewrite of the same size has another modification time
    storage.write_bytes(storage.join(exp, "trial_000_x/result.json"), b"2\n")  # same size
    storage.delete_dir(storage.join(exp, "trial_000_x", "state"))
    storage.write_bytes(storage.join(exp, "busi_tune_settings.json"), b"[]")
    storage.mirror(exp, "busi_tune_settings.json")
    assert (local / "trial_000_x/result.json").read_bytes() == b"2\n"
    assert (local / "busi_tune_settings.json").read_bytes() == b"[]"

    storage.delete_dir(storage.join(exp, "trial_000_x"))
    storage.mirror(exp, "busi_tune_settings.json")
    assert not (local / "trial_000_x").exists()  # gone remotely, gone here, weights too

    with pytest.raises(UserError, match="not an experiment"):  # not a whole storage
        storage.mirror(s3_storage, "busi_tune_settings.json")


def test_a_missing_bucket_is_one_line_naming_it(s3_storage):
    where = "s3://no-such-bucket-here/runs/exp/a.json"
    with pytest.raises(UserError) as error:
        storage.write_bytes(where, b"{}")
    message = str(error.value)
    assert message.startswith(f"{where}: the storage cannot be reached (")
    assert "AWS_ENDPOINT_URL" in message and "\n" not in message


def test_an_experiment_on_s3_is_refused_or_resumed_as_a_local_one(s3_storage, synth_root, tmp_path):
    """Before Ray starts: a name that exists in the bucket needs --resume, a name that
    does not cannot be resumed, and a resumed run takes the bucket's saved settings."""
    from results.config import TrainConfig
    from results.layout import DATA_FILE, SETTINGS_FILE
    from results.records import save_settings
    from results.settings import RunSettings
    from tuner.experiment_folder import data_provenance, resolve_settings

    base = TrainConfig.reference().replace(encoder="resnet18", encoder_weights="none")
    settings = RunSettings(data=synth_root, base=base, storage=s3_storage, name="taken")
    assert resolve_settings(settings) == settings  # a new name
    saved = dataclasses.replace(settings, trials=7)
    save_settings(saved, storage.join(settings.experiment_dir, SETTINGS_FILE))
    with pytest.raises(UserError, match="an experiment of that name exists"):
        resolve_settings(settings)
    resumed = resolve_settings(
        RunSettings(data=synth_root, base=base, storage=s3_storage, name="taken", resume=True)
    )
    assert resumed.trials == 7 and resumed.resume and resumed.storage == s3_storage
    assert resumed.data == synth_root  # the saved data, --data not given

    # --data on resume: the same data elsewhere (another machine's mount) is accepted by
    # its content; other data is refused.
    provenance = data_provenance(synth_root).to_text().encode()
    storage.write_bytes(storage.join(settings.experiment_dir, DATA_FILE), provenance)
    elsewhere = tmp_path / "mounted" / "busi"
    shutil.copytree(synth_root, elsewhere)
    again = dict(base=base, storage=s3_storage, name="taken", resume=True)
    assert resolve_settings(RunSettings(data=elsewhere, **again)).data == elsewhere
    next(elsewhere.glob("benign/*_mask.png")).write_bytes(b"changed")
    with pytest.raises(UserError, match="not the data .* ran on"):
        resolve_settings(RunSettings(data=elsewhere, **again))
    storage.write_bytes(storage.join(settings.experiment_dir, DATA_FILE), b"{cut sh")
    with pytest.raises(UserError, match="data.json: missing or damaged"):
        resolve_settings(RunSettings(data=elsewhere, **again))
    with pytest.raises(UserError, match="no experiment to resume"):
        resolve_settings(
            RunSettings(data=synth_root, base=base, storage=s3_storage, name="other", resume=True)
        )
    storage.write_bytes(storage.join(s3_storage, "stray", "x.txt"), b"")
    with pytest.raises(UserError, match="exists and is not an experiment"):
        resolve_settings(RunSettings(data=synth_root, base=base, storage=s3_storage, name="stray"))
