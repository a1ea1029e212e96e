"""Data-parallel training of the same ``model`` / ``guide`` on PyTorch Lightning.

This is Pyro's own recipe (``examples/svi_lightning.py``) for a VAE: a ``LightningModule`` whose
``training_step`` returns ``elbo.differentiable_loss(vae.model, vae.guide, x, y, indices, β)``;
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

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae.checkpoint import checkpoint_payload, data_description
from pyro_vae.config import Config
from pyro_vae.data import DataSet, binarize, train_eval_subset
from pyro_vae.errors import ConfigError
from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.optim import build_optimizer
from pyro_vae.infer.trainer import epoch_metrics, trainable_params
from pyro_vae.models.builder import build_vae

try:
    import lightning as L
except ImportError:  # pragma: no cover - exercised only without the extra
    L = None


def _require_lightning() -> None:
    if L is None:
        raise ConfigError("--strategy ddp needs PyTorch Lightning: pip install "
                          "'pyro-vae[lightning]' (or pip install lightning); "
                          "or use --strategy single")


_LightningModule = L.LightningModule if L is not None else torch.nn.Module


class VAELightningModule(_LightningModule):
    """The VAE's networks as submodules (so DDP syncs them) and Pyro's ELBO as the loss."""

    def __init__(self, config: Config, data: DataSet) -> None:
        super().__init__()
        self.config = config
        self.data = data
        n = data.x_train.shape[0]
        self.vae = build_vae(config, data.event_shape, num_data=n, num_classes=data.num_classes)
        y = data.y_train[:2] if self.vae.conditional else None
        pyro.clear_param_store()
        self.trained = trainable_params(self.vae.model, self.vae.guide, data.x_train[:2], y,
                                        (self.vae,))
        self.elbo = make_elbo(config.elbo, config.num_particles, jit=False)
        workers = config.devices * config.num_nodes  # each sees ⌈N / W⌉ points per epoch
        steps = math.ceil(math.ceil(n / workers) / config.batch_size)
        self.kl_schedule = KLSchedule.for_run(config, steps)
        self.history: list[dict[str, Any]] = []
        self._epoch_start = 0.0
        self._epoch_loss: list[float] = []
        self._x_eval_train: torch.Tensor | None = None  # set on the worker's device
        self._y_eval_train: torch.Tensor | None = None

    def on_train_start(self) -> None:
        # identical initial weights everywhere (same seed), different noise per worker
        torch.manual_seed(self.config.seed + 1000 * self.global_rank)
        self.data = self.data.to(self.device)
        self._x_eval_train, self._y_eval_train = train_eval_subset(self.config, self.data)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_loss = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (idx,) = batch
        x = self.data.x_train[idx]
        if self.config.binarize == "dynamic":
            x = binarize(x)
        y = self.data.y_train[idx] if self.vae.conditional else None
        beta = self.kl_schedule(self.global_step)
        loss = self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, y, idx, beta)
        self._epoch_loss.append(float(loss.detach()) / self.data.x_train.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        metrics: dict[str, Any] = {
            "epoch": self.current_epoch + 1, "seconds": seconds,
            "train_loss": sum(self._epoch_loss) / max(1, len(self._epoch_loss)),
            "beta": self.kl_schedule(self.global_step - 1), "skipped_steps": 0,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        metrics.update(epoch_metrics(self.vae, self.data, self._x_eval_train,
                                     self._y_eval_train, self.config.eval_samples))
        scale = self.vae.obs_scale()
        if scale is not None:
            metrics["obs_scale"] = float(scale.detach())
        self.history.append(metrics)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.config, self.trained.values())
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
    trainer = L.Trainer(
        accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=config.strategy, max_epochs=config.epochs, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=True, num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(data.x_train.shape[0])),
        batch_size=config.batch_size, shuffle=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    flat = module.flat_parameters()
    spread = 0.0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, flat)
        spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
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
