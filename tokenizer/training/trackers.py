"""Experiment trackers: any that accelerate supports (``train.tracker``), scalars and sample pictures.

``train.tracker`` is ``none``, one name (``tensorboard``, ``wandb``, ``trackio``, ``comet_ml``, ``aim``,
``mlflow``, ``clearml``, ``dvclive``, ``swanlab``), several joined by commas (``tensorboard,wandb``) or ``all``
(every one installed). A named tracker whose package is missing is a config error naming the package; accelerate
itself would drop it silently. Local trackers write under ``RUN/trackers/`` (tensorboard:
``RUN/trackers/<train.tracker_project>/events...``); hosted ones use ``train.tracker_project`` as the project.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ConfigError

NONE = "none"
TRACKER_DIR = "trackers"


def _known() -> dict[str, Any]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return LOGGER_TYPE_TO_CLASS


def tracker_names(value: str) -> list[str]:
    """The accelerate ``log_with`` list of a ``train.tracker`` value ([] for ``none``)."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    return [] if names in ([], [NONE]) else names


def check_tracker(key: str, value: str) -> None:
    """A ConfigError unless every tracker of ``value`` is one accelerate knows and its package is installed."""
    from accelerate.tracking import get_available_trackers

    names = tracker_names(value)
    if NONE in names and len(names) > 1:
        raise ConfigError(f"invalid value '{key}={value}': 'none' cannot be combined with trackers")
    known = _known()
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name == "all":
            continue
        if name not in known:
            raise ConfigError(f"invalid value '{key}={value}': unknown tracker '{name}'; accelerate supports "
                              f"{', '.join(sorted(known))} (comma-separated), 'all' or 'none'")
        if name not in available:
            raise ConfigError(f"invalid value '{key}={value}': the tracker '{name}' needs the '{name}' package, "
                              f"which is not installed (pip install {name}); or choose another tracker, or 'none'")


def accelerator_kwargs(tracker: str, run_dir: str) -> dict:
    """``log_with`` and the project configuration of a run's ``Accelerator``."""
    from accelerate.utils import ProjectConfiguration

    names = tracker_names(tracker)
    return dict(log_with=names or None,
                project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                    logging_dir=f"{run_dir}/{TRACKER_DIR}"))


def log_image(accelerator: Any, tag: str, image: np.ndarray, step: int) -> list[str]:
    """Send one ``(H, W, 3)`` uint8 picture to every started tracker that takes images; returns their names."""
    sent = []
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":  # SummaryWriter.add_images takes a batch
            tracker.log_images({tag: image[None]}, step=step, dataformats="NHWC")
        elif tracker.name in ("aim", "clearml"):  # one picture per key
            tracker.log_images({tag: image}, step=step)
        else:  # wandb, swanlab, ...: a list of pictures per key
            tracker.log_images({tag: [image]}, step=step)
        sent.append(tracker.name)
    return sent
