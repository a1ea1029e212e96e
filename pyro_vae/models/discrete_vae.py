"""VAEs with discrete latent codes: K binary units, or G groups of C classes.

Generative model (``DiscreteVAE.model``), for each data point n in the plate ``"data"``::

    z_n ~ Bernoulli(1/2)^K                       site "z", event shape (K,)       (bernoulli)
    z_n ~ OneHotCategorical(1/C)^G               site "z", event shape (G, C)     (categorical)
    x_n ~ p_θ(x | z_n)                           site "x", decoder on the flattened code

Amortized posterior (``DiscreteVAE.guide``): q_φ(z_n | x_n) = Π_k Bernoulli(σ(ℓ_k(x_n))) or
Π_g OneHotCategorical(softmax(ℓ_g(x_n))), the logits ℓ from :class:`~pyro_vae.nn.MLPLogitsEncoder`.
Both codes are :class:`~pyro_vae.distributions.discrete.EnumerableIndependent`, so
``TraceEnum_ELBO`` can sum a small code out exactly.

The K = 200 binary code is the sigmoid-belief-net layer of the VIMCO (Mnih & Rezende 2016) and
REBAR (Tucker et al. 2017) experiments, with a uniform prior; 20 × 10 categorical is the
Gumbel-softmax paper's (Jang et al. 2017). Same plate, sites, modules, call signature and
β-weighting (:func:`~pyro_vae.models.vae.kl_scale`) as :class:`~pyro_vae.models.vae.VAE`, whose
machinery (argument checks, the data plate, likelihoods, decoding) this class inherits; only the
latent code differs. There is no pathwise gradient through the code: train it with one of
:mod:`pyro_vae.infer.discrete`'s estimators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.distributions.discrete import EnumerableIndependent, bernoulli_code, categorical_code
from pyro_vae.distributions.likelihoods import Likelihood
from pyro_vae.errors import ConfigError, DataError, check_count
from pyro_vae.models.vae import VAE

LATENTS = ("gaussian", "bernoulli", "categorical")
DISCRETE_LATENTS = ("bernoulli", "categorical")


class DiscreteVAE(VAE):
    """A VAE whose code z is discrete.

    :param encoder: network ``(x[, y_onehot]) -> logits`` of shape ``(B, *code_shape)``
        (:class:`~pyro_vae.nn.MLPLogitsEncoder`).
    :param decoder: network ``(z_flat[, y_onehot]) -> params`` with ``z_flat`` of shape
        ``(B, K)`` or ``(B, G·C)``.
    :param latent: ``"bernoulli"`` or ``"categorical"``.
    :param latent_dim: K binary units, or G groups.
    :param categories: C, classes per group (``categorical`` only).

    Other parameters as for :class:`~pyro_vae.models.vae.VAE`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent: str,
        latent_dim: int,
        event_shape: Sequence[int],
        num_data: int | None = None,
        categories: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        if latent not in DISCRETE_LATENTS:
            raise ConfigError(f"unknown discrete latent {latent!r}; choose bernoulli or "
                              "categorical (gaussian is pyro_vae.VAE)")
        check_count("latent_dim", latent_dim)
        if latent == "categorical":
            categories = check_count("categories", categories if categories is not None else 0)
            if categories < 2:
                raise ConfigError(f"--categories must be ≥ 2, got {categories}; e.g. 10")
            code_shape: tuple[int, ...] = (latent_dim, categories)
        else:
            code_shape = (latent_dim,)
        super().__init__(encoder, decoder, likelihood, math.prod(code_shape), event_shape,
                         num_data=num_data, num_classes=num_classes)
        self.latent = latent
        self.code_shape = code_shape
        self.categories = categories if latent == "categorical" else None

    @property
    def latent_event_shape(self) -> tuple[int, ...]:
        return self.code_shape

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of q(z | x), shape ``(B, *code_shape)``."""
        logits = self.encoder(x, self._onehot(y, x.shape[0])) if self.conditional \
            else self.encoder(x)
        if tuple(logits.shape) != (x.shape[0], *self.code_shape):
            raise DataError(f"the encoder returned logits of shape {tuple(logits.shape)}, "
                            f"expected {(x.shape[0], *self.code_shape)}; give it "
                            f"{math.prod(self.code_shape)} outputs per point")
        return logits

    def _code(self, logits: torch.Tensor) -> EnumerableIndependent:
        return bernoulli_code(logits) if self.latent == "bernoulli" else categorical_code(logits)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> EnumerableIndependent:
        """q_φ(z | x): batch shape (B,), event shape ``code_shape``."""
        return self._code(self.encode(x, y))

    def posterior_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E_q[z | x], flattened to ``(B, K)`` or ``(B, G·C)`` (unit / class probabilities)."""
        return self.posterior(x, y).base_dist.probs.reshape(x.shape[0], -1)

    def reconstruction_code(self, x: torch.Tensor, y: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """The most probable code under q(z | x) (rounded units, arg-max classes)."""
        logits = self.encode(x, y)
        if self.latent == "bernoulli":
            return (logits > 0).to(logits.dtype)
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

    def prior(self, batch: int, device: torch.device | str = "cpu") -> EnumerableIndependent:
        """The uniform code: Bernoulli(1/2) units or uniform classes, batch shape (batch,)."""
        weight = next(self.decoder.parameters(), None)
        dtype = weight.dtype if weight is not None else torch.get_default_dtype()
        return self._code(torch.zeros(batch, *self.code_shape, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return (f"latent={self.latent!r}, code_shape={self.code_shape}, "
                f"event_shape={self.event_shape}, likelihood={self.likelihood.name!r}, "
                f"num_data={self.num_data}")


def require_gaussian(vae: object, what: str) -> None:
    """One-line refusal of a tool written for Gaussian codes (AIS, HMC, the gap report, per-point
    Gaussian fits) when given a discrete-latent model."""
    if isinstance(vae, DiscreteVAE):
        raise ConfigError(f"{what} needs a continuous (Gaussian) latent code; this model's code "
                          f"is {vae.latent}: use evaluate (ELBO, IWAE) or the discrete "
                          "estimator lab instead")
