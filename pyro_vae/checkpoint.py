"""One-file checkpoints, written atomically and read back with clear errors.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(weights_only=True)``, so no pickled code runs on load):

==================  ========================================================================
``format``          ``"pyro-vae-checkpoint"``; ``format_version`` its layout version
``config``          the full resolved :class:`~pyro_vae.config.Config` as a dict
``data``            ``event_shape``, ``num_data``, ``num_classes`` of the training data
``epoch``           epochs completed; ``global_step`` optimization steps taken
``modules``         ``state_dict()`` of the encoder and decoder (weights and buffers)
``params``          the other ``pyro.param`` values (unconstrained), e.g. ``obs_scale``
``optimizer``       names of the trained tensors, torch optimizer and LR-scheduler state
``rng``             torch (and CUDA), Python and NumPy generator states
``history``         the metrics of every completed epoch
==================  ========================================================================

Writing goes to a temporary file in the same folder, which is flushed, fsync'ed and then renamed
over the old checkpoint (``os.replace`` is atomic): a crash at any moment leaves either the old
or the new checkpoint, never a broken one.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import CheckpointError

FORMAT = "pyro-vae-checkpoint"
FORMAT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"


def get_rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from, as tensors and lists."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, or raise :class:`CheckpointError` saying what is wrong and what to do."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}; train a model first with 'pyro-vae train --out "
            f"{path.parent}' or point to an existing run folder"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile, AttributeError, IndexError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a pyro-vae file: "
            f"{first[:120]}); point to a run folder or its {CHECKPOINT_NAME}, and if this is a "
            "damaged checkpoint, re-train or restore it from a backup"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a pyro-vae checkpoint; point to the "
            f"{CHECKPOINT_NAME} that 'pyro-vae train' wrote"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this pyro-vae reads format "
            f"{FORMAT_VERSION}; use the pyro-vae version that wrote it, or re-train"
        )
    missing = [k for k in ("config", "data", "epoch", "modules", "params", "optimizer", "rng",
                           "history") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is damaged; delete it and re-train")
    return payload
