"""TensorBoard, one run per trial named as the trial is everywhere else: the trial writes
readable scalars and example images into its own folder (which reaches the storage path
through `SyncConfig(sync_artifacts=True)`), and the driver adds the HParams when the trial
ends (`write_hparams`): the searched values, the selected epoch's metrics and the trial's
true state. Ray's own TensorBoard logger, a second run of raw `ray/tune/*` tags, is off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from results.experiment import State
from results.keys import DICE, DICE_PER_IMAGE, HD95, IOU, METRIC_KEYS
from trainable.engine import EpochReport

IMAGE_TAG = "validation/examples"
SCALAR_TAGS = (
    "loss/train",
    "loss/heldout",
    "loss/combined",
    "heldout/dice",
    "heldout/iou",
    "heldout/dice_per_image",
    "heldout/hd95",
    "lr",
    "threshold",  # the selected model's decision threshold
    *(f"test_at_selection/{m}" for m in METRIC_KEYS),
)


def overlay_panel(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """One row: input | ground truth | prediction in red over the input (truth edge
    in green), as uint8 RGB (S, 3S, 3)."""
    grey = np.repeat(image[..., None], 3, axis=2)
    truth_rgb = np.repeat((truth.astype(np.uint8) * 255)[..., None], 3, axis=2)
    overlay = grey.astype(np.float32)
    overlay[prediction.astype(bool)] = 0.5 * overlay[prediction.astype(bool)] + [127, 0, 0]
    edge = truth.astype(bool) & ~_eroded(truth.astype(bool))
    overlay[edge] = [0, 255, 0]
    return np.concatenate([grey, truth_rgb, overlay.astype(np.uint8)], axis=1)


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


class TrialWriter:
    """Scalars every epoch, example images every `image_every` epochs (and the first)."""

    def __init__(self, directory: Path, image_every: int) -> None:
        self.writer = SummaryWriter(log_dir=str(directory))
        self.image_every = image_every

    def epoch(self, report: EpochReport) -> None:
        step = report.epoch
        values = (
            report.train_loss,
            report.heldout_loss,
            report.combined_loss,
            report.heldout[DICE],
            report.heldout[IOU],
            report.heldout[DICE_PER_IMAGE],
            report.heldout[HD95],
            report.lr,
            report.threshold,
            *(report.test.get(m, float("nan")) for m in METRIC_KEYS),
        )
        for tag, value in zip(SCALAR_TAGS, values, strict=True):
            self.writer.add_scalar(tag, value, step)

    def wants_images(self, epoch: int, last_epoch: int) -> bool:
        return epoch == 1 or epoch == last_epoch or epoch % self.image_every == 0

    def images(self, epoch: int, images, truths, predictions) -> None:
        grid = np.concatenate(
            [overlay_panel(i, t, p) for i, t, p in zip(images, truths, predictions, strict=True)],
            axis=0,
        )
        self.writer.add_image(IMAGE_TAG, grid, epoch, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


HPARAMS_PREFIX = "hparams/"
# The trial's state as TensorBoard knows states: it has none for "stopped early".
SESSION_STATUS = {
    State.FINISHED: api_pb2.Status.STATUS_SUCCESS,
    State.ERRORED: api_pb2.Status.STATUS_FAILURE,
}


def write_hparams(
    directory: Path, params: dict, metrics: dict[str, float], state: State, epochs: int
) -> None:
    """The trial's HParams into its TensorBoard run: searched values plus its state after
    `epochs` (finished / stopped early at epoch k / errored), and `metrics` (the selected
    epoch's) as scalars under hparams/ at step `epochs`."""
    values = {k: v for k, v in params.items() if isinstance(v, int | float | str | bool)}
    values["state"] = state.at(epochs)
    shown = {f"{HPARAMS_PREFIX}{k}": v for k, v in metrics.items()}
    # Not the experiment summary torch makes with it: TensorBoard shows one experiment's
    # columns, and a trial's lists only the parameters that trial sampled (the driver
    # writes the sweep's, `write_hparams_experiment`).
    _, start, _ = hparams(values, shown)
    end = _session_end(SESSION_STATUS.get(state, api_pb2.Status.STATUS_UNKNOWN))
    with SummaryWriter(log_dir=str(directory)) as writer:
        for summary in (start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in shown.items():
            writer.add_scalar(tag, value, epochs)


Interval = tuple[float, float]


def write_hparams_experiment(
    directory: Path, parameters: dict[str, list | Interval], metrics: list[str]
) -> None:
    """The sweep's HParams experiment, in the experiment folder (TensorBoard's run "."):
    a column for every parameter the space can sample, conditional ones included (a list
    of choices, or a (low, high) interval), for the trial's state, and for each of
    `metrics` (written by `write_hparams` under hparams/)."""
    infos = [_hparam_info(name, domain) for name, domain in sorted(parameters.items())]
    infos.append(api_pb2.HParamInfo(name="state", type=api_pb2.DATA_TYPE_STRING))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"{HPARAMS_PREFIX}{m}")) for m in metrics
        ],
    )
    content = HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    with SummaryWriter(log_dir=str(directory)) as writer:
        writer.file_writer.add_summary(_plugin_summary(metadata.EXPERIMENT_TAG, content))


def _hparam_info(name: str, domain: list | Interval) -> api_pb2.HParamInfo:
    if isinstance(domain, tuple):
        low, high = domain
        return api_pb2.HParamInfo(
            name=name,
            type=api_pb2.DATA_TYPE_FLOAT64,
            domain_interval=api_pb2.Interval(min_value=low, max_value=high),
        )
    info = api_pb2.HParamInfo(name=name)
    if all(isinstance(v, str) for v in domain):
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(domain)
    elif all(isinstance(v, bool) for v in domain):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend(domain)
    else:
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_discrete.extend(float(v) for v in domain)
    return info


def _plugin_summary(tag: str, content: HParamsPluginData) -> Summary:
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def _session_end(status: int) -> Summary:
    """torch's `hparams` always writes STATUS_SUCCESS; this writes the trial's own."""
    content = HParamsPluginData(
        session_end_info=SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    return _plugin_summary(metadata.SESSION_END_INFO_TAG, content)
