"""Shared fixtures: every test starts from a fixed seed and an empty Pyro param store."""

from __future__ import annotations

import pyro
import pytest
import torch

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
