"""Typed records: what each file of an experiment holds, with its one writer and reader.

Every record is written with a `format` number. A reader takes its own format and the
files written before formats existed (format 0, read as they were written: experiments
made before this module still report, resume and evaluate); a newer format is refused in
one line that says to upgrade. The one exception is a confirmation (confirm.json,
final.json), which carried a format from the start: its format 1 used another protocol,
is not read, and is left out of the report with a warning. File names are in
`results.layout`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from results import keys, storage
from results.compare import COMPARED
from results.config import TrainConfig
from results.errors import UserError
from results.intervals import Interval
from results.layout import EXPORT_FORMATS, METRICS_FILE
from results.settings import RunSettings, Scheduler, SplitPolicy

FORMAT = "format"
# Each record's format, raised when what it holds changes (a reader keeps reading the
# older ones). 0: files written before records carried a format.
SETTINGS_FORMAT = 1
SELECTED_FORMAT = 1
SELECTION_ARRAYS_FORMAT = 1
PROVENANCE_FORMAT = 1
FAILURE_FORMAT = 1
POINTER_FORMAT = 1
PLACEMENT_FORMAT = 1
OUTCOME_FORMAT = 1
SPLIT_FORMAT = 1
CONFIG_FORMAT = 1
ORIGIN_FORMAT = 1
# 1: paired by seed, images resampled singly, no primary endpoint (not read).
CONFIRMATION_FORMAT = 2
# 0: the card's "format" named the runtime ("torchscript" or "onnx"), now "runtime".
MODEL_CARD_FORMAT = 1


class NewerFormatError(UserError):
    """A record written by a newer busi-tune than this one. Not a ValueError: a reader
    that calls a ValueError damage (and leaves the file out) lets this one through."""


def stamped(record_format: int, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a record: its format first, then what it holds."""
    return {FORMAT: record_format, **body}


def unstamped(raw: Any, newest: int, path: str | Path) -> tuple[int, dict[str, Any]]:
    """A record's format (0 before formats) and its body; a newer format is refused, and
    anything but a JSON object is a ValueError for the caller to call damaged."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    body = dict(raw)
    return checked_format(body.pop(FORMAT, 0), newest, path), body


def checked_format(found: Any, newest: int, path: str | Path) -> int:
    """A record's format number; a newer one is refused, anything else is a ValueError."""
    if not is_integer(found) or found < 0:
        raise ValueError(f"format {reprlib.repr(found)} is not a format number")
    if found > newest:
        raise NewerFormatError(
            f"{path}: format {found}, written by a newer busi-tune (this one reads up to "
            f"{newest}); upgrade busi-tune to read it"
        )
    return found


def save_settings(settings: RunSettings, path: str | Path) -> None:
    """Paths saved absolute, so resume, report and evaluate work from any folder."""
    flat = dataclasses.asdict(settings)
    flat["base"] = settings.base.to_flat()
    flat["data"] = str(settings.data.resolve())
    flat["cache_dir"] = str(settings.cache_dir.resolve()) if settings.cache_dir else None
    text = json.dumps(stamped(SETTINGS_FORMAT, flat), indent=2, default=str) + "\n"
    storage.write_bytes(path, text.encode())


def load_settings(path: str | Path) -> RunSettings:
    raw = storage.read_bytes(path)
    if raw is None:
        raise UserError(f"{path}: no such file; give an experiment folder <storage>/<name>")
    try:
        flat = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(
            f"{path}: damaged (empty or cut short, e.g. by a full disk); the experiment's "
            "settings are lost: start a new experiment with another --name"
        ) from None
    try:
        return _settings(*unstamped(flat, SETTINGS_FORMAT, path))
    except NewerFormatError:
        raise
    except KeyError as error:
        reason = f"no {error}"
    except (TypeError, ValueError, UserError) as error:
        reason = str(error)
    raise damaged_settings(path, reason)


def damaged_settings(path: str | Path, reason: str) -> UserError:
    return UserError(
        f"{path}: not the settings of an experiment ({reason}); the folder is damaged or "
        "was edited: restore it from a copy, or start a new experiment"
    )


