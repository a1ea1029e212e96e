"""Observation models p_θ(x | z): each a normalized density over one data dimension.

The decoder network maps z to ``num_params`` tensors shaped like one data point; a
:class:`Likelihood` turns them into a Pyro distribution whose batch shape ends with the data's
shape. :class:`~pyro_vae.vae.VAE` then calls ``.to_event(len(event_shape))`` so that
``log p(x | z) = Σ_d log p(x_d | z)`` is one term per data point.

=========================  =====================================================  =============
name                       density per dimension                                  support
=========================  =====================================================  =============
``bernoulli``              Bernoulli(x_d; sigmoid(ℓ_d)), logits ℓ from the        {0, 1}
                           decoder (no sigmoid-then-logit round trip)
``continuous-bernoulli``   C(λ) λ^x (1-λ)^(1-x), λ = sigmoid(ℓ) (Loaiza-Ganem     [0, 1]
                           & Cunningham 2019): the normalized version of BCE
                           on grey values
``gaussian``               N(x_d; μ_d, σ²), σ fixed (``obs_scale``)               ℝ
``gaussian-learned``       N(x_d; μ_d, σ²), one σ learned as ``pyro.param``       ℝ
                           ``"obs_scale"`` (positive constraint)
``gaussian-predicted``     N(x_d; μ_d, σ_d²), σ_d = softplus(s_d) + 1e-3          ℝ
                           predicted by the decoder per dimension
``laplace``                Laplace(x_d; μ_d, b) = exp(-abs(x_d-μ_d)/b)/(2b),      ℝ
                           b fixed: the L1 reconstruction loss as a density
``laplace-learned``        Laplace with one learned b (``pyro.param``)            ℝ
=========================  =====================================================  =============

An L1 loss weighted against β·KL, ``|x - μ|₁ + β KL``, has the same minimizer as the ELBO with the
``laplace`` likelihood at b = β and KL weight 1, since ``-log Laplace(x; μ, b) = |x-μ|/b + log 2b``.

Bernoulli needs binary data. Greyscale data in [0, 1] is refused unless the data pipeline
binarizes it (``binarize="dynamic"``: x ~ Bernoulli(pixel) afresh for every mini-batch, the
protocol of Burda et al. 2016, or ``"threshold"``) or the user opts in with
``allow_greyscale=True``, in which case log p is the cross-entropy, not a normalized density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.sites import OBS_SCALE_PARAM

#: Lower bound added to decoder-predicted scales, so that log p(x|z) stays finite.
MIN_PREDICTED_SCALE = 1e-3


@dataclass(frozen=True)
class Likelihood:
    """Base class: ``num_params`` decoder outputs per data dimension → a distribution.

    :param name: the registered name (see the module table).
    :param num_params: how many tensors shaped like one data point the decoder must output.
    :param support: ``"binary"``, ``"unit"`` ([0, 1]) or ``"real"``.
    """

    name: str
    num_params: int
    support: str

    @property
    def learns_scale(self) -> bool:
        """True when the likelihood has a learned scale (``pyro.param("obs_scale")``)."""
        return False

    def distribution(self, *params: torch.Tensor,
                     scale: torch.Tensor | None = None) -> dist.TorchDistribution:
        """The per-dimension distribution p(x_d | z) given the decoder's outputs.

        :param scale: the learned scale, for likelihoods that learn one (a model that owns the
            parameter passes it); ``None`` reads ``pyro.param("obs_scale")``.
        """
        raise NotImplementedError

    def mean(self, *params: torch.Tensor) -> torch.Tensor:
        """E[x | z]: what figures show as a reconstruction or a decoded sample."""
        return self.distribution(*params).mean

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless every value of ``x`` lies in the support."""
        if self.support == "real":
            return
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"the {self.name} likelihood needs {what} in [0, 1] but values range over "
                f"[{lo:.4g}, {hi:.4g}]; rescale the data to [0, 1] (e.g. divide pixels by 255) "
                "or choose --likelihood gaussian or laplace"
            )
        if self.support == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                f"the bernoulli likelihood needs binary {what} but it has grey values in (0, 1); "
                "pass --binarize dynamic (a fresh Bernoulli draw per mini-batch) or --binarize "
                "threshold, use --likelihood continuous-bernoulli, or opt in to cross-entropy on "
                "grey values with --allow-greyscale"
            )


@dataclass(frozen=True)
class BernoulliLikelihood(Likelihood):
    """Bernoulli with logits from the decoder. ``allow_greyscale`` turns off the support check."""

    allow_greyscale: bool = False

    def distribution(self, logits: torch.Tensor,  # type: ignore[override]
                     scale: torch.Tensor | None = None) -> dist.TorchDistribution:
        if self.allow_greyscale:
            return dist.Bernoulli(logits=logits, validate_args=False)
        return dist.Bernoulli(logits=logits)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.sigmoid(logits)

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        if self.allow_greyscale:
            Likelihood(self.name, 1, "unit").check_support(x, what)
        else:
            super().check_support(x, what)


