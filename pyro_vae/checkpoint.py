"""Checkpoints: what one holds, built and read here only, written atomically, read with clear
errors; and :func:`save` / :func:`load` of a model trained by any loop.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(weights_only=True)``, so no pickled code runs on load):

=====================  =====================================================================
``format``             ``"pyro-vae-checkpoint"``; ``format_version`` its layout version (4;
                       versions 3 and 2 — 2 with ``modules`` instead of ``model`` — are
                       read too, without the checksum)
``checksum``           SHA-256 of everything else (:func:`payload_digest`), verified on load
``config``             the resolved :class:`~pyro_vae.config.Config` as a dict, or ``None``
                       for a hand-built model (then :func:`load` needs the model object)
``data``               ``event_shape``, ``num_data``, ``num_classes`` of the training data
``epoch``              epochs completed; ``global_step`` optimization steps taken
``model``              ``vae.state_dict()``: encoder, decoder, learned observation scale
``guide``              ``state_dict()`` of a user's guide module, or ``None``
``params``             other ``pyro.param`` values (unconstrained) by name, and
                       ``param_constraints`` their constraints by name
``optimizer``          names of the trained tensors, torch optimizer and LR-scheduler state
                       (``None`` for a model saved outside a trainer)
``rng``                torch (and CUDA), Python and NumPy generator states
``history``            the metrics of every completed epoch
=====================  =====================================================================

Writing goes to a temporary file in the same folder, which is flushed, fsync'ed and then renamed
over the old checkpoint (``os.replace`` is atomic): a crash at any moment leaves either the old
or the new checkpoint, never a broken one. Reading verifies the checksum (torch's zip reader
does not check the archive's CRCs, so a flipped byte inside a tensor used to load as a wrong
number) and the type of every field, each failure a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn
from torch.distributions import constraints, transform_to

from pyro_vae.config import Config
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.models.builder import build_vae
from pyro_vae.models.vae import VAE
from pyro_vae.nn.module import module_of

FORMAT = "pyro-vae-checkpoint"
FORMAT_VERSION = 4
#: Older layouts this version still reads (without a checksum to verify).
READABLE_VERSIONS = (2, 3, 4)
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


def payload_digest(payload: Any) -> str:
    """SHA-256 over a payload's structure and content: dict keys in sorted order, every
    tensor's dtype, shape and bytes, and every other value's type and ``repr``."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"{type(value).__name__[0]}{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            h.update(f"{type(value).__name__}:{value!r}".encode())

    walk(payload)
    return h.hexdigest()


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename), with its
    checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    payload["checksum"] = payload_digest(payload)
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
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, this pyro-vae reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}; use the pyro-vae version that wrote it, "
            "or re-train"
        )
    if version >= 4:
        stored = payload.pop("checksum", None)
        if stored != payload_digest(payload):
            raise CheckpointError(
                f"{path} is corrupt: its content does not match its checksum (a damaged or "
                "edited file); restore it from a backup or re-train")
    if version == 2:
        payload = _upgrade_v2(payload)
    missing = [k for k in ("config", "data", "epoch", "model", "params", "optimizer", "rng",
                           "history") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is damaged; delete it and re-train")
    check_payload_fields(payload, path)
    return payload


def check_payload_fields(payload: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first field of the wrong type or value."""

    def bad(field: str, want: str) -> CheckpointError:
        got = payload.get(field) if "." not in field else None
        shown = f" (got {type(got).__name__})" if "." not in field else ""
        return CheckpointError(f"{path} is damaged: its field {field!r} should be {want}"
                               f"{shown}; restore it from a backup or re-train")

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    for field in ("epoch", "global_step"):
        if field in payload and not is_count(payload[field]):
            raise bad(field, "an integer ≥ 0")
    if payload["config"] is not None and not isinstance(payload["config"], dict):
        raise bad("config", "a dict or None")
    data = payload["data"]
    if not isinstance(data, dict):
        raise bad("data", "a dict")
    shape = data.get("event_shape")
    if not isinstance(shape, (list, tuple)) or not all(is_count(d) and d > 0 for d in shape):
        raise bad("data.event_shape", "a list of positive integers")
    for key in ("num_data", "num_classes"):
        if data.get(key) is not None and not (is_count(data[key]) and data[key] > 0):
            raise bad(f"data.{key}", "a positive integer or None")
    for field in ("model", "params"):
        value = payload[field]
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(
                v, torch.Tensor) for k, v in value.items()):
            raise bad(field, "a dict of tensors by name")
    if payload.get("guide") is not None and not isinstance(payload["guide"], dict):
        raise bad("guide", "a dict of tensors or None")
    history = payload["history"]
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise bad("history", "a list of per-epoch dicts")
    for row in history:
        if not all(isinstance(v, (int, float, str, type(None))) for v in row.values()):
            raise bad("history", "a list of dicts of numbers")
        epoch = row.get("epoch")
        if epoch is not None and not (is_count(epoch) or (isinstance(epoch, float)
                                                          and math.isfinite(epoch))):
            raise bad("history", "a list of dicts whose 'epoch' is a count")
    if payload["optimizer"] is not None and not isinstance(payload["optimizer"], dict):
        raise bad("optimizer", "a dict or None")
    if not isinstance(payload["rng"], dict):
        raise bad("rng", "a dict of generator states")


# --------------------------------------------------------------------------- the payload
#: Constraints a checkpoint records by name (torch constraint objects are not plain data).
CONSTRAINTS: dict[str, constraints.Constraint] = {
    "real": constraints.real, "positive": constraints.positive,
    "unit_interval": constraints.unit_interval, "simplex": constraints.simplex,
    "lower_cholesky": constraints.lower_cholesky,
    "positive_definite": constraints.positive_definite,
}


def _constraint_name(constraint: constraints.Constraint, param: str) -> str:
    for name, known in CONSTRAINTS.items():
        if constraint is known or (type(constraint) is type(known) and constraint == known):
            return name
    raise CheckpointError(
        f"pyro.param {param!r} has constraint {constraint}, which a checkpoint cannot record "
        f"(it records {', '.join(CONSTRAINTS)}); use one of those, or save that param yourself"
    )


def guide_module(guide: Any) -> nn.Module | None:
    """The ``nn.Module`` that owns a guide (the guide itself, or the module of a bound method),
    or ``None``."""
    return module_of(guide)


def _store_params(vae: nn.Module, guide: Any) -> dict[str, torch.Tensor]:
    """Unconstrained param-store values that neither the model nor the guide module holds."""
    held = {id(p) for p in vae.parameters()}
    owner = guide_module(guide)
    if owner is not None and owner is not vae:
        held |= {id(p) for p in owner.parameters()}
    store = pyro.get_param_store()
    return {name: value for name, value in store.named_parameters() if id(value) not in held
            and not name.startswith("__baseline")}


def data_description(vae: VAE | Any, num_data: int | None = None,
                     num_classes: int | None = None) -> dict[str, Any]:
    """The ``data`` entry: event shape, data size and classes the model was trained on."""
    return {"event_shape": list(getattr(vae, "event_shape", ())),
            "num_data": num_data if num_data is not None else getattr(vae, "num_data", None),
            "num_classes": num_classes if num_classes is not None
            else getattr(vae, "num_classes", None)}


def checkpoint_payload(
    vae: nn.Module, *, config: Config | None = None, guide: Any = None,
    data: dict[str, Any] | None = None, epoch: int = 0, global_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None, trained: list[str] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds for ``vae`` (and a user's ``guide``), see the module
    docstring; ``optimizer`` over the tensors named ``trained``."""
    store = pyro.get_param_store()
    params = _store_params(vae, guide)
    owner = guide_module(guide)
    return {
        "config": None if config is None else config.to_dict(),
        "data": data if data is not None else data_description(vae),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "model": {k: v.detach().clone() for k, v in vae.state_dict().items()},
        "guide": None if owner is None or owner is vae else owner.state_dict(),
        "params": {name: value.detach().clone() for name, value in params.items()},
        "param_constraints": {name: _constraint_name(store._constraints[name], name)
                              for name in params},
        "optimizer": None if optimizer is None else {
            "params": list(trained or []),
            "state": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
        },
        "rng": get_rng_state(),
        "history": list(history or []),
    }


def _load_into(module: nn.Module, state: Any, what: str) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"the checkpoint's {what} weights are missing or damaged; "
                              "re-train, or restore the file from a backup")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"the checkpoint's {what} does not fit this model ({first}); it was written for "
            "another configuration: build the model with the same options, or train afresh"
        ) from None
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"the checkpoint's {what} weight {name!r} holds NaN or "
                                  "infinite values; re-train, or use an earlier checkpoint")