def _settings(record_format: int, flat: dict[str, Any]) -> RunSettings:
    """RunSettings from the saved JSON, every value of the type it is declared with."""
    if record_format == 0:
        # Experiments from before the objective's direction followed its metric saved a
        # mode; those from before --conflicts trained and scored every image.
        flat.pop("mode", None)
        flat.setdefault("conflicts", "keep")
    problem = type_problem(RunSettings, flat) or type_problem(TrainConfig, flat["base"])
    if problem:
        raise ValueError(problem)
    flat["base"] = TrainConfig.from_flat(flat["base"])
    flat["data"] = Path(flat["data"])
    flat["cache_dir"] = Path(flat["cache_dir"]) if flat.get("cache_dir") else None
    flat["split"] = SplitPolicy(flat["split"])
    flat["scheduler"] = Scheduler(flat["scheduler"])
    return RunSettings(**flat)


def type_problem(cls: type, flat: Any) -> str | None:
    """What in `flat`, a dataclass's fields read from a JSON file, would not build `cls`:
    a key it does not have, or a value not of its field's type (a path or an enum is saved
    as a string); None when nothing. A file from elsewhere can hold anything."""
    if not isinstance(flat, dict):
        return f"{reprlib.repr(flat)} is not a JSON object"
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(key) for key in set(flat) - set(hints))
    if unknown:
        return f"unknown keys {reprlib.repr(unknown)}"
    for key, value in flat.items():
        options = typing.get_args(hints[key]) if _is_union(hints[key]) else (hints[key],)
        if not any(_fits(value, option) for option in options):
            names = " or ".join(getattr(option, "__name__", str(option)) for option in options)
            return f"{key}={reprlib.repr(value)} is not {names}"
    return None


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _fits(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, Path) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return isinstance(value, str)
    return isinstance(value, dict)  # a nested dataclass (RunSettings.base), checked apart


@dataclass(frozen=True)
class FoldObjective:
    """A cross-validated trial's objective: its value on each fold, their mean (what the
    sweep ranks) and sample standard deviation; metrics.json's "objective"."""

    metric: str
    per_fold: tuple[float, ...]
    mean: float
    std: float

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "per_fold": list(self.per_fold)}

    @classmethod
    def from_json(cls, raw: Any) -> FoldObjective:
        """Raises KeyError, TypeError or ValueError for one that is not."""
        if not isinstance(raw, dict):
            raise TypeError("objective is not an object")
        values = raw["per_fold"]
        if not isinstance(values, list) or not all(is_number(v) for v in values):
            raise TypeError("objective's per_fold is not a list of numbers")
        if not (is_number(raw["mean"]) and is_number(raw["std"])):
            raise TypeError("objective's mean or std is not a number")
        return cls(str(raw["metric"]), tuple(values), float(raw["mean"]), float(raw["std"]))


