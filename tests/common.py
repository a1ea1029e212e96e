"""Helpers shared by the tests: small models, batches, a user-written guide, data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from PIL import Image
from torch import nn

import pyro_vae
from pyro_vae import VAE, MLPDecoder, MLPEncoder, make_likelihood
from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.models import kl_scale
from pyro_vae.sites import LATENT_SITE


def small_vae(
    event_shape=(6,), latent_dim=2, likelihood="gaussian", num_data=None, num_classes=None,
    hidden=(16,), obs_scale=None, guide="diag", flow_length=2,
) -> VAE:
    lik = make_likelihood(likelihood, obs_scale)
    cond = num_classes or 0
    enc = MLPEncoder(event_shape, latent_dim, hidden, cond_dim=cond)
    dec = MLPDecoder(event_shape, latent_dim, hidden, num_params=lik.num_params, cond_dim=cond)
    family = GuideFamily(guide, event_shape, latent_dim, flow_length, cond_dim=cond)
    return VAE(enc, dec, lik, latent_dim, event_shape, num_data=num_data, num_classes=num_classes,
               family=family)


def make_batch(n=8, event_shape=(6,), binary=False) -> torch.Tensor:
    x = torch.rand(n, *event_shape)
    return torch.bernoulli(x) if binary else x


class FullCovarianceGuide(nn.Module):
    """A user's guide as a Pyro user writes one: q(z|x) = N(μ(x), L(x) L(x)ᵀ), a full
    covariance through a Cholesky factor from its own network, registered by plain
    ``pyro.module``, inside the VAE's ``"data"`` plate and with the KL weight on ``"z"``."""

    def __init__(self, vae: VAE, hidden: int = 16) -> None:
        super().__init__()
        self.vae = [vae]  # not a submodule: the guide owns only its own network
        d, latent = int(np.prod(vae.event_shape)), vae.latent_dim
        self.latent = latent
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.loc = nn.Linear(hidden, latent)
        self.tril = nn.Linear(hidden, latent * latent)

    def guide(self, x, y=None, indices=None, beta=1.0, num_points=None):
        vae = self.vae[0]
        pyro.module("full_guide", self)
        with vae.data_plate(x.shape[0], indices):
            h = self.body(x.reshape(x.shape[0], -1))
            raw = self.tril(h).reshape(-1, self.latent, self.latent)
            diag = nn.functional.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)) + 1e-3
            scale_tril = torch.tril(raw, -1) + torch.diag_embed(diag)
            with kl_scale(beta):
                return pyro.sample(LATENT_SITE,
                                   dist.MultivariateNormal(self.loc(h), scale_tril=scale_tril))


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


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters that differ from ``before``."""
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())]


class LinearGaussianEncoder(nn.Module):
    """q(z|x) = N(A (x - b), diag s²), a linear encoder with a free diagonal scale."""

    def __init__(self, d: int, q: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(q, d))
        self.b = nn.Parameter(torch.zeros(d))
        self.log_s = nn.Parameter(torch.zeros(q))

    def forward(self, x):
        return (x - self.b) @ self.A.T, self.log_s.exp().expand(x.shape[0], -1)


def ppca_vae(d=5, q=2, sigma=0.5, seed=0):
    """A linear-Gaussian (pPCA) VAE whose W has orthogonal columns: its exact posterior is
    diagonal, so the encoder below *is* the exact posterior and the ELBO equals log p(x)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, q, generator=gen))[0] * torch.tensor([2.0, 0.7])
    b = torch.randn(d, generator=gen)
    decoder = nn.Linear(q, d)
    decoder.weight.data, decoder.bias.data = W.clone(), b.clone()
    M = W.T @ W + sigma**2 * torch.eye(q)  # diagonal because W's columns are orthogonal
    enc = LinearGaussianEncoder(d, q)
    enc.A.data = torch.linalg.solve(M, W.T)
    enc.b.data = b.clone()
    enc.log_s.data = 0.5 * torch.log(sigma**2 / torch.diagonal(M))
    vae = VAE(enc, decoder, make_likelihood("gaussian", obs_scale=sigma), q, (d,))
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(d))
    return vae, marginal


def linear_gaussian_vae(num_data=None, guide="diag", flow_length=2):
    """x = W z + b + σ ε with z ~ N(0, I): a linear decoder and a Gaussian likelihood, whose
    posterior p(z | x) is Gaussian in closed form; ``guide`` names the posterior family."""
    torch.manual_seed(1)
    enc = MLPEncoder((3,), 2, ())
    dec = MLPDecoder((3,), 2, (), num_params=1)
    family = pyro_vae.distributions.guides.GuideFamily(guide, (3,), 2, flow_length)
    return pyro_vae.VAE(enc, dec, pyro_vae.make_likelihood("gaussian", 0.5), 2, (3,),
                        num_data=num_data, family=family)


def exact_posterior(vae, x):
    """Mean and covariance of p(z | x) for :func:`linear_gaussian_vae`."""
    lin = vae.decoder.net[0]
    w, b, s2 = lin.weight.detach(), lin.bias.detach(), 0.25
    precision = torch.eye(2) + w.T @ w / s2
    cov = torch.linalg.inv(precision)
    return (cov @ w.T @ (x - b).T / s2).T, cov