def restore_model(vae: nn.Module, payload: dict[str, Any], guide: Any = None) -> None:
    """Load a checkpoint's weights into ``vae`` (and the guide module), in place, and its other
    ``pyro.param`` values into the param store.

    Loading in place keeps every tensor's identity, so the param store, the optimizer and the
    forward pass keep sharing them: nothing is shadowed.
    """
    _load_into(vae, payload["model"], "model")
    owner = guide_module(guide)
    if payload.get("guide") is not None:
        if owner is None or owner is vae:
            raise CheckpointError("the checkpoint holds the weights of a guide module; pass "
                                  "that guide (guide=...) to load them")
        _load_into(owner, payload["guide"], "guide")
    store = pyro.get_param_store()
    names = payload.get("param_constraints", {})
    for name, value in payload["params"].items():
        constraint = CONSTRAINTS.get(names.get(name, "real"), constraints.real)
        if name in store._params and store._params[name].shape == value.shape:
            with torch.no_grad():
                store._params[name].copy_(value)
        else:
            if name in store._params:
                del store[name]
            with torch.no_grad():
                store.setdefault(name, transform_to(constraint)(value), constraint)


def _upgrade_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """A format-2 payload in the format-3 layout: networks and the learned scale under
    ``model``, other params unchanged."""
    payload = dict(payload)
    modules = payload.pop("modules", None)
    if not isinstance(modules, dict):
        return payload  # reported as damaged by the caller's check
    model = {f"{net}.{k}": v for net, sd in modules.items() if isinstance(sd, dict)
             for k, v in sd.items()}
    params = dict(payload.get("params") or {})
    if "obs_scale" in params:
        model["obs_scale_unconstrained"] = params.pop("obs_scale")
    payload.update(model=model, guide=None, params=params, param_constraints={},
                   format_version=FORMAT_VERSION)
    return payload


