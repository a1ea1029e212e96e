"""The VAE as a Pyro ``model`` / ``guide`` pair.

Generative model (``VAE.model``), for each data point n in the plate ``"data"``::

    z_n ~ N(0, I_L)                                   site "z", event shape (L,)
    x_n ~ p_θ(x | z_n [, y_n]) = Π_d p(x_nd | decoder_θ(z_n [, y_n]))   site "x"

Amortized variational family (``VAE.guide``)::

    q_φ(z_n | x_n [, y_n]) = N(z_n; μ_φ(x_n), diag σ²_φ(x_n))              site "z"

Both run inside ``pyro.plate("data", size=N, subsample=indices)``: a mini-batch of B points gets
scale N/B, so ``Trace_ELBO`` estimates the ELBO of the whole data set,
``Σ_n E_q[log p(x_n|z_n)] - KL(q(z_n|x_n) ‖ p(z_n))``.

A KL weight β (β-VAE, KL annealing) is applied as ``poutine.scale(scale=β)`` around site "z" in
*both* model and guide, so every ELBO sees ``E_q[log p(x|z)] - β·KL(q‖p)``: with
``TraceMeanField_ELBO`` the analytic KL term is scaled by β, with ``Trace_ELBO`` both
``log p(z)`` and ``log q(z)`` are.

Both callables are plain Pyro: pass them to ``pyro.infer.SVI``, ``poutine.trace``,
``Predictive`` or ``pyro.render_model``. Site names are in :mod:`pyro_vae.sites`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_vae.errors import DataError
from pyro_vae.likelihoods import Likelihood
from pyro_vae.sites import DATA_PLATE, DECODER_MODULE, ENCODER_MODULE, LATENT_SITE, OBS_SITE


class VAE:
    """A variational autoencoder: networks, likelihood and the Pyro ``model`` / ``guide``.

    :param encoder: network ``(x[, y_onehot]) -> (loc, scale)`` of q(z|x) (see
        :mod:`pyro_vae.networks` for the contract).
    :param decoder: network ``(z[, y_onehot]) -> params`` of p(x|z).
    :param likelihood: the observation model, see :mod:`pyro_vae.likelihoods`.
    :param latent_dim: L, the dimension of z.
    :param event_shape: the shape of one data point, e.g. ``(2,)`` or ``(1, 28, 28)``.
    :param num_data: N, the full data-set size that the plate scales mini-batches to. ``None``
        means "the batch is the data set" (no scaling).
    :param num_classes: number of label classes for a conditional VAE; ``None`` for a plain VAE.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        event_shape: Sequence[int],
        num_data: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = int(latent_dim)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_data = num_data
        self.num_classes = num_classes

    # ------------------------------------------------------------------ helpers
    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def modules(self) -> dict[str, nn.Module]:
        """The networks by their ``pyro.module`` names."""
        return {ENCODER_MODULE: self.encoder, DECODER_MODULE: self.decoder}

    def train(self, mode: bool = True) -> VAE:
        for module in self.modules().values():
            module.train(mode)
        return self

    def eval(self) -> VAE:
        return self.train(False)

    def to(self, device: torch.device | str) -> VAE:
        for module in self.modules().values():
            module.to(device)
        return self

    def _onehot(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if y is None:
            raise DataError(
                "this is a conditional VAE: pass the labels y (integers in "
                f"[0, {self.num_classes})) along with x"
            )
        if y.is_floating_point() and y.shape == (batch, self.num_classes):
            return y  # rows of class weights, e.g. to interpolate between two classes
        if y.shape != (batch,):
            raise DataError(
                f"labels y must have shape ({batch},) to match the data (or ({batch}, "
                f"{self.num_classes}) rows of class weights), got {tuple(y.shape)}"
            )
        return F.one_hot(y.long(), self.num_classes).float()

    def check_shape(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` has shape ``(B, *event_shape)``."""
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise DataError(
                f"data must have shape (batch, {', '.join(map(str, self.event_shape))}) for this "
                f"model, got {tuple(x.shape)}; reshape it or build the model for this shape"
            )

    def _plate(
        self, batch: int, indices: torch.Tensor | None, observed: bool
    ) -> pyro.plate:
        if indices is not None:
            if self.num_data is None:
                raise DataError("mini-batch indices need the full data size: set VAE.num_data")
            return pyro.plate(DATA_PLATE, size=self.num_data, subsample=indices)
        size = self.num_data if (observed and self.num_data) else batch
        return pyro.plate(DATA_PLATE, size=size, subsample_size=batch)

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_φ(x), σ_φ(x)) of q(z | x), each of shape ``(B, latent_dim)``."""
        return self.encoder(x, self._onehot(y, x.shape[0])) if self.conditional \
            else self.encoder(x)

    def _decoder_params(
        self, z: torch.Tensor, y_onehot: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        # z may carry leading sample dims (vectorized particles, Predictive): flatten them so
        # that any decoder taking (B, L) works, then restore them.
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)
        if y_onehot is not None:
            flat_y = y_onehot.expand(*lead, y_onehot.shape[-1]).reshape(flat.shape[0], -1)
            out = self.decoder(flat, flat_y)
        else:
            out = self.decoder(flat)
        k = self.likelihood.num_params
        if k == 1:  # a plain view: its backward copies nothing (unbind's would stack)
            return (out.reshape(*lead, *self.event_shape),)
        return out.reshape(*lead, k, *self.event_shape).unbind(len(lead))

    def observation_distribution(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """p_θ(x | z [, y]) with event shape ``event_shape`` and batch shape ``z.shape[:-1]``."""
        y_onehot = self._onehot(y, z.shape[-2]) if self.conditional else None
        base = self.likelihood.distribution(*self._decoder_params(z, y_onehot))
        return base.to_event(len(self.event_shape))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z]: decoded images or points, shape ``(*z.shape[:-1], *event_shape)``."""
        y_onehot = self._onehot(y, z.shape[-2]) if self.conditional else None
        return self.likelihood.mean(*self._decoder_params(z, y_onehot))

    @staticmethod
    def _kl_scale(beta: float | torch.Tensor) -> contextlib.AbstractContextManager:
        if isinstance(beta, (int, float)) and beta == 1.0:
            return contextlib.nullcontext()
        return poutine.scale(scale=beta)

    def _batch(self, x: torch.Tensor | None, y: torch.Tensor | None) -> int:
        if x is not None:
            self.check_shape(x)
            return x.shape[0]
        return 1 if y is None else y.shape[0]

    # ------------------------------------------------------------------ Pyro programs
    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        beta: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """p(z) p_θ(x | z): observes ``x`` if given, otherwise samples it.

        :param x: a batch of data, shape ``(B, *event_shape)``, or ``None`` to generate (one
            point, or one per label in ``y``; ``Predictive(num_samples=S)`` draws S of them).
        :param y: labels, shape ``(B,)`` (conditional VAE only); ``decode_mean`` and
            ``observation_distribution`` also take rows of class weights, shape ``(B, C)``.
        :param indices: positions of the batch in the full data set (``plate`` subsample);
            ``None`` scales the batch to ``num_data`` with ``subsample_size=B``.
        :param beta: KL weight β applied with ``poutine.scale`` at site ``"z"``.
        :returns: the latent code z.
        """
        pyro.module(DECODER_MODULE, self.decoder)
        batch = self._batch(x, y)
        device = x.device if x is not None else next(self.decoder.parameters()).device
        with self._plate(batch, indices, observed=x is not None):
            zeros = torch.zeros(batch, self.latent_dim, device=device)
            with self._kl_scale(beta):
                z = pyro.sample(LATENT_SITE, dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample(OBS_SITE, self.observation_distribution(z, y), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        beta: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """q_φ(z | x [, y]) = N(μ_φ(x), diag σ²_φ(x)), amortized by the encoder."""
        pyro.module(ENCODER_MODULE, self.encoder)
        batch = self._batch(x, y)
        with self._plate(batch, indices, observed=True):
            loc, scale = self.encode(x, y)
            with self._kl_scale(beta):
                return pyro.sample(LATENT_SITE, dist.Normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------ conveniences
    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Normal:
        """q_φ(z|x) as a distribution with batch shape (B,) and event shape (L,)."""
        loc, scale = self.encode(x, y)
        return dist.Normal(loc, scale).to_event(1)

    def prior(self, batch: int, device: torch.device | str = "cpu") -> dist.Normal:
        """p(z) = N(0, I) with batch shape (batch,)."""
        return dist.Normal(torch.zeros(batch, self.latent_dim, device=device), 1.0).to_event(1)

    def num_parameters(self) -> int:
        return sum(p.numel() for m in self.modules().values() for p in m.parameters())

    def describe(self) -> str:
        return (
            f"VAE(latent_dim={self.latent_dim}, event_shape={self.event_shape}, "
            f"likelihood={self.likelihood.name}, conditional={self.conditional}, "
            f"parameters={self.num_parameters():,}, data={math.prod(self.event_shape)}-dim)"
        )