@dataclass(frozen=True)
class Selected:
    """metrics.json: the selected epoch and its test metrics, with the protocol behind them."""

    epoch: int
    selection: str  # which part chose the epoch: validation (honest) or test (optimistic)
    split: str
    split_seed: int
    counts: dict[str, int]
    combined_loss: float
    test: dict[str, float]  # "loss" (the test Dice loss) and the metric keys
    # Cross-validation: the objective per fold, its mean and std (None with one split).
    folds: FoldObjective | None = None
    models: tuple[str, ...] = ()  # the selected weights' file names in the trial folder
    heldout: dict[str, float] | None = None  # "loss" and metrics on the held-out part
    # The selected model's decision threshold (None in files from before it was recorded:
    # the config's); chosen on the validation part under --threshold auto.
    threshold: float | None = None
    # The protocol's rules in words, and each fold's own selection (cross-validation:
    # its epoch, threshold and metrics, written for people, read by no command).
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_fold: tuple[dict[str, Any], ...] = ()

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol behind the numbers, as the file holds it."""
        return {
            "selection": self.selection,
            **self.rules,
            "split": self.split,
            "split_seed": self.split_seed,
            "counts": self.counts,
        }

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object, as `from_json` reads it."""
        test = dict(self.test)
        body: dict[str, Any] = {
            "protocol": self.protocol,
            "selected_epoch": self.epoch,
            "threshold": self.threshold,
            "models": list(self.models),
            keys.COMBINED_LOSS: self.combined_loss,
            "heldout": self.heldout,
            keys.TEST_LOSS: test.pop(keys.LOSS),
            "test": test,
        }
        if self.folds is not None:
            body["objective"] = self.folds.to_json()
            body["folds"] = list(self.per_fold)
        return stamped(SELECTED_FORMAT, body)

    def to_text(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> Selected:
        """Raises KeyError, TypeError or ValueError (JSON's included) for a file that is
        not one."""
        return cls.from_json(json.loads(text), path)

    @classmethod
    def from_json(cls, raw: Any, path: str | Path = METRICS_FILE) -> Selected:
        """Raises KeyError, TypeError or ValueError for a file that is not one."""
        _, raw = unstamped(raw, SELECTED_FORMAT, path)
        protocol = dict(raw["protocol"])
        named = {"selection", "split", "split_seed", "counts"}
        selected = cls(
            epoch=raw["selected_epoch"],
            selection=protocol["selection"],
            split=protocol["split"],
            split_seed=protocol["split_seed"],
            counts=protocol["counts"],
            combined_loss=raw[keys.COMBINED_LOSS],
            test={keys.LOSS: raw[keys.TEST_LOSS], **raw["test"]},
            folds=None
            if raw.get("objective") is None
            else FoldObjective.from_json(raw["objective"]),
            models=tuple(_list(raw.get("models", []))),
            heldout=raw.get("heldout"),
            threshold=raw.get("threshold"),
            rules={k: v for k, v in protocol.items() if k not in named},
            per_fold=tuple(raw.get("folds", ())),
        )
        if problem := selected.problem():
            raise ValueError(problem)
        return selected

    def problem(self) -> str | None:
        """What is not of the type the reader relies on, or None: a file from elsewhere can
        hold anything, and a model's name must not lead out of its trial folder."""
        checks = {
            "selected_epoch": is_integer(self.epoch),
            "protocol": all(isinstance(v, str) for v in (self.selection, self.split))
            and is_integer(self.split_seed)
            and _mapping(self.counts, is_integer),
            "combined_loss": is_number(self.combined_loss),
            "test": _mapping(self.test, is_number) and all(m in self.test for m in COMPARED),
            "models": all(_file_name(name) for name in self.models),
            "heldout": self.heldout is None or _mapping(self.heldout, is_number),
            "threshold": self.threshold is None or is_number(self.threshold),
        }
        wrong = [key for key, ok in checks.items() if not ok]
        return f"{', '.join(wrong)} not as written by a trial" if wrong else None


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise TypeError("models is not a list")
    return value


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mapping(value: Any, check) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and check(v) for k, v in value.items()
    )


def _file_name(name: Any) -> bool:
    """A plain file name in its folder: no path, no parent."""
    separators = ("/", "\\", "\0")
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in separators)
    )


@dataclass(frozen=True)
class SelectionArrays:
    """selection.npz: what the selected model did on the test part."""

    epoch: int
    names: tuple[str, ...]  # test images, in the order of the arrays below
    per_image_dice: np.ndarray  # NaN for images without a lesion
    per_image_counts: np.ndarray | None  # (N, 3) tp, fp, fn; None in older experiments
    predictions: np.ndarray  # bool (N, S, S)
    curves: dict[str, np.ndarray]  # fpr, tpr, precision, recall, thresholds
    # Near-duplicate group id per image (BusiArrays.groups), which a bootstrap resamples
    # whole; None in experiments from before it was recorded.
    groups: np.ndarray | None = None
    per_image_hd95: np.ndarray | None = None  # pixels; NaN where undefined

    def write(self, path: Path) -> None:
        """The predictions bit-packed along their rows (`read_selection` unpacks them)."""
        optional = {
            name: value
            for name, value in (
                ("groups", self.groups),
                ("per_image_counts", self.per_image_counts),
                ("per_image_hd95", self.per_image_hd95),
            )
            if value is not None
        }
        np.savez_compressed(
            path,
            format=SELECTION_ARRAYS_FORMAT,
            epoch=self.epoch,
            names=np.array(self.names),
            per_image_dice=self.per_image_dice,
            predictions=np.packbits(self.predictions, axis=-1),
            **optional,
            **self.curves,
        )


