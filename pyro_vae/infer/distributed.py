"""Data-parallel training of the same ``model`` / ``guide`` on PyTorch Lightning.

This is Pyro's own recipe (``examples/svi_lightning.py``) for a VAE: a ``LightningModule`` whose
``training_step`` returns ``elbo.differentiable_loss(model, guide, x, y, indices, β)`` — the
objective and estimator the configuration names, built by the single-process
:class:`~pyro_vae.infer.trainer.Trainer` itself (its :meth:`~pyro_vae.infer.trainer.Trainer.loss`),
so both train the same thing;
Lightning's ``DistributedSampler`` gives each of the W workers a different 1/W of every epoch's
shuffled indices, and DDP averages the workers' gradients.

Why the gradient is right: every worker's mini-batch of B indices goes to the ``"data"`` plate
with ``size=N`` (the full data set), so its loss is scaled by N/B and its gradient g_w is an
unbiased estimate of ∇ELBO of the whole data set. DDP applies the average (1/W) Σ_w g_w, again
unbiased for the same gradient, with the variance of one step on W·B points. The ELBO that is
logged and evaluated is that of the full training / test set.

The VAE is an ``nn.Module`` that owns every trained tensor (networks and a learned σ), so all of
them are DDP parameters and are synchronized by DDP itself.

:func:`train_distributed` returns the checkpoint payload (the library's own format) and a
summary — the number of workers, the throughput, and the largest difference between any two
workers' final parameters (0 when they are in sync) — which :mod:`pyro_vae.runs` writes to the
run folder, so ``pyro-vae evaluate / sample / plot`` work on it unchanged.

Needs the optional extra: ``pip install "pyro-vae[lightning]"``.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.checkpoint import checkpoint_payload, data_description
from pyro_vae.config import Config
from pyro_vae.data import DataSet
from pyro_vae.errors import ConfigError
from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.batches import Batch
from pyro_vae.infer.steps import all_finite
from pyro_vae.infer.trainer import Trainer

try:
    import lightning as L
except ImportError:  # pragma: no cover - exercised only without the extra
    L = None


def _require_lightning() -> None:
    if L is None:
        raise ConfigError("--strategy ddp needs PyTorch Lightning: pip install "
                          "'pyro-vae[lightning]' (or pip install lightning); "
                          "or use --strategy single")


#: how long the workers of a DDP run wait for each other to join before the run stops with a
#: one-line error (torch's default is 30 minutes, Lightning's the same)
RENDEZVOUS_SECONDS = 60

_LightningModule = L.LightningModule if L is not None else torch.nn.Module


class VAELightningModule(_LightningModule):
    """The trainer's objective on Lightning: a :class:`~pyro_vae.infer.trainer.Trainer` built
    from ``config`` supplies the model, guide, loss (the configured objective and estimator),
    trainable tensors, β schedule and metrics; ``training_step`` returns that trainer's
    :meth:`~pyro_vae.infer.trainer.Trainer.loss` on the worker's mini-batch. The trained tensors
    are parameters of this module (the VAE, and any other module parameter the objective trains,
    such as a score-function baseline network), so DDP synchronizes all of them; a trained
    tensor that belongs to no module is refused. A step whose loss or synchronized gradient is
    not finite is not applied: counted in ``skipped_steps`` with ``--skip-nonfinite``, else the
    run stops with :class:`~pyro_vae.errors.TrainingDivergedError`."""

    def __init__(self, config: Config, data: DataSet) -> None:
        super().__init__()
        self.config = config
        core = Trainer.from_config(config.replace(compile=False, jit=False), data)
        self.core = core
        self.vae = core.vae
        own = {id(p) for p in self.vae.parameters()}
        extra = [t for t in core.params.values() if id(t) not in own]
        loose = [name for name, t in core.params.items()
                 if id(t) not in own and not isinstance(t, torch.nn.Parameter)]
        if loose:
            raise ConfigError(f"--strategy ddp synchronizes module parameters, and {loose[0]!r} "
                              "is a bare pyro.param; use --strategy single")
        self.others = torch.nn.ParameterList(extra)
        self.data = data
        self.trained = core.params
        workers = config.devices * config.num_nodes  # each sees ⌈N / W⌉ points per epoch
        steps = math.ceil(math.ceil(data.x_train.shape[0] / workers) / config.batch_size)
        self.kl_schedule = KLSchedule.for_run(core.config, steps)
        self.history: list[dict[str, Any]] = []
        self._epoch_start = 0.0
        self._epoch_total, self._epoch_points = 0.0, 0
        self._skipped = 0
        self._last_loss = float("nan")

    def on_train_start(self) -> None:
        # identical initial weights everywhere (same seed), different noise per worker
        torch.manual_seed(self.config.seed + 1000 * self.global_rank)
        self.data = self.data.to(self.device)
        self.core.use_data(self.data)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_total, self._epoch_points = 0.0, 0
        self._skipped = 0

    def batch(self, idx: torch.Tensor) -> Batch:
        """The trainer's mini-batch of these indices (its batch plan builds it)."""
        return self.core.batches.batch(idx)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (idx,) = batch
        step = self.batch(idx)
        beta = self.core.schedule(self.global_step, self.kl_schedule)  # β and τ, per step
        loss = self.core.loss(*step.args, beta)
        self._last_loss = float(loss.detach())
        if math.isfinite(self._last_loss):
            self._epoch_total += self._last_loss / self.core.full_size(step) * step.points
            self._epoch_points += step.points
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step with the trainer's finiteness check: the closure computes the loss
        and the synchronized gradients; the update is applied only when all are finite (the
        same decision on every worker: DDP's gradients are identical)."""
        optimizer_closure()
        grads = [p.grad for p in self.trained.values() if p.grad is not None]
        if all_finite(self._last_loss, grads):
            optimizer.step()
            return
        optimizer.zero_grad()
        if not self.config.skip_nonfinite:
            raise self.core.diverged(self._last_loss, batch_idx + 1)
        self._skipped += 1

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        points = self._epoch_points
        metrics: dict[str, Any] = {
            "epoch": self.current_epoch + 1, "seconds": seconds,
            "train_loss": self._epoch_total / points if points else float("nan"),
            "beta": self.kl_schedule(self.global_step - 1), "skipped_steps": self._skipped,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "step_path": "ddp",
        }
        self.core.epoch = self.current_epoch
        metrics.update(self.core.evaluate())
        self.history.append(metrics)

    def configure_optimizers(self):
        optimizer, scheduler = self.core.optimizer, self.core.scheduler
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in self.trained.values()])


