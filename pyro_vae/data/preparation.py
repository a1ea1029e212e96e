"""Data as the trainers see it: loaded, binarized as asked, checked against the likelihood.

Binarization, for the Bernoulli likelihood on grey data in [0, 1]:

* ``threshold``: x > 0.5, once, for train and test;
* ``dynamic``: a fresh draw x_bin ~ Bernoulli(x) per pixel for every mini-batch
  (:func:`binarize`, Burda et al. 2016); the test set, and the training subset on which the
  training ELBO is reported (:func:`train_eval_subset`), are binarized once with fixed seeds so
  that every run's and epoch's figures are comparable.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from pyro_vae.data.datasets import DataSet, load_dataset
from pyro_vae.distributions.likelihoods import Likelihood, make_likelihood
from pyro_vae.errors import ConfigError, DataError

if TYPE_CHECKING:  # the configuration imports the data registry: no import at run time
    from pyro_vae.config import Config

#: The training ELBO and its split are reported on at most this many training points per epoch.
TRAIN_EVAL_POINTS = 10000


def binarize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """One draw x_bin ~ Bernoulli(x) per pixel; with ``seed``, from a fixed CPU generator (the
    same draw on every device)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise DataError(f"binarize takes a floating tensor of probabilities in [0, 1], got "
                        f"{type(x).__name__}; convert it with torch.as_tensor(x).float()")
    if seed is None:
        return torch.bernoulli(x)
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=gen).to(x.device)


def train_eval_subset(config: Config, data: DataSet) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first :data:`TRAIN_EVAL_POINTS` training points (and labels) on which the training
    ELBO is reported each epoch; with dynamic binarization, binarized once with a fixed
    generator (``split_seed + 1``), as the test set is."""
    x = data.x_train[:TRAIN_EVAL_POINTS]
    y = None if data.y_train is None else data.y_train[:TRAIN_EVAL_POINTS]
    if config.binarize == "dynamic":
        x = binarize(x, seed=config.split_seed + 1)
    return x, y


def prepare_data(config: Config) -> DataSet:
    """Load the configured data, binarize as asked, and check it against the likelihood.

    ``threshold``: x > 0.5 for train and test. ``dynamic``: the trainer draws the training pixels
    afresh per mini-batch; the test set is binarized once, with a fixed generator
    (``split_seed``), so test figures of every run and epoch are comparable.
    """
    data = load_dataset(
        config.dataset, data_path=config.data, data_root=config.data_root,
        download=config.download, split_seed=config.split_seed,
        test_fraction=config.test_fraction, image_size=config.image_size,
        label_column=config.label_column, max_train=config.max_train, max_test=config.max_test,
    )
    return preprocess_data(data, config)


def preprocess_data(data: DataSet, config: Config) -> DataSet:
    """Binarize ``data`` as ``config`` asks and check it against the likelihood (the second half
    of :func:`prepare_data`, for data loaded by other means). Idempotent: prepared data passes
    through unchanged, so the trainer applies it to whatever it is given. A configuration without
    a likelihood (resolved for a user's own model) checks no support."""
    likelihood = None if config.likelihood is None else \
        make_likelihood(config.likelihood, config.obs_scale, config.allow_greyscale)
    if config.binarize != "none":  # binarizing needs pixel intensities in [0, 1]
        unit = Likelihood("bernoulli" if likelihood is None else likelihood.name, 1, "unit")
        unit.check_support(data.x_train, "training data")
        unit.check_support(data.x_test, "test data")
    if config.binarize == "threshold":
        data = replace(data, x_train=(data.x_train > 0.5).float(),
                       x_test=(data.x_test > 0.5).float())
    elif config.binarize == "dynamic":
        data = replace(data, x_test=binarize(data.x_test, seed=config.split_seed))
    elif likelihood is not None:  # a user's model (None) states its own likelihood
        likelihood.check_support(data.x_train, "training data")
        likelihood.check_support(data.x_test, "test data")
    if config.batch_size > data.x_train.shape[0]:
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {data.x_train.shape[0]} "
                          "training points; use a batch size ≤ the data size")
    if config.conditional and data.y_train is None:
        raise ConfigError(f"--conditional needs labels, and the {config.dataset} data has none; "
                          "drop --conditional")
    return data
