"""Shared fixtures: every test starts from a fixed seed and an empty Pyro param store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

from pyro_vae import VAE, MLPDecoder, MLPEncoder, make_likelihood


@pytest.fixture(autouse=True)
def _seeded():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def small_vae(
    event_shape=(6,), latent_dim=2, likelihood="gaussian", num_data=None, num_classes=None,
    hidden=(16,), obs_scale=None,
) -> VAE:
    lik = make_likelihood(likelihood, obs_scale)
    cond = num_classes or 0
    enc = MLPEncoder(event_shape, latent_dim, hidden, cond_dim=cond)
    dec = MLPDecoder(event_shape, latent_dim, hidden, num_params=lik.num_params, cond_dim=cond)
    return VAE(enc, dec, lik, latent_dim, event_shape, num_data=num_data, num_classes=num_classes)


@pytest.fixture
def tiny_vae() -> VAE:
    return small_vae()


def make_batch(n=8, event_shape=(6,), binary=False) -> torch.Tensor:
    x = torch.rand(n, *event_shape)
    return torch.bernoulli(x) if binary else x


def make_celeba_files(root: Path, n: int = 6) -> None:
    """A CelebA folder as torchvision reads it: n random 218×178 JPEGs and the annotation
    files (partition: 3 train, 1 valid, 2 test)."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            base / "img_align_celeba" / name)
    parts = [0, 0, 0, 1, 2, 2]
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{nm} {p}\n" for nm, p in zip(names, parts, strict=True)))
    (base / "identity_CelebA.txt").write_text("".join(f"{nm} 1\n" for nm in names))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\nSmiling Young\n" + "".join(f"{nm} 1 -1\n" for nm in names))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{nm} 1 2 3 4\n" for nm in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y\n" + "".join(f"{nm} 1 2\n" for nm in names))