#: below this |logit| the log-normalizer uses its series (error < 10⁻¹² in float64)
_SERIES_BELOW = 1e-2


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(λ) of the continuous Bernoulli from its logit ℓ (λ = sigmoid(ℓ)), stable for every
    ℓ in float32 and float64.

    With 1 − 2λ = −tanh(ℓ/2) and artanh(1 − 2λ) = −ℓ/2, C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ) =
    ℓ / tanh(ℓ/2), an even function of ℓ. For a = abs(ℓ): log C = log a − log tanh(a/2) with
    log tanh(a/2) = log(−expm1(−a)) − log1p(e^{−a}), exact to rounding for every a > 0; near 0
    the series log 2 + a²/12 − 7a⁴/1440 (the next term, 31a⁶/90720, is under 4·10⁻¹⁶ there).
    (torch's own form computes λ first and clamps it, so its density integrates to 0.94 at
    abs(ℓ) = 17, 0.80 at 20 and 0.53 at 30 in float32.)
    """
    a = logits.abs()
    small = a < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(a), a)
    exact = safe.log() - (torch.log(-torch.expm1(-safe)) - torch.log1p(torch.exp(-safe)))
    a2 = a * a
    series = math.log(2.0) + a2 / 12 - 7 * a2 * a2 / 1440
    return torch.where(small, series, exact)


class StableContinuousBernoulli(dist.ContinuousBernoulli):
    """:class:`pyro.distributions.ContinuousBernoulli` whose log-density is computed from the
    logit: log p(x | ℓ) = x ℓ − softplus(ℓ) + log C(ℓ) (:func:`continuous_bernoulli_log_norm`),
    normalized for every logit. Sampling and the mean are torch's."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return (value * logits - F.softplus(logits)
                + continuous_bernoulli_log_norm(logits))


@dataclass(frozen=True)
class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli with logits from the decoder, normalized for every logit
    (:class:`StableContinuousBernoulli`)."""

    def distribution(self, logits: torch.Tensor,  # type: ignore[override]
                     scale: torch.Tensor | None = None) -> dist.TorchDistribution:
        return StableContinuousBernoulli(logits=logits)


@dataclass(frozen=True)
class LocationScaleLikelihood(Likelihood):
    """Gaussian or Laplace with a fixed, a learned (``pyro.param``) or a predicted scale.

    :param family: ``"gaussian"`` or ``"laplace"``.
    :param scale_mode: ``"fixed"``, ``"learned"`` or ``"predicted"``.
    :param obs_scale: the fixed scale, or the initial value of the learned one.
    """

    family: str = "gaussian"
    scale_mode: str = "fixed"
    obs_scale: float = 1.0

    @property
    def learns_scale(self) -> bool:
        return self.scale_mode == "learned"

    def _scale(self, loc: torch.Tensor, raw: torch.Tensor | None,
               learned: torch.Tensor | None) -> torch.Tensor | float:
        if self.scale_mode == "predicted":
            assert raw is not None
            return F.softplus(raw) + MIN_PREDICTED_SCALE
        if self.scale_mode == "learned":
            if learned is not None:
                return learned
            init = self.obs_scale
            return pyro.param(
                OBS_SCALE_PARAM,
                lambda: torch.tensor(init, device=loc.device, dtype=loc.dtype),
                constraint=constraints.positive,
            )
        return self.obs_scale

    def distribution(  # type: ignore[override]
        self, loc: torch.Tensor, raw_scale: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> dist.TorchDistribution:
        scale = self._scale(loc, raw_scale, scale)
        if self.family == "laplace":
            return dist.Laplace(loc, scale)
        return dist.Normal(loc, scale)

    def mean(self, loc: torch.Tensor, raw_scale: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return loc


def _location_scale(name: str, num_params: int, mode: str, default_scale: float | None):
    family = name.split("-")[0]

    def build(obs_scale: float | None, allow_greyscale: bool) -> Likelihood:
        scale = obs_scale or default_scale or 1.0
        return LocationScaleLikelihood(name, num_params, "real", family=family, scale_mode=mode,
                                       obs_scale=scale)

    return build


#: name → factory ``(obs_scale, allow_greyscale) -> Likelihood``: the registry that
#: :func:`make_likelihood`, the configuration and ``--likelihood`` read. The default scale is
#: 1.0 for a fixed σ (or b), 0.1 as the start of a learned one.
LIKELIHOOD_REGISTRY: dict[str, Callable[[float | None, bool], Likelihood]] = {
    "bernoulli": lambda s, grey: BernoulliLikelihood("bernoulli", 1, "binary",
                                                     allow_greyscale=grey),
    "continuous-bernoulli": lambda s, grey: ContinuousBernoulliLikelihood(
        "continuous-bernoulli", 1, "unit"),
    "gaussian": _location_scale("gaussian", 1, "fixed", 1.0),
    "gaussian-learned": _location_scale("gaussian-learned", 1, "learned", 0.1),
    "gaussian-predicted": _location_scale("gaussian-predicted", 2, "predicted", None),
    "laplace": _location_scale("laplace", 1, "fixed", 1.0),
    "laplace-learned": _location_scale("laplace-learned", 1, "learned", 0.1),
}
LIKELIHOODS = tuple(LIKELIHOOD_REGISTRY)


def make_likelihood(
    name: str, obs_scale: float | None = None, allow_greyscale: bool = False
) -> Likelihood:
    """Build a likelihood by its registered name (:data:`LIKELIHOOD_REGISTRY`).

    :param obs_scale: σ (Gaussian) or b (Laplace): the fixed value, or the learned one's start
        (default 1.0 for fixed scales, 0.1 as the start of a learned one). Ignored otherwise.
    """
    if obs_scale is not None and not (
            isinstance(obs_scale, (int, float)) and not isinstance(obs_scale, bool)
            and 0 < obs_scale < float("inf")):
        raise ConfigError(
            f"--obs-scale must be a positive finite number, got {obs_scale}; "
            "it is the fixed σ of a Gaussian (or b of a Laplace) likelihood, e.g. 0.1"
        )
    try:
        factory = LIKELIHOOD_REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown likelihood {name!r}; choose one of: {', '.join(LIKELIHOODS)}"
        ) from None
    return factory(obs_scale, allow_greyscale)
