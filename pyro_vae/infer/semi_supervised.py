"""Training the semi-supervised VAE (M2, :mod:`pyro_vae.models.m2`) on partly labelled data.

Of the N training points, ``config.labels`` are kept labelled — the same number of each class,
drawn with ``config.split_seed`` — and the others lose their labels. Every step takes one
mini-batch of unlabelled points and one of labelled points and minimizes

    −[ (N_u/B_u) Σ U(x) + (N_l/B_l) Σ L(x, y) + α (N_l/B_l) Σ log q(y | x) ]

an unbiased estimate of the paper's objective over the whole data set: U through
``TraceEnum_ELBO`` with y enumerated in the guide, L through ``Trace_ELBO`` with y observed, the
classification term through ``Trace_ELBO`` on :meth:`~pyro_vae.models.m2.SemiSupervisedVAE.
classify_model`. An epoch is one pass over the unlabelled points (the labelled ones are cycled).
The per-epoch metrics add ``test_accuracy`` (arg-max of q(y|x) on the test set) to the
trainer's ELBOs (y drawn from q(y|x), analytic KL at both sites).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae.config import Config
from pyro_vae.data.datasets import DataSet
from pyro_vae.data.preparation import binarize
from pyro_vae.errors import ConfigError, TrainingDivergedError
from pyro_vae.infer.trainer import NonFiniteStepError, Trainer
from pyro_vae.models.m2 import SemiSupervisedVAE


def labelled_subset(y: torch.Tensor, num_labels: int, num_classes: int, seed: int = 0
                    ) -> torch.Tensor:
    """Indices of ``num_labels`` points, as equal a number per class as ``num_labels`` allows
    (the first ``num_labels mod C`` classes get one more), drawn with ``seed``; sorted."""
    if num_labels < num_classes:
        raise ConfigError(f"--labels must be at least the number of classes ({num_classes}), "
                          f"got {num_labels}; e.g. --labels 100")
    if num_labels >= y.shape[0]:
        raise ConfigError(f"--labels {num_labels} leaves no unlabelled point among the "
                          f"{y.shape[0]} training points; give fewer labels")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (y.cpu() == c).nonzero().squeeze(-1)
        want = num_labels // num_classes + (1 if c < num_labels % num_classes else 0)
        if members.numel() < want:
            raise ConfigError(f"class {c} has {members.numel()} training points, fewer than the "
                              f"{want} labels asked of it; give fewer --labels")
        chosen.append(members[torch.randperm(members.numel(), generator=g)[:want]])
    return torch.cat(chosen).sort().values.to(y.device)


class SemiSupervisedTrainer(Trainer):
    """The :class:`~pyro_vae.infer.trainer.Trainer` of an M2 model (module docstring): same
    checkpoints, history, divergence handling and run folders; its own step."""

    def __init__(self, vae: SemiSupervisedVAE, data: DataSet, config: Config | None = None, *,
                 device: torch.device | str = "cpu") -> None:
        if not isinstance(vae, SemiSupervisedVAE):
            raise ConfigError("SemiSupervisedTrainer trains a SemiSupervisedVAE (--model m2)")
        if data.y_train is None:
            raise ConfigError("--model m2 needs labelled training data (its labels are partly "
                              "hidden); choose a data set with labels")
        config = (config or Config(dataset="file")).replace(jit=False)
        self.labelled = labelled_subset(data.y_train, config.labels, vae.num_classes,
                                        config.split_seed)
        mask = torch.ones(data.y_train.shape[0], dtype=torch.bool)
        mask[self.labelled.cpu()] = False
        self.unlabelled = mask.nonzero().squeeze(-1).to(data.y_train.device)
        vae.num_labelled, vae.num_unlabelled = len(self.labelled), len(self.unlabelled)
        self.aux_elbo = Trace_ELBO()
        self.labelled_elbo = Trace_ELBO()  # y observed: nothing to enumerate
        super().__init__(vae, data, config, device=device)
        self.labelled, self.unlabelled = self.labelled.to(self.device), \
            self.unlabelled.to(self.device)
        self.steps_per_epoch = math.ceil(len(self.unlabelled) / self.config.batch_size)

    def _objective(self):
        return TraceEnum_ELBO(max_plate_nesting=1), self.vae.guide

    def _loss(self, args: tuple, kwargs: dict) -> torch.Tensor:
        x_u, pos_u, x_l, y_l, pos_l, beta = args
        vae = self.vae
        loss = self.elbo.differentiable_loss(vae.model, vae.guide, x_u, None, pos_u, beta)
        loss = loss + self.labelled_elbo.differentiable_loss(vae.model, vae.guide, x_l, y_l,
                                                             pos_l, beta)
        return loss + self.aux_elbo.differentiable_loss(vae.classify_model, vae.classify_guide,
                                                        x_l, y_l, pos_l)

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.config
        x_all, y_all = self.data.x_train, self.data.y_train
        start = time.perf_counter()
        for m in self.owners:
            m.train()
        order_u = torch.randperm(len(self.unlabelled)).to(self.device)
        b_l = min(cfg.batch_size, len(self.labelled))
        order_l = torch.randperm(len(self.labelled)).to(self.device)
        total, points, skipped = 0.0, 0, 0
        n = x_all.shape[0]
        for step, pos_u in enumerate(order_u.split(cfg.batch_size)):
            pos_l = order_l[(step * b_l + torch.arange(b_l, device=self.device))
                            % len(self.labelled)]
            x_u, x_l = x_all[self.unlabelled[pos_u]], x_all[self.labelled[pos_l]]
            if cfg.binarize == "dynamic":
                x_u, x_l = binarize(x_u), binarize(x_l)
            y_l = y_all[self.labelled[pos_l]]
            beta = self.kl_schedule(self.global_step)
            try:
                with self.vae.trusted_inputs():
                    loss = self._step((x_u, pos_u, x_l, y_l, pos_l, beta), {})
            except NonFiniteStepError as bad:
                if not cfg.skip_nonfinite:
                    raise TrainingDivergedError(
                        f"the loss or a gradient became {bad.args[0]} at epoch {self.epoch + 1}, "
                        f"step {step + 1}; lower --lr or pass --skip-nonfinite") from None
                skipped += 1
            else:
                total += loss / n * x_u.shape[0]
                points += x_u.shape[0]
            self.global_step += 1
        metrics = self._end_epoch(total, points, skipped, time.perf_counter() - start)
        metrics.update(self.evaluate())
        self.history.append(metrics)
        return metrics

    def evaluate(self) -> dict[str, float]:
        metrics = super().evaluate()
        if self.data.y_test is not None:
            metrics["test_accuracy"] = self.vae.accuracy(self.data.x_test, self.data.y_test)
        metrics["labelled_accuracy"] = self.vae.accuracy(
            self.data.x_train[self.labelled], self.data.y_train[self.labelled])
        return metrics


def semi_supervised_trainer(config: Config, data: DataSet, device: torch.device | str = "cpu"
                            ) -> SemiSupervisedTrainer:
    """What :meth:`Trainer.from_config` builds for ``--model m2``."""
    from pyro_vae.models.builder import build_vae

    vae = build_vae(config, data.event_shape, data.x_train.shape[0], data.num_classes)
    return SemiSupervisedTrainer(vae, data, config, device=device)
