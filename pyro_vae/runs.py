"""Run folders: train into one, resume one, and load a trained model back from one. This module
is the only one that writes a run folder.

A run folder holds::

    config.json        the resolved configuration
    environment.json   package versions, Python, platform, device, seed
    metrics.csv        one row per epoch (also metrics.json)
    checkpoint.pt      everything needed to resume or to use the model (see checkpoint.py)
    figures/*.png      ELBO curves and the data-kind's figures (see plots.py)
    .lock              held (``flock``) by the one process writing the folder

One writer at a time: :class:`RunLock` takes an exclusive ``fcntl.flock`` on ``.lock`` before
anything is read for a resume or written, and a second writer stops with "run folder in use by
process N". The kernel drops the lock when its process dies, however it dies, so a stale lock
never blocks. Every temporary file carries its writer's pid, and the lock holder removes the
leftovers of killed runs (``.*.tmp-*``) when it starts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    model_from_payload,
    restore_model,
    save_checkpoint,
)
from pyro_vae.config import Config
from pyro_vae.data import DataSet, prepare_data
from pyro_vae.errors import CheckpointError, ConfigError, DataError, ModelError
from pyro_vae.infer.trainer import Trainer
from pyro_vae.jobs import BudgetError, budget, job
from pyro_vae.loggers import RunLogger, make_logger
from pyro_vae.models.builder import build_guide
from pyro_vae.models.vae import VAE

#: Options that may differ between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"epochs", "device", "checkpoint_every", "skip_nonfinite",
                               "logger", "compile", "threads", "max_minutes"})


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device "
                          "cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def environment(config: Config, device: torch.device) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: version(p) for p in ("pyro-vae", "pyro-ppl", "torch", "torchvision",
                                             "numpy", "scikit-learn", "matplotlib")},
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "seed": config.seed,
        "torch_threads": torch.get_num_threads(),
    }


LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on a run folder (module docstring); a context manager. On systems
    without ``fcntl`` (Windows) it falls back to an ``O_EXCL`` lock file holding the pid, taken
    over when that process no longer exists."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} exists and is not a folder; choose another --out")
        self._created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {self.run_dir} "
                              f"({exc.strerror or exc}); choose another --out") from None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            os.close(fd)
            self._enter_without_flock()
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"run folder {self.run_dir} is in use by process {holder}; wait "
                              "for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._remove_stale_temporaries()
        return self

    def _enter_without_flock(self) -> None:  # pragma: no cover - Windows
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = self.path.read_text().strip()
                if pid.isdigit() and _alive(int(pid)):
                    raise ConfigError(f"run folder {self.run_dir} is in use by process {pid}; "
                                      "wait for it to finish, or choose another --out") from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            self._remove_stale_temporaries()
            return

    def _remove_stale_temporaries(self) -> None:
        for leftover in self.run_dir.glob(".*.tmp*"):
            leftover.unlink(missing_ok=True)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock: the next writer makes its own
        os.close(self._fd)
        self._fd = None
        if self._created_dir and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # a run that failed before writing leaves nothing behind


def _alive(pid: int) -> bool:  # pragma: no cover - Windows fallback only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.json and metrics.csv, each replaced atomically."""
    _write_json(run_dir / "metrics.json", history)
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = run_dir / f".metrics.csv.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "metrics.csv")