def read_selection(path: Path) -> SelectionArrays:
    """Raises ValueError (or the error NumPy's reader gives) for a file that is not one.
    The predictions are square, at the evaluation size, whatever size the trial trained
    at: their rows give the width their bits were packed from."""
    with np.load(path) as raw:  # allow_pickle is off: arrays only
        found = raw[FORMAT].item() if FORMAT in raw else 0
        checked_format(found, SELECTION_ARRAYS_FORMAT, path)
        packed = raw["predictions"]
        if packed.ndim != 3 or packed.shape[2] != -(-packed.shape[1] // 8):
            raise ValueError("its predictions are not square masks")
        arrays = SelectionArrays(
            epoch=int(raw["epoch"]),
            names=tuple(str(n) for n in raw["names"]),
            per_image_dice=raw["per_image_dice"].astype(float),
            per_image_counts=raw.get("per_image_counts"),
            predictions=np.unpackbits(packed, axis=-1, count=packed.shape[1]).astype(bool),
            curves={k: raw[k] for k in ("fpr", "tpr", "precision", "recall", "thresholds")},
            groups=raw.get("groups"),
            per_image_hd95=raw.get("per_image_hd95"),
        )
    n, curves, counts = len(arrays.names), arrays.curves, arrays.per_image_counts
    groups = arrays.groups
    if (
        arrays.per_image_dice.shape != (n,)
        or (groups is not None and (groups.shape != (n,) or groups.dtype.kind not in "iu"))
        or len(arrays.predictions) != n
        or (counts is not None and (counts.shape != (n, 3) or counts.dtype.kind not in "iu"))
        or curves["fpr"].ndim != 1
        or curves["fpr"].shape != curves["tpr"].shape
        or curves["precision"].ndim != 1
        or curves["precision"].shape != curves["recall"].shape
    ):
        raise ValueError("its arrays do not match one another")
    return arrays


@dataclass(frozen=True)
class DataProvenance:
    """data.json: the data a run trained on (checked again on --resume and by predict)."""

    path: str
    content_hash: str  # every PNG's bytes, as the cache keys them
    images: int
    synthetic: bool  # written by `data synth`
    warnings: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()  # copies left out by --conflicts exclude

    def to_text(self) -> str:
        body = dataclasses.asdict(self)
        body.update(warnings=list(self.warnings), excluded=list(self.excluded))
        return json.dumps(stamped(PROVENANCE_FORMAT, body), indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> DataProvenance:
        """Raises ValueError (JSON's included) or TypeError for a file that is not one."""
        _, body = unstamped(json.loads(text), PROVENANCE_FORMAT, path)
        types_ = {"path": str, "content_hash": str, "images": int, "synthetic": bool}
        if not all(isinstance(body.get(key), kind) for key, kind in types_.items()):
            raise ValueError("not the data's provenance")
        lists = {key: body.get(key, []) for key in ("warnings", "excluded")}
        names = all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()
        )
        if not names:
            raise ValueError("its warnings or excluded images are not lists of names")
        return cls(
            **{key: body[key] for key in types_},
            **{key: tuple(value) for key, value in lists.items()},
        )


@dataclass(frozen=True)
class Failure:
    """failure.json: why a trial failed in a way a retry would repeat; a retry reads it
    and ends at once instead of training again."""

    reason: str

    def to_text(self) -> str:
        return json.dumps(stamped(FAILURE_FORMAT, {"reason": self.reason})) + "\n"

    @classmethod
    def from_text(cls, text: str, path: str | Path) -> Failure:
        _, body = unstamped(json.loads(text), FAILURE_FORMAT, path)
        return cls(reason=str(body["reason"]))


@dataclass(frozen=True)
class StatePointer:
    """state.json inside a Tune checkpoint: which full training state it stands for."""

    state: str  # the state's file name in the trial's storage folder
    epoch: int

    def to_text(self) -> str:
        return json.dumps(stamped(POINTER_FORMAT, {"state": self.state, "epoch": self.epoch}))

    @classmethod
    def from_text(cls, text: str, path: str | Path) -> StatePointer:
        _, body = unstamped(json.loads(text), POINTER_FORMAT, path)
        return cls(state=str(body["state"]), epoch=int(body["epoch"]))


@dataclass(frozen=True)
class Placement:
    """One line of placement.jsonl, written at each (re)start of a trial: where it ran,
    the epoch it resumed after, and what its start-up cost (benchmarks.gpu_sweep)."""

    node_id: str
    gpu_ids: tuple[str, ...]
    device: str
    resumed_after_epoch: int
    time: float
    note: str = ""
    startup: dict[str, float | int | None] = dataclasses.field(default_factory=dict)

    def to_line(self) -> str:
        body = {
            "node_id": self.node_id,
            "gpu_ids": list(self.gpu_ids),
            "device": self.device,
            "resumed_after_epoch": self.resumed_after_epoch,
            "time": self.time,
            **self.startup,
        }
        if self.note:
            body["note"] = self.note
        return json.dumps(stamped(PLACEMENT_FORMAT, body))

    @classmethod
    def from_line(cls, line: str, path: str | Path) -> Placement:
        """Raises ValueError, KeyError or TypeError for a line that is not one."""
        _, body = unstamped(json.loads(line), PLACEMENT_FORMAT, path)
        fixed = {"node_id", "gpu_ids", "device", "resumed_after_epoch", "time", "note"}
        if not isinstance(body["device"], str) or not isinstance(body["gpu_ids"], list):
            raise TypeError("its device or GPU ids are not as written by a trial")
        return cls(
            node_id=str(body.get("node_id", "")),
            gpu_ids=tuple(str(g) for g in body["gpu_ids"]),
            device=body["device"],
            resumed_after_epoch=int(body.get("resumed_after_epoch", 0)),
            time=float(body.get("time", 0.0)),
            note=str(body.get("note", "")),
            startup={k: v for k, v in body.items() if k not in fixed},
        )


@dataclass(frozen=True)
class Outcome:
    """outcome.json, written by the driver when a trial ends: whether its last attempt
    errored (error.txt keeps every failed attempt, also of a trial a retry finished)."""

    errored: bool
    epochs: int = 0  # the epochs it reported

    def to_text(self) -> str:
        body = {"errored": self.errored, "epochs": self.epochs}
        return json.dumps(stamped(OUTCOME_FORMAT, body)) + "\n"

    @classmethod
    def from_text(cls, text: str, path: str | Path) -> Outcome:
        _, body = unstamped(json.loads(text), OUTCOME_FORMAT, path)
        if not isinstance(body.get("errored"), bool):
            raise ValueError("errored is not true or false")
        return cls(errored=body["errored"], epochs=int(body.get("epochs", 0)))


# The parts an image of the experiment's data can be in.
TRAIN, VALIDATION, TEST = "train", "validation", "test"
CROSS_VALIDATED = "cross-validated"  # in the training part, in some fold's validation part


@dataclass(frozen=True)
class SplitManifest:
    """split.json: the images of each side of a trial's split (train, validation, test;
    or the test part and K validation folds), with the split's policy, seed, counts and a
    hash of the names. Read, never recomputed: the split depends on the near-duplicate
    grouping, which may have changed since. A field is None when a file lacks it."""

    policy: str | None = None
    seed: int | None = None
    fold: int | None = None
    counts: dict[str, int] | None = None
    sha256: str | None = None
    train: tuple[str, ...] | None = None
    validation: tuple[str, ...] | None = None
    test: tuple[str, ...] | None = None
    folds: tuple[tuple[str, ...], ...] | None = None

    def side(self, name: str) -> tuple[str, ...]:
        """The names of one side ("train", "validation" or "test"); KeyError without it."""
        names = getattr(self, name)
        if names is None:
            raise KeyError(name)
        return names

    def parts(self) -> dict[str, str]:
        """Image name -> the part it was in: train, validation, cross-validated or test."""
        if self.folds is not None:
            parts = {name: CROSS_VALIDATED for fold in self.folds for name in fold}
        else:
            parts = {name: side for side in (TRAIN, VALIDATION) for name in self.side(side)}
        return {**parts, **dict.fromkeys(self.side(TEST), TEST)}

    def to_text(self) -> str:
        body = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
            if value is not None
        }
        if self.folds is not None:
            body["folds"] = [list(fold) for fold in self.folds]
        return json.dumps(stamped(SPLIT_FORMAT, body), indent=1)

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> SplitManifest:
        """Raises ValueError (JSON's included) or TypeError for a file that is not one."""
        _, body = unstamped(json.loads(text), SPLIT_FORMAT, path)
        hints = typing.get_type_hints(cls)
        if unknown := sorted(set(body) - set(hints)):
            raise ValueError(f"unknown keys {reprlib.repr(unknown)}")

        def names(value: Any) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError("a side is not a list of image names")
            return tuple(value)

        for key in ("policy", "sha256"):
            if key in body and not isinstance(body[key], str):
                raise TypeError(f"{key} is not text")
        for key in ("seed", "fold"):
            if body.get(key) is not None and not is_integer(body[key]):
                raise TypeError(f"{key} is not a whole number")
        if "counts" in body and not _mapping(body["counts"], is_integer):
            raise TypeError("counts is not a mapping of whole numbers")
        sides = {key: names(body.pop(key)) for key in (TRAIN, VALIDATION, TEST) if key in body}
        folds = body.pop("folds", None)
        if folds is not None:
            if not isinstance(folds, list):
                raise TypeError("folds is not a list")
            folds = tuple(names(fold) for fold in folds)
        return cls(**body, **sides, folds=folds)


