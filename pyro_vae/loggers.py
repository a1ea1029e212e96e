"""Experiment tracking next to the run folder: ``pyro-vae train --logger tensorboard|mlflow``.

The run folder stays the record (config, metrics, checkpoint, figures); a logger mirrors it to
the tool a team already watches:

=================  =========================================================================
``tensorboard``    event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``): every
                   numeric per-epoch metric as a scalar (``test_elbo``, ``train_elbo``, ``kl``…,
                   step = epoch), the configuration as text, the final figures as images
``mlflow``         an MLflow run in ``$MLFLOW_TRACKING_URI`` or, when that is unset, a file
                   store in ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``; MLflow
                   3 needs ``MLFLOW_ALLOW_FILE_STORE=true`` for it, which the logger sets): the
                   configuration as params, the metrics per epoch, the figures as artifacts; a
                   resumed run continues as a new MLflow run with the same epoch steps
=================  =========================================================================

Both are optional extras (``pip install 'pyro-vae[tensorboard]'`` / ``'pyro-vae[mlflow]'``);
asking for one that is not installed is a one-line error before training starts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pyro_vae.errors import ConfigError

LOGGERS = ("none", "tensorboard", "mlflow")


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "epoch"
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class RunLogger:
    """No tracking: the run folder only. Subclasses mirror it to a tracking tool."""

    def log_config(self, config: dict[str, Any]) -> None:
        """The run's configuration, once at the start."""

    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        """One epoch's metrics."""

    def log_figures(self, folder: Path) -> None:
        """The PNG figures of the run, once at the end."""

    def close(self) -> None:
        """Flush and release."""


class TensorBoardLogger(RunLogger):
    """Event files in ``RUN/tensorboard`` (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--logger tensorboard needs the tensorboard package; "
                              "pip install 'pyro-vae[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", 0)

    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        for name, value in _numeric(metrics).items():
            self.writer.add_scalar(name, value, epoch)

    def log_figures(self, folder: Path) -> None:
        from matplotlib.image import imread

        for path in sorted(Path(folder).glob("*.png")):
            image = imread(path)[..., :3]
            self.writer.add_image(f"figures/{path.stem}", image, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowLogger(RunLogger):
    """An MLflow run (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--logger mlflow needs the mlflow package; "
                              "pip install 'pyro-vae[mlflow]'") from None
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 keeps the file store in "maintenance mode" behind an opt-in; it needs no
            # server or database, which is what a run folder's own record should need
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((Path(run_dir).resolve() / "mlruns").as_uri())
        mlflow.set_experiment("pyro-vae")
        self.run = mlflow.start_run(run_name=Path(run_dir).name)

    def log_config(self, config: dict[str, Any]) -> None:
        self.mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
                                for k, v in config.items()})

    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        self.mlflow.log_metrics(_numeric(metrics), step=epoch)

    def log_figures(self, folder: Path) -> None:
        if any(Path(folder).glob("*.png")):
            self.mlflow.log_artifacts(str(folder), artifact_path="figures")

    def close(self) -> None:
        self.mlflow.end_run()


def make_logger(name: str, run_dir: Path) -> RunLogger:
    """The logger ``--logger name`` asks for, writing for the run in ``run_dir``."""
    if name == "tensorboard":
        return TensorBoardLogger(run_dir)
    if name == "mlflow":
        return MLflowLogger(run_dir)
    if name == "none":
        return RunLogger()
    raise ConfigError(f"unknown --logger {name!r}; choose one of: {', '.join(LOGGERS)}")
