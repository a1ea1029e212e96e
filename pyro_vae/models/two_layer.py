"""Burda, Grosse & Salakhutdinov (2016)'s VAE with two stochastic layers, and its bottom-up guide.

Generative model, per data point (sites ``"z2"``, ``"z1"``, ``"x"`` inside the ``"data"``
plate)::

    z2 ~ N(0, I_{L2})
    z1 | z2 ~ N(μ_1(z2), diag σ_1²(z2))          a Gaussian layer: MLP → (μ, softplus)
    x | z1 ~ p_θ(x | z1)                         the likelihood of ``likelihood`` (Bernoulli
                                                 logits, or a Gaussian of fixed σ)

Guide (bottom-up, as in the paper)::

    q(z1 | x) = N(m_1(x), diag s_1²(x)),   q(z2 | z1) = N(m_2(z1), diag s_2²(z1))

so q(z1, z2 | x) = q(z1 | x) q(z2 | z1) and log w = log p(x | z1) + log p(z1 | z2) +
log p(z2) − log q(z1 | x) − log q(z2 | z1). Every tool of the library reads it from its trace
(two local latent sites in a hierarchy): the ELBO, the importance-weighted objectives
(``ImportanceWeightedELBO``: IWAE-trained as in the paper), IWAE / AIS evaluation, the gap
report. The paper's MNIST architecture is ``latent_dims=(100, 50)``, ``hidden=((100, 100),
(50, 50))`` with tanh units; ``hidden=((), ())`` makes every layer linear (a linear-Gaussian
hierarchy, whose marginal log p(x) is Gaussian in closed form — the tests' reference).

Model and guide take the library's arguments ``(x, y, indices, beta)``: with ``num_data``
the plate is subsampled by ``indices`` (scale N/B); β weights every latent site
(:class:`~pyro_vae.infer.problem.LatentScale`).

Reference: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR
2016, §5 and Appendix A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.distributions.likelihoods import make_likelihood
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.problem import LatentScale
from pyro_vae.nn.module import register_module
from pyro_vae.nn.networks import mlp

__all__ = ["GaussianLayer", "TwoLayerVAE"]


class GaussianLayer(nn.Module):
    """h → N(μ(h), diag σ²(h)): an MLP ``in → hidden… → 2·out``, μ the first half and
    σ = softplus(second half) + 1e-4 (the floor keeps log-densities finite)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (),
                 activation: str = "tanh") -> None:
        super().__init__()
        self.net = mlp([in_dim, *hidden, 2 * out_dim], activation)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> dist.Normal:
        loc, raw = self.net(h).split(self.out_dim, dim=-1)
        return dist.Normal(loc, softplus(raw) + 1e-4)


class TwoLayerVAE(nn.Module):
    """The two-stochastic-layer VAE (module docstring).

    :param event_shape: the shape of one data point.
    :param latent_dims: (L1, L2), the sizes of z1 (near x) and z2 (top).
    :param hidden: the deterministic hidden layers (x ↔ z1, z1 ↔ z2); the decoder mirrors them.
    :param likelihood: ``"bernoulli"`` or ``"gaussian"`` (with ``obs_scale``, fixed σ).
    :param num_data: N, the size the ``"data"`` plate is subsampled from (None: the batch).
    """

    def __init__(self, event_shape: Sequence[int], latent_dims: Sequence[int] = (100, 50),
                 hidden: Sequence[Sequence[int]] = ((100, 100), (50, 50)),
                 activation: str = "tanh", likelihood: str = "bernoulli",
                 obs_scale: float | None = None, num_data: int | None = None) -> None:
        super().__init__()
        if len(latent_dims) != 2 or len(hidden) != 2:
            raise ConfigError(f"TwoLayerVAE takes two latent sizes and two hidden stacks, got "
                              f"latent_dims={tuple(latent_dims)}, hidden={hidden!r}; e.g. "
                              "latent_dims=(100, 50), hidden=((100, 100), (50, 50))")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"TwoLayerVAE's likelihood is 'bernoulli' or 'gaussian' (fixed "
                              f"σ), got {likelihood!r}")
        self.event_shape = tuple(event_shape)
        self.num_data = num_data
        self.latent_dims = (int(latent_dims[0]), int(latent_dims[1]))
        l1, l2 = self.latent_dims
        d = math.prod(self.event_shape)
        h1, h2 = (tuple(h) for h in hidden)
        self.likelihood = make_likelihood(likelihood, obs_scale)
        if self.likelihood.learns_scale or self.likelihood.num_params != 1:
            raise ConfigError("TwoLayerVAE's Gaussian likelihood needs a fixed obs_scale σ; "
                              "e.g. obs_scale=0.1")
        # generative networks: z2 → z1 → x
        self.prior_z1 = GaussianLayer(l2, l1, h2[::-1], activation)
        self.decoder = mlp([l1, *h1[::-1], d], activation)
        # bottom-up inference networks: x → z1 → z2
        self.encoder_z1 = GaussianLayer(d, l1, h1, activation)
        self.encoder_z2 = GaussianLayer(l1, l2, h2, activation)

    def _plate(self, batch: int, indices: torch.Tensor | None) -> pyro.plate:
        if self.num_data is None or indices is None:
            return pyro.plate("data", batch)
        return pyro.plate("data", self.num_data, subsample=indices)

    def _check(self, x: torch.Tensor | None) -> None:
        if x is not None and tuple(x.shape[1:]) != self.event_shape:
            raise DataError(f"TwoLayerVAE was built for points of shape {self.event_shape}, got "
                            f"a batch of shape {tuple(x.shape)}; build it with "
                            f"event_shape={tuple(x.shape[1:])}")

    def observation(self, z1: torch.Tensor) -> dist.TorchDistribution:
        """p_θ(x | z1) with event shape ``event_shape``."""
        out = self.decoder(z1).reshape(*z1.shape[:-1], *self.event_shape)
        return self.likelihood.distribution(out).to_event(len(self.event_shape))

    def model(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
              indices: torch.Tensor | None = None, beta: float | torch.Tensor = 1.0,
              num_points: int = 1) -> torch.Tensor:
        """p(z2) p(z1 | z2) p(x | z1); generates ``num_points`` points when ``x`` is None."""
        self._check(x)
        register_module("two_layer_prior", self.prior_z1)
        register_module("two_layer_decoder", self.decoder)
        batch = x.shape[0] if x is not None else num_points
        l2 = self.latent_dims[1]
        device = next(self.decoder.parameters()).device
        with self._plate(batch, indices):
            with LatentScale(beta):
                z2 = pyro.sample("z2", dist.Normal(torch.zeros(l2, device=device), 1.0)
                                 .to_event(1))
                z1 = pyro.sample("z1", self.prior_z1(z2).to_event(1))
            pyro.sample("x", self.observation(z1), obs=x)
        return z1

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None,
              indices: torch.Tensor | None = None, beta: float | torch.Tensor = 1.0,
              num_points: int = 1) -> torch.Tensor:
        """q(z1 | x) q(z2 | z1), bottom-up."""
        if x is None:
            raise DataError("the guide q(z1, z2 | x) needs data x; to generate, run the model "
                            "alone")
        self._check(x)
        register_module("two_layer_encoder_z1", self.encoder_z1)
        register_module("two_layer_encoder_z2", self.encoder_z2)
        with self._plate(x.shape[0], indices), LatentScale(beta):
            z1 = pyro.sample("z1", self.encoder_z1(x.reshape(x.shape[0], -1)).to_event(1))
            pyro.sample("z2", self.encoder_z2(z1).to_event(1))
        return z1