def save(vae: VAE, path: str | Path, *, config: Config | None = None, guide: Any = None,
         history: list[dict[str, Any]] | None = None) -> Path:
    """Save a model trained by any loop (``SVI``, the trainer, your own) as a checkpoint.

    :param path: a file, or a folder (then ``<folder>/checkpoint.pt``, a run folder that
        ``pyro-vae evaluate / sample / plot`` read when ``config`` is given).
    :param config: the configuration that builds this model (:func:`pyro_vae.build_vae`);
        without it :func:`load` needs the model object to load into.
    :param guide: a guide other than ``vae.guide``: its module's weights and params are saved.
    :returns: the checkpoint file written.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / CHECKPOINT_NAME
    save_checkpoint(checkpoint_payload(vae, config=config, guide=guide, history=history), path)
    return path


def load(path: str | Path, vae: VAE | None = None, *, guide: Any = None,
         map_location: str | torch.device = "cpu") -> VAE:
    """Load a checkpoint into ``vae`` or, when ``vae`` is ``None``, into the model its stored
    configuration builds; returns the model, in eval mode.

    :raises CheckpointError: unreadable file, weights that do not fit, or no way to build the
        model (a hand-built model's checkpoint loaded without ``vae``).
    """
    payload = load_checkpoint(path, map_location=map_location)
    if vae is None:
        vae = model_from_payload(payload)
    restore_model(vae.to(map_location), payload, guide)
    return vae.eval()


def model_from_payload(payload: dict[str, Any]) -> VAE:
    """The VAE that a checkpoint's configuration describes, with fresh weights."""
    if payload["config"] is None:
        raise CheckpointError("this checkpoint holds a hand-built model and no configuration; "
                              "build the model yourself and pass it: load(path, vae)")
    try:
        config = Config.from_dict(payload["config"])
        meta = payload["data"]
        return build_vae(config, meta["event_shape"], meta["num_data"], meta["num_classes"])
    except (ConfigError, TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's configuration is unreadable ({exc}); it is "
                              "damaged or from another version: re-train") from None
