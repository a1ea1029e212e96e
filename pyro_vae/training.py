"""Stochastic variational inference for a :class:`~pyro_vae.vae.VAE`, epoch by epoch.

The trainer keeps the data as tensors on the chosen device and cuts each mini-batch by
indexing a random permutation; the batch's indices go to the ``"data"`` plate so that each
step's loss estimates ``-ELBO`` of the whole training set (scale N/B). Every step it evaluates
the KL schedule β(t) and passes it to model and guide.

One step is what ``pyro.infer.SVI.step`` does, driven more cheaply:

1. ``loss = elbo.differentiable_loss(model, guide, x, y, indices, β)``: Pyro's own ELBO
   (``Trace_ELBO``, ``TraceMeanField_ELBO`` or their JIT versions) on the unchanged ``model``
   and ``guide``, returning the surrogate whose gradient is the ELBO gradient estimate;
2. ``loss.backward()``;
3. a finiteness check of the loss and of every gradient entry: a NaN or infinite value
   never reaches the parameters (the run stops with :class:`TrainingDivergedError` naming the
   epoch and step or, with ``skip_nonfinite``, the step is skipped and counted);
4. one ``torch.optim`` optimizer step over every trainable tensor (network weights and the
   unconstrained ``pyro.param`` values) at once.

Distribution and trace validation (``pyro.enable_validation``) runs on the first step of a
trainer, which checks every site's arguments and support once; later steps run with it off,
since the same code meets tensors of the same kind. Training ``vae.model`` / ``vae.guide``
with ``pyro.infer.SVI`` directly gives the same updates, only slower
(``benchmarks/train_speed.py`` measures both against hand-written PyTorch).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.distributions import constraints

from pyro_vae.annealing import KLSchedule
from pyro_vae.checkpoint import get_rng_state, set_rng_state
from pyro_vae.config import Config
from pyro_vae.data import DataSet
from pyro_vae.errors import CheckpointError, TrainingDivergedError
from pyro_vae.evaluation import evaluate_elbo
from pyro_vae.factory import build_optimizer, build_vae
from pyro_vae.objectives import make_elbo
from pyro_vae.sites import OBS_SCALE_PARAM
from pyro_vae.vae import VAE

#: Training ELBO and its split are evaluated on at most this many training points per epoch.
TRAIN_EVAL_POINTS = 10000


class NonFiniteStepError(Exception):
    """A step's loss or gradient was NaN or infinite; ``args[0]`` is the loss."""


def all_finite(loss: float, grads: list[torch.Tensor]) -> bool:
    """True when ``loss`` and every gradient entry are finite.

    The gradients are scanned in one pass by the kernel ``torch.amp.GradScaler`` uses to skip
    steps with inf/NaN gradients (``torch._amp_foreach_non_finite_check_and_unscale_``, with a
    scale of exactly 1, which leaves them unchanged): about 10 µs for a small network, against
    60 µs for a total norm. Gradients on several devices or of mixed dtypes, which that kernel
    rejects, are checked through their total 2-norm (finite exactly when every entry is, short
    of overflow past 3e38).
    """
    if not math.isfinite(loss):
        return False
    if not grads:
        return True
    device = grads[0].device
    found_inf = torch.zeros(1, device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
                                                         torch.ones(1, device=device))
    except RuntimeError:
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    return not found_inf.item()