def _check_resumable(saved: dict[str, Any], config: Config, path: Path) -> None:
    # options added since the checkpoint was written take their defaults, which reproduce the
    # behaviour of the version that wrote it
    saved = {**Config().to_dict(), **saved}
    differing = sorted(k for k, v in config.to_dict().items()
                       if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if differing:
        detail = ", ".join(f"{k}: {saved.get(k)!r} → {config.to_dict()[k]!r}" for k in differing)
        raise CheckpointError(
            f"{path} was written with another configuration ({detail}); resume with the "
            "original options (only --epochs, --device, --compile, --checkpoint-every, "
            "--skip-nonfinite, --threads and --logger may change) or use a new --out"
        )


@dataclass
class RunResult:
    """A finished run: its folder, per-epoch metrics, and the trainer (``None`` for a
    ``--strategy ddp`` run, whose model :func:`load_run` rebuilds from the folder)."""

    run_dir: Path
    history: list[dict[str, Any]]
    trainer: Trainer | None


def train_run(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    figures: bool = True,
) -> RunResult | None:
    """Train ``config`` into ``run_dir``, checkpointing every ``checkpoint_every`` epochs, or,
    when it is unset, after the first epoch, then every :data:`CHECKPOINT_SECONDS` of
    training, after the last epoch and on SIGINT (the metrics files are written with it).

    With ``resume``, continue from ``run_dir/checkpoint.pt`` (same configuration except
    ``epochs``/``device``); the numbers equal those of an uninterrupted run with the same seed.
    Everything is validated before the folder is created, so a bad option leaves nothing behind.
    """
    if not isinstance(config, Config):
        raise ConfigError(f"train_run takes a Config, got {type(config).__name__}; build one "
                          "with Config(**options) or Config.from_dict(d)")
    if not str(_folder(run_dir)).strip() or not os.fspath(run_dir).strip():
        raise ConfigError("the run folder is an empty path; give --out a folder name")
    run_dir = Path(run_dir)
    config = config.resolved()
    device = resolve_device(config.device)
    if resume and not (run_dir / CHECKPOINT_NAME).exists():
        load_checkpoint(run_dir / CHECKPOINT_NAME)  # the one-line "no checkpoint" error
    torch.set_num_threads(config.torch_threads(config.arch))
    if config.strategy != "single":
        return _train_distributed_run(config, run_dir, prepare_data(config), resume, progress,
                                      figures)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            return _train_locked(config, run_dir, device, resume, progress, on_epoch, figures)
    finally:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a refused run leaves no folder behind


def _train_locked(config: Config, run_dir: Path, device: torch.device, resume: bool,
                  progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None,
                  figures: bool) -> RunResult:
    ckpt_path = run_dir / CHECKPOINT_NAME
    state = None
    if resume:
        state = load_checkpoint(ckpt_path, map_location=device)
        _check_resumable(state["config"], config, ckpt_path)
        if state["epoch"] > config.epochs:
            raise ConfigError(f"{run_dir} has already trained {state['epoch']} epochs, more "
                              f"than --epochs {config.epochs}; pass --epochs {state['epoch']} "
                              "or more to continue it")
    elif ckpt_path.exists():
        raise ConfigError(f"{run_dir} already holds a trained run; pass --resume to continue it "
                          "or choose another --out")
    data = prepare_data(config)
    pyro.set_rng_seed(config.seed)
    trainer = Trainer.from_config(config, data, device)
    if state is not None:
        trainer.load_state_dict(state)
    logger = make_logger(config.logger, run_dir)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    written = [run_dir / "config.json", run_dir / "environment.json"]
    _write_json(written[0], config.to_dict())
    _write_json(written[1], environment(config, device))
    try:
        return _train_epochs(config, run_dir, trainer, data, logger, progress, on_epoch, figures)
    except (ConfigError, ModelError, DataError):
        # refused at the first steps (a combination only the model's trace reveals): nothing
        # was trained, so nothing stays behind
        if state is None and not (run_dir / CHECKPOINT_NAME).exists():
            for path in written:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (run_dir / "figures").rmdir()
        raise
    finally:
        logger.close()


#: with ``checkpoint_every`` unset, the most seconds of training between two checkpoints: a
#: checkpoint (its checksum, write and fsync) and the metrics files cost 10–30 ms, as much as a
#: whole epoch of the default run; every epoch, they took a third of its training time
CHECKPOINT_SECONDS = 10.0


def checkpoint_due(config: Config, trainer: Trainer, last_write: float) -> bool:
    """Whether the epoch just trained ends with a checkpoint: every ``checkpoint_every``
    epochs when that is set; else the first epoch (a run has a checkpoint early), any epoch
    ending :data:`CHECKPOINT_SECONDS` after the last write, and the last epoch."""
    if trainer.epoch == config.epochs:
        return True
    if config.checkpoint_every is not None:
        return trainer.epoch % config.checkpoint_every == 0
    return trainer.checkpoint_epoch is None or \
        time.monotonic() - last_write >= CHECKPOINT_SECONDS


def _train_epochs(config: Config, run_dir: Path, trainer: Trainer, data: DataSet,
                  logger: RunLogger, progress: bool,
                  on_epoch: Callable[[dict[str, Any]], None] | None, figures: bool) -> RunResult:
    ckpt_path = run_dir / CHECKPOINT_NAME
    if trainer.epoch == 0:
        logger.log_config(config.to_dict())
    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # finish the epoch, checkpoint, then stop
        interrupted["flag"] = True

    def checkpoint() -> float:
        """The checkpoint and the metrics files of the epochs so far; returns the time."""
        save_checkpoint(trainer.state_dict(), ckpt_path)
        write_metrics(run_dir, trainer.history)
        trainer.checkpoint_epoch = trainer.epoch
        return time.monotonic()

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    last_write = time.monotonic()
    try:
        with budget(config.max_minutes, progress), job(
                "training", config.epochs - trainer.epoch, "epoch",
                "lower --epochs or the data (--max-train)",
                warmup=1 if config.epochs - trainer.epoch > 1 else 0) as work:
            while trainer.epoch < config.epochs and not interrupted["flag"]:
                metrics = trainer.train_epoch()
                # the first epochs are the probe (the first, which traces or compiles, only
                # warms up): a run projected past --max-minutes stops there
                if checkpoint_due(config, trainer, last_write) or interrupted["flag"]:
                    last_write = checkpoint()
                logger.log_metrics(metrics, trainer.epoch)
                if on_epoch is not None:
                    on_epoch(metrics)
                work.postfix = (f"train objective {-metrics['train_loss']:.3f}, test ELBO "
                                f"{metrics['test_elbo']:.3f}")
                try:
                    work.advance()
                except BudgetError as exc:  # refused after epochs that are worth keeping
                    if trainer.checkpoint_epoch != trainer.epoch:
                        checkpoint()
                    raise BudgetError(f"{exc} (the {trainer.epoch} epochs trained so far are "
                                      f"saved in {run_dir}: --resume continues them)") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if not ckpt_path.exists():
        checkpoint()
    if interrupted["flag"]:
        raise KeyboardInterrupt(f"interrupted after epoch {trainer.epoch}; the checkpoint is "
                                f"saved: continue with --resume --out {run_dir}")
    if figures:
        from pyro_vae.plots import make_figures

        make_figures(trainer.vae, data, trainer.history, run_dir / "figures")
        logger.log_figures(run_dir / "figures")
    return RunResult(run_dir, trainer.history, trainer)


def _train_distributed_run(config: Config, run_dir: Path, data: DataSet, resume: bool,
                           progress: bool, figures: bool) -> RunResult | None:
    from pyro_vae.infer.distributed import train_distributed

    if resume:
        raise ConfigError("--resume continues runs of the single-process trainer; a --strategy "
                          "ddp run is trained in one go (its checkpoint still evaluates, "
                          "samples and plots as usual)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} is not empty; choose another --out")
    result = train_distributed(config, data, progress)
    if result is None:  # not the global-zero worker: it writes nothing
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result.payload, run_dir / CHECKPOINT_NAME)
    write_metrics(run_dir, result.payload["history"])
    _write_json(run_dir / "config.json", config.to_dict())
    _write_json(run_dir / "environment.json", environment(config, result.device))
    _write_json(run_dir / "distributed.json", result.summary)
    run = load_run(run_dir, device=config.device, load_data=False)
    if figures:
        from pyro_vae.plots import make_figures

        make_figures(run.vae, data.to(run.device), run.history, run_dir / "figures")
    return RunResult(run_dir, run.history, None)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclass
class LoadedRun:
    config: Config
    vae: VAE
    data: DataSet
    history: list[dict[str, Any]]
    device: torch.device
    #: the guide the run was trained and is evaluated with beside ``vae.guide`` (the
    #: semi-amortized one of ``--refine-steps``), or None
    guide: Any = None


def _folder(path: Any) -> Path:
    """``path`` as a Path, or :class:`ConfigError` for what is not a path."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a run folder is a path (str or pathlib.Path), got "
                          f"{type(path).__name__}; e.g. 'runs/digits'")
    return Path(path)


def load_run(run_dir: str | Path, device: str = "cpu", load_data: bool = True) -> LoadedRun:
    """Rebuild the trained model of a run folder (or checkpoint file) and, optionally, its data."""
    dev = resolve_device(device)
    state = load_checkpoint(_folder(run_dir), map_location=dev)
    vae = model_from_payload(state).to(dev)
    config = Config.from_dict(state["config"]).replace(device=str(dev))
    restore_model(vae, state)
    vae.eval()
    data = prepare_data(config).to(dev) if load_data else None
    return LoadedRun(config, vae, data, list(state["history"]), dev,  # type: ignore[arg-type]
                     build_guide(config, vae))
