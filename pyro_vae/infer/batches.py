"""The mini-batches of one training epoch, as the trainer's loop takes them.

A batch plan has ``steps_per_epoch``, ``epoch()`` (an iterator of :class:`Batch`), ``to(data)``
(the same plan on the trainer's copy of the data) and ``metrics()`` (extra per-epoch metrics).
:class:`MiniBatches` is SVI's usual plan; :class:`~pyro_vae.infer.semi_supervised.
LabelledBatches` pairs unlabelled and labelled batches for M2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.data.datasets import DataSet
from pyro_vae.data.preparation import binarize


@dataclass
class Batch:
    """One step's data: ``args`` go to the loss before β; the loss per point of the step is
    ``loss / full_size · points`` (``full_size`` None: the full size of the model's data
    plate, read off a trace of the model)."""

    args: tuple
    points: int
    full_size: int | None = None


class MiniBatches:
    """Random mini-batches of ``batch_size`` indices of a fresh permutation each epoch; a batch
    is ``(x, y, indices)`` (y None for an unconditional model), the indices going to the data
    plate so each step's loss estimates the loss of the whole training set (scale N/B).
    ``dynamic_binarization`` draws x ~ Bernoulli(x) per step. ``drop_last`` leaves out a
    smaller last batch (its points fall into full batches in other epochs): Pyro's
    decaying-average baseline keeps one average per batch slot, of the batch's shape."""

    def __init__(self, data: DataSet, batch_size: int, conditional: bool,
                 dynamic_binarization: bool = False, drop_last: bool = False) -> None:
        self.data, self.batch_size, self.conditional = data, batch_size, conditional
        self.dynamic, self.drop_last = dynamic_binarization, drop_last
        n = data.x_train.shape[0]
        self.steps_per_epoch = n // batch_size if drop_last and n > batch_size \
            else math.ceil(n / batch_size)

    def to(self, data: DataSet) -> MiniBatches:
        self.data = data
        return self

    def epoch(self) -> Iterator[Batch]:
        x_all = self.data.x_train
        perm = torch.randperm(x_all.shape[0]).to(x_all.device)
        batches = list(perm.split(self.batch_size))
        if self.drop_last and len(batches) > 1 and batches[-1].shape[0] < self.batch_size:
            batches.pop()
        for idx in batches:
            yield self.batch(idx)

    def batch(self, idx: torch.Tensor) -> Batch:
        """The mini-batch of the training points ``idx`` (a distributed worker's too)."""
        x = self.data.x_train[idx]
        if self.dynamic:
            x = binarize(x)
        y_all = self.data.y_train
        y = y_all[idx] if self.conditional and y_all is not None else None
        return Batch((x, y, idx), int(x.shape[0]))

    def metrics(self) -> dict[str, Any]:
        return {}
