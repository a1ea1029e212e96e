"""Training the semi-supervised VAE (M2, :mod:`pyro_vae.models.m2`) on partly labelled data.

Of the N training points, ``config.labels`` are kept labelled — the same number of each class,
drawn with ``config.split_seed`` — and the others lose their labels. Every step takes one
mini-batch of unlabelled points and one of labelled points and minimizes

    −[ (N_u/B_u) Σ U(x) + (N_l/B_l) Σ L(x, y) + α (N_l/B_l) Σ log q(y | x) ]

an unbiased estimate of the paper's objective over the whole data set: U through
``TraceEnum_ELBO`` with y enumerated in the guide, L through ``Trace_ELBO`` with y observed, the
classification term through ``Trace_ELBO`` on :meth:`~pyro_vae.models.m2.SemiSupervisedVAE.
classify_model`. An epoch is one pass over the unlabelled points (the labelled ones are cycled).
:class:`SemiSupervisedELBO` is that objective as one Pyro ELBO and :class:`LabelledBatches`
the mini-batches it takes; the :class:`~pyro_vae.infer.trainer.Trainer` runs them through its
one loop and step (``Trainer.from_config`` for ``--model m2``). The per-epoch metrics add
``test_accuracy`` (arg-max of q(y|x) on the test set) to the
trainer's ELBOs (y drawn from q(y|x), analytic KL at both sites).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO

from pyro_vae.data.datasets import DataSet
from pyro_vae.data.preparation import binarize
from pyro_vae.errors import ConfigError
from pyro_vae.infer.batches import Batch
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


class SemiSupervisedELBO(ELBO):
    """M2's whole objective (module docstring) as one Pyro ELBO over one unlabelled and one
    labelled mini-batch: ``differentiable_loss(model, guide, x_u, pos_u, x_l, y_l, pos_l, β)``
    is U through ``TraceEnum_ELBO`` (y enumerated in the guide), L through ``Trace_ELBO``
    (y observed) and the classification term through ``Trace_ELBO`` on ``vae``'s
    ``classify_model`` / ``classify_guide``; each is unbiased for its sum over the whole data
    set, so the sum is unbiased for the paper's objective."""

    def __init__(self, vae: SemiSupervisedVAE) -> None:
        super().__init__(max_plate_nesting=1)
        self.vae = vae
        self.unlabelled = TraceEnum_ELBO(max_plate_nesting=1)
        self.labelled = Trace_ELBO()  # y observed: nothing to enumerate
        self.classification = Trace_ELBO()

    def differentiable_loss(self, model, guide, x_u, pos_u, x_l, y_l, pos_l, beta=1.0
                            ) -> torch.Tensor:
        loss = self.unlabelled.differentiable_loss(model, guide, x_u, None, pos_u, beta)
        loss = loss + self.labelled.differentiable_loss(model, guide, x_l, y_l, pos_l, beta)
        return loss + self.classification.differentiable_loss(
            self.vae.classify_model, self.vae.classify_guide, x_l, y_l, pos_l)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("SemiSupervisedELBO sums three ELBOs over two batches, with no "
                                  "single trace: use loss, loss_and_grads or differentiable_loss")

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


class LabelledBatches:
    """M2's mini-batches: one pass over the unlabelled points per epoch in random batches of
    ``batch_size``, each with the next ``min(batch_size, N_l)`` labelled points of a random
    order cycled over the epoch. Sets ``vae.num_labelled`` / ``num_unlabelled`` (the sizes its
    plates scale to)."""

    def __init__(self, vae: SemiSupervisedVAE, data: DataSet, num_labels: int, seed: int,
                 batch_size: int, dynamic_binarization: bool) -> None:
        if not isinstance(vae, SemiSupervisedVAE):
            raise ConfigError("semi-supervised training takes a SemiSupervisedVAE (--model m2)")
        if data.y_train is None:
            raise ConfigError("--model m2 needs labelled training data (its labels are partly "
                              "hidden); choose a data set with labels")
        self.labelled = labelled_subset(data.y_train, num_labels, vae.num_classes, seed)
        mask = torch.ones(data.y_train.shape[0], dtype=torch.bool)
        mask[self.labelled.cpu()] = False
        self.unlabelled = mask.nonzero().squeeze(-1).to(data.y_train.device)
        vae.num_labelled, vae.num_unlabelled = len(self.labelled), len(self.unlabelled)
        self.vae, self.data, self.batch_size = vae, data, batch_size
        self.dynamic = dynamic_binarization
        self.steps_per_epoch = math.ceil(len(self.unlabelled) / batch_size)

    def to(self, data: DataSet) -> LabelledBatches:
        """The same split on ``data`` (the trainer's copy on its device)."""
        self.data = data
        device = data.x_train.device
        self.labelled, self.unlabelled = self.labelled.to(device), self.unlabelled.to(device)
        return self

    def epoch(self) -> Iterator[Batch]:
        x_all, y_all = self.data.x_train, self.data.y_train
        device, n = x_all.device, x_all.shape[0]
        order_u = torch.randperm(len(self.unlabelled)).to(device)
        b_l = min(self.batch_size, len(self.labelled))
        order_l = torch.randperm(len(self.labelled)).to(device)
        for step, pos_u in enumerate(order_u.split(self.batch_size)):
            pos_l = order_l[(step * b_l + torch.arange(b_l, device=device)) % len(self.labelled)]
            x_u, x_l = x_all[self.unlabelled[pos_u]], x_all[self.labelled[pos_l]]
            if self.dynamic:
                x_u, x_l = binarize(x_u), binarize(x_l)
            y_l = y_all[self.labelled[pos_l]]
            yield Batch((x_u, pos_u, x_l, y_l, pos_l), int(x_u.shape[0]), n)

    def metrics(self) -> dict[str, Any]:
        """Classification accuracy of q(y|x) on the test set and on the labelled points."""
        out = {}
        data = self.data
        if data.y_test is not None:
            out["test_accuracy"] = self.vae.accuracy(data.x_test, data.y_test)
        out["labelled_accuracy"] = self.vae.accuracy(data.x_train[self.labelled],
                                                     data.y_train[self.labelled])
        return out