def trainable_params(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """Every tensor SVI on ``vae`` trains, by param-store name, in a fixed (sorted) order.

    Runs guide and model once on the few points ``x`` (labels ``y`` for a conditional VAE), so
    that ``pyro.module`` registers the networks and each ``pyro.param`` is created; the random
    state is restored after, the networks are in eval mode (batch-norm statistics untouched) and
    no graph is built. For constrained params the tensor is the unconstrained one, as ``SVI``
    optimizes it.
    """
    idx = torch.arange(x.shape[0], device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    was_training = vae.encoder.training
    vae.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), \
                poutine.trace(param_only=True) as capture:
            vae.guide(x, y, idx)
            vae.model(x, y, idx)
    finally:
        vae.train(was_training)
    found = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    return dict(sorted(found.items()))


def train_eval_subset(config: Config, data: DataSet) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first :data:`TRAIN_EVAL_POINTS` training points (and labels) on which the training
    ELBO is reported each epoch; with dynamic binarization, binarized once with a fixed
    generator (``split_seed + 1``), as the test set is."""
    x = data.x_train[:TRAIN_EVAL_POINTS]
    y = None if data.y_train is None else data.y_train[:TRAIN_EVAL_POINTS]
    if config.binarize == "dynamic":
        gen = torch.Generator().manual_seed(config.split_seed + 1)
        x = torch.bernoulli(x.cpu(), generator=gen).to(x.device)
    return x, y


def epoch_metrics(vae: VAE, data: DataSet, x_train: torch.Tensor,
                  y_train: torch.Tensor | None, num_samples: int) -> dict[str, float]:
    """``train_elbo`` / ``train_recon`` / ``train_kl`` on ``x_train`` (the subset of
    :func:`train_eval_subset`), ``test_*`` on the test set, each with its ``*_se``."""
    out: dict[str, float] = {}
    y_test = data.y_test if vae.conditional else None
    y_train = y_train if vae.conditional else None
    for split, x, y in (("train", x_train, y_train), ("test", data.x_test, y_test)):
        for key, est in evaluate_elbo(vae, x, y, num_samples=num_samples).items():
            out[f"{split}_{key}"] = est.mean
            out[f"{split}_{key}_se"] = est.stderr
    return out


def checkpoint_state(config: Config, vae: VAE, data: DataSet, *, epoch: int, global_step: int,
                     trained: list[str], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                     history: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint payload (format in :mod:`pyro_vae.checkpoint`): ``vae``'s networks, the
    other ``pyro.param`` values of the param store, and ``optimizer`` over the tensors named
    ``trained``."""
    module_prefixes = tuple(f"{name}$$$" for name in vae.modules())
    unconstrained = pyro.get_param_store().get_state()["params"]
    params = {name: value.detach().clone() for name, value in unconstrained.items()
              if not name.startswith(module_prefixes)}
    return {
        "config": config.to_dict(),
        "data": {"event_shape": list(vae.event_shape),
                 "num_data": int(data.x_train.shape[0]),
                 "num_classes": data.num_classes},
        "epoch": epoch,
        "global_step": global_step,
        "modules": {name: m.state_dict() for name, m in vae.modules().items()},
        "params": params,
        "optimizer": {
            "params": list(trained),
            "state": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
        },
        "rng": get_rng_state(),
        "history": history,
    }


def binarize(x: torch.Tensor) -> torch.Tensor:
    """One draw x_bin ~ Bernoulli(x) per pixel (dynamic binarization)."""
    return torch.bernoulli(x)


class Trainer:
    """Trains ``config``'s VAE on ``data`` (already validated and on ``device``).

    :attr:`history` holds one dict per completed epoch with ``train_loss`` (the optimized
    objective per point, β-weighted), ``train_elbo`` / ``train_recon`` / ``train_kl`` (on up to
    :data:`TRAIN_EVAL_POINTS` training points, β = 1), ``test_elbo`` / ``test_recon`` /
    ``test_kl`` with standard errors, ``beta``, ``lr``, ``seconds`` and ``skipped_steps``.
    """

    def __init__(self, config: Config, data: DataSet, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.data = data.to(self.device)
        pyro.clear_param_store()
        self.vae: VAE = build_vae(config, data.event_shape, num_data=data.x_train.shape[0],
                                  num_classes=data.num_classes).to(self.device)
        self.elbo = make_elbo(config.elbo, config.num_particles, config.jit)
        self.model, self.guide = self._programs()
        self.params = self._discover_params()
        self.optimizer, self.scheduler = build_optimizer(config, self.params.values())
        self._validated = False
        self._compiled: set[int] = set()  # batch sizes the JIT ELBO is compiled for
        n = data.x_train.shape[0]
        self.steps_per_epoch = math.ceil(n / config.batch_size)
        self.kl_schedule = KLSchedule.for_run(config, self.steps_per_epoch)
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self._x_eval_train, self._y_eval_train = train_eval_subset(config, self.data)

    # ------------------------------------------------------------------ programs for SVI
    def _programs(self):
        """Model and guide as SVI sees them. With JIT, every positional argument must be a
        tensor and the batch size is a keyword, so each batch size compiles once."""
        vae = self.vae
        if not self.config.jit:
            return vae.model, vae.guide
        if vae.conditional:
            def model(x, y, indices, beta, batch_size=None):
                return vae.model(x, y, indices, beta)

            def guide(x, y, indices, beta, batch_size=None):
                return vae.guide(x, y, indices, beta)
        else:
            def model(x, indices, beta, batch_size=None):
                return vae.model(x, None, indices, beta)

            def guide(x, indices, beta, batch_size=None):
                return vae.guide(x, None, indices, beta)
        return model, guide

    def _discover_params(self) -> dict[str, torch.Tensor]:
        y = self.data.y_train[:2] if self.vae.conditional else None
        return trainable_params(self.vae, self.data.x_train[:2], y)

    def _loss(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if not self.config.jit:
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        # Run the traced graph op by op, so that autograd differentiates it as in eager mode:
        # on CPU that is faster than the graph executor's own symbolic autodiff.
        with torch.jit.optimized_execution(False):
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def _compile(self, args: tuple, kwargs: dict) -> None:
        """Compile the JIT ELBO for this batch size ahead of the real step, with the random
        state and the networks' buffers (batch-norm statistics) restored afterwards: compiling
        runs model and guide several times, and a resumed run, which compiles again, must draw
        the same numbers as an uninterrupted one."""
        buffers = [b for m in self.vae.modules().values() for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._loss(args, kwargs)
        with torch.no_grad():
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)
        self._compiled.add(kwargs["batch_size"])

    def _step(self, args: tuple, kwargs: dict) -> float:
        """One optimization step on a mini-batch; returns the loss (-ELBO estimate, scaled to
        the full data set). Raises :class:`NonFiniteStepError` without touching parameters."""
        checking = contextlib.nullcontext() if not self._validated \
            else pyro.validation_enabled(False)
        with checking:
            try:
                if self.config.jit and kwargs["batch_size"] not in self._compiled:
                    self._compile(args, kwargs)
                loss = self._loss(args, kwargs)
            except ValueError as exc:
                # Distribution validation rejects NaN/inf parameters (e.g. logits of a decoder
                # whose weights diverged, or an overflowing encoder scale): a divergence.
                if "invalid values" not in str(exc):
                    raise
                raise NonFiniteStepError(float("nan")) from None
        self._validated = True
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not all_finite(value, [p.grad for p in self.params.values() if p.grad is not None]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStepError(value)
        self.optimizer.step()
        return value

    def _step_args(self, x, y, idx, beta: float) -> tuple[tuple, dict]:
        if not self.config.jit:
            return (x, y, idx, beta), {}
        b = torch.tensor(beta, device=self.device)
        args = (x, y, idx, b) if self.vae.conditional else (x, idx, b)
        return args, {"batch_size": int(x.shape[0])}

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training data in random mini-batches; returns the epoch's metrics."""
        cfg = self.config
        x_all, y_all = self.data.x_train, self.data.y_train
        n = x_all.shape[0]
        start = time.perf_counter()
        perm = torch.randperm(n).to(self.device)
        total, points, skipped = 0.0, 0, 0
        self.vae.train()
        for step, idx in enumerate(perm.split(cfg.batch_size)):
            x = x_all[idx]
            if cfg.binarize == "dynamic":
                x = binarize(x)
            y = None if y_all is None else y_all[idx]
            beta = self.kl_schedule(self.global_step)
            args, kwargs = self._step_args(x, y if self.vae.conditional else None, idx, beta)
            try:
                loss = self._step(args, kwargs)
            except NonFiniteStepError as bad:
                if not cfg.skip_nonfinite:
                    raise TrainingDivergedError(
                        f"the loss or a gradient became {bad.args[0]} at epoch {self.epoch + 1}, "
                        f"step {step + 1}; the last good checkpoint (epoch {self.epoch}) is kept: "
                        "lower --lr, use --optimizer clipped-adam, or pass --skip-nonfinite"
                    ) from None
                skipped += 1
                loss = float("nan")
            else:
                # the loss estimates -(objective summed over all N points): per point, loss / N
                total += loss / n * x.shape[0]
                points += x.shape[0]
            self.global_step += 1
        train_seconds = time.perf_counter() - start
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        metrics: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": total / points if points else float("nan"),
            "beta": self.kl_schedule(self.global_step - 1),
            "lr": self.current_lr(),
            "seconds": train_seconds,
            "skipped_steps": skipped,
        }
        metrics.update(self.evaluate())
        if OBS_SCALE_PARAM in pyro.get_param_store():
            metrics["obs_scale"] = float(pyro.param(OBS_SCALE_PARAM).detach())
        self.history.append(metrics)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """ELBO, reconstruction and KL per point on the test set and a training subset."""
        return epoch_metrics(self.vae, self.data, self._x_eval_train, self._y_eval_train,
                             self.config.eval_samples)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return checkpoint_state(self.config, self.vae, self.data, epoch=self.epoch,
                                global_step=self.global_step, trained=list(self.params),
                                optimizer=self.optimizer, scheduler=self.scheduler,
                                history=self.history)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore networks, params, optimizer, RNG and history from a checkpoint."""
        restore_model_state(self.vae, state)
        # the param store now holds new tensors for the restored pyro.params: re-collect
        # them and rebuild the optimizer over them before loading its saved state
        self.params = self._discover_params()
        saved = state["optimizer"]
        if saved["params"] != list(self.params):
            raise CheckpointError(
                f"the checkpoint's optimizer trains {saved['params']}, this model "
                f"{list(self.params)}: it was written for another configuration; use the same "
                "options, or train afresh"
            )
        self.optimizer, self.scheduler = build_optimizer(self.config, self.params.values())
        self.optimizer.load_state_dict(saved["state"])
        if self.scheduler is not None and saved["scheduler"] is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])


def restore_model_state(vae: VAE, state: dict[str, Any]) -> None:
    """Load a checkpoint's networks and ``pyro.param`` values into ``vae`` and the param store.

    The param store is cleared first, so that ``pyro.module`` registers the loaded network
    tensors themselves on the next call (a stale store entry would otherwise shadow them).
    """
    pyro.clear_param_store()
    for name, module in vae.modules().items():
        try:
            module.load_state_dict(state["modules"][name])
        except (KeyError, RuntimeError) as exc:
            first = str(exc).splitlines()[0][:160]
            raise CheckpointError(
                f"the checkpoint's {name} does not fit this model ({first}); it was written for "
                "another configuration: use the same options, or train afresh"
            ) from None
    if state["params"]:
        known = {OBS_SCALE_PARAM: constraints.positive}
        pyro.get_param_store().set_state({
            # saved detached: make them leaves that the optimizer can train again
            "params": {n: v.clone().requires_grad_(True) for n, v in state["params"].items()},
            "constraints": {name: known.get(name, constraints.real) for name in state["params"]},
        })