def save_config(config: TrainConfig, path: Path) -> None:
    """config.json: the trial's resolved TrainConfig."""
    path.write_text(json.dumps(stamped(CONFIG_FORMAT, config.to_flat()), indent=2) + "\n")


def read_config(text: str, path: str | Path) -> TrainConfig:
    """Raises ValueError (JSON's and a wrong value's included) for a file that is not one."""
    _, flat = unstamped(json.loads(text), CONFIG_FORMAT, path)
    if problem := type_problem(TrainConfig, flat):
        raise ValueError(problem)
    return TrainConfig.from_flat(flat)


# --- confirm.json and final.json: a confirmation (results.confirm.assess makes one) ------


@dataclass(frozen=True)
class Estimate(Interval):
    """A mean with its interval (results.intervals), as a confirmation records it: with
    its level, and a difference's verdict."""

    confidence: float | None = None  # None: a validation mean's (the default level)
    verdict: str | None = None  # a difference's: better, worse or undecided

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw: Any) -> Estimate:
        if problem := type_problem(cls, raw):
            raise TypeError(f"an interval: {problem}")
        return cls(**raw)


@dataclass(frozen=True)
class Candidate:
    """A config to retrain: the reference or one of the sweep's best."""

    label: str  # "reference", "best", "rank 2", ...
    trial: str  # the sweep's trial it comes from
    rank: int  # its place by validation objective in the sweep (1 = best)
    point: dict[str, Any]  # its values on every searched key