@dataclass
class DistributedResult:
    """What the global-zero worker returns: the checkpoint payload, the summary
    (``distributed.json``) and the device it trained on."""

    payload: dict[str, Any]
    summary: dict[str, Any]
    device: torch.device


def _release_process_group() -> None:
    """Destroy the default process group if one is initialized in this process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train_distributed(config: Config, data: DataSet,
                      progress: bool = True) -> DistributedResult | None:
    """Train with ``config.strategy`` on ``config.devices`` × ``config.num_nodes`` workers.

    Returns the result on the global-zero worker, ``None`` on the others.
    """
    _require_lightning()
    L.seed_everything(config.seed, verbose=False)
    module = VAELightningModule(config, data)
    accelerator = {"auto": "auto"}.get(config.device,
                                       "gpu" if config.device.startswith("cuda") else "cpu")
    if accelerator == "gpu" and config.devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {config.devices} asks for more GPUs than this machine has "
                          f"({torch.cuda.device_count()}); give at most that many")
    if accelerator == "cpu" and config.devices > (os.cpu_count() or 1):
        raise ConfigError(f"--devices {config.devices} asks for more CPU worker processes than "
                          f"this machine has cores ({os.cpu_count()}); give at most that many")
    from lightning.pytorch.strategies import DDPStrategy

    strategy = DDPStrategy(timeout=datetime.timedelta(seconds=RENDEZVOUS_SECONDS)) \
        if config.strategy == "ddp" else config.strategy
    trainer = L.Trainer(
        accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=strategy, max_epochs=config.epochs, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=True, num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(data.x_train.shape[0])),
        batch_size=config.batch_size, shuffle=True)
    start = time.perf_counter()
    # the process group is this run's: one left behind by an earlier run in the same process
    # would be reused by Lightning whatever its size (a --num-nodes 2 run would then train alone)
    _release_process_group()
    try:
        try:
            trainer.fit(module, loader)
        except (RuntimeError, torch.distributed.DistStoreError) as exc:
            if "timed out" not in str(exc).lower() and "timeout" not in str(exc).lower():
                raise
            raise ConfigError(
                f"the {config.devices * config.num_nodes} DDP workers did not all join within "
                f"{RENDEZVOUS_SECONDS} s (--num-nodes {config.num_nodes}: start the same command "
                "on every node, with MASTER_ADDR / MASTER_PORT / NODE_RANK set), or use "
                "--num-nodes 1") from None
        seconds = time.perf_counter() - start
        flat = module.flat_parameters()
        spread = 0.0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(gathered, flat)
            spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
    finally:
        _release_process_group()
    if not trainer.is_global_zero:
        return None

    # the scheduler's state is not saved: a ddp run is not resumed
    payload = checkpoint_payload(
        module.vae, config=config, data=data_description(module.vae, data.x_train.shape[0],
                                                         data.num_classes),
        epoch=config.epochs, global_step=int(trainer.global_step),
        optimizer=trainer.optimizers[0], trained=list(module.trained), history=module.history)
    workers = config.devices * config.num_nodes
    summary = {
        "strategy": config.strategy, "workers": workers, "devices": config.devices,
        "num_nodes": config.num_nodes, "accelerator": accelerator, "seconds": seconds,
        "median_epoch_seconds": statistics.median(h["seconds"] for h in module.history),
        "max_parameter_difference_between_workers": spread,
    }
    summary["train_points_per_second"] = data.x_train.shape[0] / summary["median_epoch_seconds"]
    return DistributedResult(payload, summary, module.device)
