"""Data sets (``digits``, ``moons``, ``circle``, Fashion-MNIST, MNIST, CelebA, files) and their
preparation for training (binarization, support checks)."""

from pyro_vae.data.datasets import (
    DATASETS,
    DataSet,
    circle_log_density,
    load_dataset,
    validate_arrays,
)
from pyro_vae.data.preparation import (
    TRAIN_EVAL_POINTS,
    binarize,
    prepare_data,
    preprocess_data,
    train_eval_subset,
)

__all__ = [
    "DATASETS",
    "TRAIN_EVAL_POINTS",
    "DataSet",
    "binarize",
    "circle_log_density",
    "load_dataset",
    "prepare_data",
    "preprocess_data",
    "train_eval_subset",
    "validate_arrays",
]