@dataclass(frozen=True)
class RecordedRun:
    """One run of a config: a retraining, or a sweep's own trial; `test` is None for one
    that did not count (a retraining that did not finish its budget)."""

    label: str
    seed: int  # its training seed
    split_seed: int | None
    trial: str
    state: str
    objective: float | None  # the sweep's objective on its validation part
    test: dict[str, float] | None


@dataclass(frozen=True)
class Winner:
    """The candidate picked on validation, by `rule`; each candidate's validation mean."""

    label: str
    trial: str
    rule: str
    validation: dict[str, Estimate]


@dataclass(frozen=True)
class Comparison:
    """A candidate's difference from the reference config on the test part, per metric."""

    label: str
    estimates: dict[str, Estimate]


@dataclass(frozen=True)
class ConfirmProtocol:
    split: str
    split_seed: int
    counts: dict[str, int]
    epochs: int
    scheduler: str
    selection: str
    # Per split seed: the test images, their near-duplicate groups and the images that
    # share one (None: groups not recorded, images resampled singly).
    test_groups: dict[str, dict[str, int] | None] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Confirmation:
    """confirm.json and final.json (and a sweep's own assessment, never written): the
    plan, every run, the winner, each config's test intervals and each one's difference
    from the reference. The JSON keeps the layout of its format (see `to_json`)."""

    kind: str  # confirm, final or sweep (results.confirm)
    experiment: str
    retrained_in: tuple[str, ...]
    confidence: float
    primary_metric: str  # the test metric that decides
    objective: str  # the validation objective the sweep optimised
    secondary_metrics: tuple[str, ...]
    secondary_confidence: float  # Bonferroni-corrected
    resamples: int
    protocol: ConfirmProtocol
    seeds: tuple[int, ...]
    split_seeds: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    runs: tuple[RecordedRun, ...]
    winner: Winner | None
    summary: dict[str, dict[str, Estimate]]  # candidate label -> metric -> its mean
    comparisons: tuple[Comparison, ...]

    def comparison(self, label: str) -> Comparison | None:
        """The candidate `label`'s difference from the reference, if it has one."""
        return next((c for c in self.comparisons if c.label == label), None)

    def to_json(self) -> dict[str, Any]:
        def estimates(by_metric: dict[str, Estimate]) -> dict[str, Any]:
            return {metric: e.to_json() for metric, e in by_metric.items()}

        winner = None
        if self.winner is not None:
            winner = {
                **dataclasses.asdict(self.winner),
                "validation": estimates(self.winner.validation),
            }
        return stamped(
            CONFIRMATION_FORMAT,
            {
                "kind": self.kind,
                "experiment": self.experiment,
                "retrained_in": list(self.retrained_in),
                "confidence": self.confidence,
                "primary": {"metric": self.primary_metric, "objective": self.objective},
                "secondary": {
                    "metrics": list(self.secondary_metrics),
                    "confidence": self.secondary_confidence,
                },
                "resamples": self.resamples,
                "protocol": dataclasses.asdict(self.protocol),
                "seeds": list(self.seeds),
                "split_seeds": list(self.split_seeds),
                "candidates": [dataclasses.asdict(c) for c in self.candidates],
                "runs": [dataclasses.asdict(r) for r in self.runs],
                "winner": winner,
                "summary": {label: estimates(s) for label, s in self.summary.items()},
                "comparisons": [
                    {"label": c.label, **estimates(c.estimates)} for c in self.comparisons
                ],
            },
        )

    def to_text(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> Confirmation:
        """Raises ValueError (JSON's included), KeyError or TypeError for a file that is
        not one or is of an older format (see CONFIRMATION_FORMAT), NewerFormatError for
        a newer one."""
        found, body = unstamped(json.loads(text), CONFIRMATION_FORMAT, path)
        if found != CONFIRMATION_FORMAT:
            raise ValueError(f"format {found}, from an older version")

        def estimates(raw: Any) -> dict[str, Estimate]:
            if not isinstance(raw, dict):
                raise TypeError("intervals are not an object")
            return {str(metric): Estimate.from_json(e) for metric, e in raw.items()}

        def candidate(raw: dict[str, Any]) -> Candidate:
            if not isinstance(raw.get("point"), dict):
                raise TypeError("a candidate's point is not an object")
            return Candidate(str(raw["label"]), str(raw["trial"]), int(raw["rank"]), raw["point"])

        def run(raw: dict[str, Any]) -> RecordedRun:
            test = raw["test"]
            if test is not None and not _mapping(test, is_number):
                raise TypeError("a run's test metrics are not numbers")
            scalars = {k: v for k, v in raw.items() if k != "test"}
            if problem := type_problem(RecordedRun, scalars):
                raise TypeError(f"a run: {problem}")
            return RecordedRun(**scalars, test=test)

        protocol = dict(body["protocol"])
        groups = protocol.pop("test_groups", {})
        if problem := type_problem(ConfirmProtocol, protocol):
            raise TypeError(f"protocol: {problem}")
        if not isinstance(groups, dict) or not all(
            g is None or _mapping(g, is_integer) for g in groups.values()
        ):
            raise TypeError("protocol's test_groups are not counts")
        raw_winner = body["winner"]
        winner = None
        if raw_winner is not None:
            winner = Winner(
                str(raw_winner["label"]),
                str(raw_winner["trial"]),
                str(raw_winner["rule"]),
                estimates(raw_winner["validation"]),
            )
        comparisons = tuple(
            Comparison(str(c["label"]), estimates({k: v for k, v in c.items() if k != "label"}))
            for c in body["comparisons"]
        )
        return cls(
            kind=str(body["kind"]),
            experiment=str(body["experiment"]),
            retrained_in=tuple(str(e) for e in body["retrained_in"]),
            confidence=float(body["confidence"]),
            primary_metric=str(body["primary"]["metric"]),
            objective=str(body["primary"]["objective"]),
            secondary_metrics=tuple(str(m) for m in body["secondary"]["metrics"]),
            secondary_confidence=float(body["secondary"]["confidence"]),
            resamples=int(body["resamples"]),
            protocol=ConfirmProtocol(**protocol, test_groups=groups),
            seeds=tuple(int(s) for s in body["seeds"]),
            split_seeds=tuple(int(s) for s in body["split_seeds"]),
            candidates=tuple(candidate(c) for c in body["candidates"]),
            runs=tuple(run(r) for r in body["runs"]),
            winner=winner,
            summary={str(label): estimates(s) for label, s in body["summary"].items()},
            comparisons=comparisons,
        )


SPLIT_IMAGES = "split_images"  # the card's copy of the split, as content hashes


@dataclass(frozen=True)
class ModelCard:
    """The JSON card beside an exported model (tuner.inference.export writes it): what
    `predict` needs to run the file alone, read from the card as written; the rest
    (config, split, metrics, software) is for people and other programs."""

    runtime: str  # one of layout.EXPORT_FORMATS
    trial: str | None  # the trial it was exported from
    input_size: int
    evaluation_size: int
    threshold: float
    # Each part's images by content hash ({"parts": {part: [hash, ...]}}), None when the
    # card carries none (exported without the data at hand).
    split_images: dict[str, list[str]] | None

    @staticmethod
    def to_text(runtime: str, card: dict[str, Any]) -> str:
        """The whole card: its format and runtime first, then `card` as export lays it out
        ("input": {"size"}, "evaluation_size", "threshold", SPLIT_IMAGES, ...)."""
        return json.dumps(stamped(MODEL_CARD_FORMAT, {"runtime": runtime, **card}), indent=2)

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> ModelCard:
        """Raises ValueError (JSON's included), KeyError or TypeError for a card that is
        not one, NewerFormatError for a newer one."""
        raw = json.loads(text)
        if isinstance(raw, dict) and isinstance(raw.get(FORMAT), str):  # format 0
            raw = {**raw, FORMAT: 0, "runtime": raw[FORMAT]}
        _, body = unstamped(raw, MODEL_CARD_FORMAT, path)
        runtime = body.get("runtime", EXPORT_FORMATS[0])  # format 0 without one: torchscript
        if runtime not in EXPORT_FORMATS:
            raise ValueError(f"runtime {runtime!r} unknown ({' or '.join(EXPORT_FORMATS)})")
        try:  # optional: a card without a readable copy of the split still runs
            split = body[SPLIT_IMAGES]["parts"]
            parts = {str(part): [str(h) for h in hashes] for part, hashes in split.items()}
        except (KeyError, TypeError, AttributeError):
            parts = None
        threshold = body["threshold"]
        if not is_number(threshold):
            raise TypeError("threshold is not a number")
        trial = body.get("trial")
        return cls(
            runtime=runtime,
            trial=None if trial is None else str(trial),
            input_size=int(body["input"]["size"]),
            evaluation_size=int(body["evaluation_size"]),
            threshold=float(threshold),
            split_images=parts,
        )


@dataclass(frozen=True)
class Origin:
    """origin.json: which machine created the experiment (`tuner.origin` makes and checks
    the stamp, an HMAC of `id` under that machine's key)."""

    host: str
    id: str
    stamp: str

    def to_text(self) -> str:
        return json.dumps(stamped(ORIGIN_FORMAT, dataclasses.asdict(self)))

    @classmethod
    def from_text(cls, text: str | bytes, path: str | Path) -> Origin:
        """Raises ValueError (JSON's included), KeyError or TypeError for a file that is
        not one, NewerFormatError for a newer one."""
        _, body = unstamped(json.loads(text), ORIGIN_FORMAT, path)
        return cls(host=str(body["host"]), id=str(body["id"]), stamp=str(body["stamp"]))
