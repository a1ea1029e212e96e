"""Gradient estimators of the ELBO, written out and through Pyro's own machinery.

For one data point, with q_φ(z|x) = N(μ_φ(x), diag σ²_φ(x)) and the ELBO integrand

    f(z) = log p_θ(x|z) + log p(z) - log q_φ(z|x)          (Monte Carlo KL, ``kl="mc"``)
    f(z) = log p_θ(x|z),  ELBO = E_q[f] - KL(q ‖ p)         (analytic KL, ``kl="analytic"``)

the estimators of ∇_φ ELBO, from S samples z_s, are (θ-gradients are ∇_θ f in every case):

``reparam`` (pathwise)
    z_s = μ + σ ⊙ ε_s, ε_s ~ N(0, I):  (1/S) Σ_s ∇_φ f(μ + σ ε_s).
``score`` (REINFORCE, likelihood ratio)
    z_s ~ q, no gradient through z:  (1/S) Σ_s (f(z_s) - b) ∇_φ log q(z_s), b = 0.
    The direct dependence of f on φ through its -log q term is dropped: its expectation
    -E_q[∇_φ log q] is zero, and Pyro's ``TraceGraph_ELBO`` drops it too (a non-reparameterized
    site's ``score_parts.entropy_term`` is 0).
    Surrogate: f|_{log q fixed} + log q · stop_grad(f - b).
``score-avg``
    the same with b = the decaying average of f over earlier estimates, per data point and
    sample slot s (b ← β b + (1 - β) f, β = 0.9, starting at 0, the old value used: exactly
    ``TraceGraph_ELBO``'s ``use_decaying_avg_baseline``): b does not depend on z_s, so the
    estimator stays unbiased.
``score-nn``
    the same with b = b_ψ(x), a small network trained to minimize (f - b_ψ(x))², the learned
    baseline of Mnih & Gregor (2014).
``stl`` (sticking the landing, Roeder et al. 2017)
    pathwise, but log q(z|x) is evaluated with μ, σ held fixed (stop_grad), which drops the
    score term ∇_φ log q(z)|_{z fixed} (zero mean, non-zero variance). With an analytic KL
    there is no sampled log q term, and ``stl`` equals ``reparam``.

:func:`explicit_surrogate` implements each in a few lines of torch. :func:`pyro_loss` computes
the same estimators with Pyro's ELBOs: ``Trace_ELBO`` / ``TraceMeanField_ELBO`` for ``reparam``,
``TraceGraph_ELBO`` with the guide's site ``"z"`` made non-reparameterizable for the ``score``
family (baselines through the site's ``infer={"baseline": ...}``), and ``Trace_ELBO`` with a
stop-gradient ``log_prob`` for ``stl``.

Marking a site non-reparameterizable in Pyro 1.9: ``Normal(...).has_rsample_(False).to_event(1)``
raises ``AttributeError: property 'has_rsample' of 'Independent' object has no setter`` as soon as
a plate broadcasts it (``BroadcastMessenger`` expands the distribution, which drops the instance
flag, then tries to copy it onto the ``Independent``). What works is a ``Normal`` subclass whose
*class* attribute is ``has_rsample = False`` (:class:`ScoreFunctionNormal`): ``expand`` keeps the
class, so the flag survives ``.to_event``, the data plate and the vectorized-particle plate.
:class:`ScoreFunctionMessenger` swaps it in at site ``"z"`` of any guide.

Pyro has no score-function estimator with an analytic KL (``TraceMeanField_ELBO`` requires
reparameterized guide sites): that combination exists only in the explicit form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import make_elbo, particle_options
from pyro_vae.models.vae import VAE
from pyro_vae.sites import LATENT_SITE

ESTIMATORS = ("reparam", "score", "score-avg", "score-nn", "stl")
KL_MODES = ("mc", "analytic")
SCORE_FAMILY = ("score", "score-avg", "score-nn")
#: The baseline each score-function estimator uses (``None``: no baseline).
BASELINE_KIND: dict[str, str | None] = {"score": None, "score-avg": "avg", "score-nn": "nn"}

#: β of the decaying-average baseline (Pyro's default ``baseline_beta``).
BASELINE_BETA = 0.9


def check_estimator(estimator: str, kl: str) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    if kl not in KL_MODES:
        raise ConfigError(f"unknown KL mode {kl!r}; choose mc (Monte Carlo) or analytic")


# --------------------------------------------------------------------------- distributions
class ScoreFunctionNormal(dist.Normal):
    """A Normal that Pyro treats as non-reparameterizable (``has_rsample`` is a class attribute,
    so it survives ``expand`` by plates and particle dimensions)."""

    has_rsample = False


class StopGradientNormal(dist.Normal):
    """A Normal whose samples are reparameterized but whose ``log_prob`` sees μ and σ as constants
    (the sticking-the-landing path derivative)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.loc.detach(), self.scale.detach()).log_prob(value)


class ScoreFunctionMultivariateNormal(dist.MultivariateNormal):
    """A full-covariance Gaussian that Pyro treats as non-reparameterizable."""

    has_rsample = False


class StopGradientMultivariateNormal(dist.MultivariateNormal):
    """A full-covariance Gaussian whose ``log_prob`` sees its parameters as constants."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.MultivariateNormal(self.loc.detach(),
                                       scale_tril=self.scale_tril.detach()).log_prob(value)


_REBUILD = {
    "score": {dist.Normal: ScoreFunctionNormal,
              dist.MultivariateNormal: ScoreFunctionMultivariateNormal},
    "stl": {dist.Normal: StopGradientNormal,
            dist.MultivariateNormal: StopGradientMultivariateNormal},
}


def _rebuild(fn: dist.TorchDistribution, kind: str) -> dist.TorchDistribution:
    """``fn`` as the score-function (``kind="score"``) or sticking-the-landing (``"stl"``)
    version of its Gaussian, keeping its ``to_event`` dims: the guide site may be a diagonal
    (``Normal``) or full-covariance (``MultivariateNormal``) Gaussian."""
    if kind == "score" and not fn.has_rsample:
        return fn  # already a score-function site (a discrete code)
    base, ndims = fn, 0
    while isinstance(base, dist.Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, dist.MultivariateNormal):
        new = _REBUILD[kind][dist.MultivariateNormal](base.loc, scale_tril=base.scale_tril)
    elif isinstance(base, dist.Normal):
        new = _REBUILD[kind][dist.Normal](base.loc, base.scale)
    else:
        raise ConfigError(f"the {kind} estimator needs a Gaussian guide site z (Normal or "
                          f"MultivariateNormal), got {type(base).__name__}; use the reparam "
                          "estimator for this guide")
    return new.to_event(ndims) if ndims else new


class ScoreFunctionMessenger(Messenger):
    """Make ``site`` of the wrapped guide non-reparameterizable, optionally with a baseline.

    :param baseline: ``None``, ``"avg"`` (decaying average, ``baseline_beta`` = 0.9) or
        ``"nn"`` (with ``nn_baseline`` and its input ``nn_baseline_input``).
    """

    def __init__(self, site: str = LATENT_SITE, baseline: str | None = None,
                 nn_baseline: nn.Module | None = None,
                 nn_baseline_input: torch.Tensor | None = None) -> None:
        super().__init__()
        self.site = site
        self.baseline = baseline
        self.nn_baseline = nn_baseline
        self.nn_baseline_input = nn_baseline_input

    def _process_message(self, msg: Any) -> None:
        if msg["type"] != "sample" or msg["name"] != self.site or msg["is_observed"]:
            return
        msg["fn"] = _rebuild(msg["fn"], "score")
        if self.baseline == "avg":
            msg["infer"]["baseline"] = {"use_decaying_avg_baseline": True,
                                        "baseline_beta": BASELINE_BETA}
        elif self.baseline == "nn":
            msg["infer"]["baseline"] = {"nn_baseline": self.nn_baseline,
                                        "nn_baseline_input": self.nn_baseline_input}


class StickingTheLandingMessenger(Messenger):
    """Evaluate ``log q`` at ``site`` with stop-gradient parameters (STL)."""

    def __init__(self, site: str = LATENT_SITE) -> None:
        super().__init__()
        self.site = site

    def _process_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and msg["name"] == self.site and not msg["is_observed"]:
            msg["fn"] = _rebuild(msg["fn"], "stl")


class DifferentiableTraceGraph_ELBO(TraceGraph_ELBO):  # noqa: N801 (Pyro's naming)
    """``TraceGraph_ELBO`` with the ``differentiable_loss`` that Pyro's other ELBOs have: a
    tensor whose value is the loss and whose gradient is the score-function estimator's
    (the surrogate ``loss_and_grads`` backpropagates, baseline losses included)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        # Pyro's ``_loss_and_surrogate_loss`` returns the ELBO (not the loss) and the surrogate
        # loss; the loss is −ELBO, as ``loss_and_grads`` reports it
        elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate - surrogate.detach() - torch.as_tensor(elbo).detach()


class NeuralBaseline(nn.Module):
    """b_ψ(x): an MLP from a flattened data point to one number (the learned baseline).

    :param offset: the initial output (the output layer's bias). f is of the order of the
        ELBO, hundreds of nats on images; started at 0, the network would spend its first
        hundreds of steps learning that constant, so it starts at the mean of f instead.
    """

    def __init__(self, event_shape: tuple[int, ...], hidden: int = 64,
                 offset: float = 0.0) -> None:
        super().__init__()
        self.event_dims = len(event_shape)
        self.net = nn.Sequential(nn.Linear(math.prod(event_shape), hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[-1].bias.fill_(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x of shape ``(*batch, *event_shape)`` → b of shape ``batch``."""
        flat = x.reshape(*x.shape[: x.dim() - self.event_dims], -1)
        return self.net(flat).squeeze(-1)


# --------------------------------------------------------------------------- explicit form
def surrogate_objective(
    estimator: str,
    q: dist.TorchDistribution,
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_samples: int,
    baseline: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A surrogate whose gradient is the estimator, for any integrand ``f(z, log_q)``.

    :param q: the variational distribution (parameters carry gradients).
    :param f: the per-sample objective, given z of shape ``(S, *batch, L)`` and the log q(z) to
        use in it; returns shape ``(S, *batch)``.
    :returns: ``(surrogate, f_values)``: the surrogate averaged over the S samples (shape
        ``batch``) and the values of f (detached), for baselines.
    """
    if estimator in ("reparam", "stl"):
        z = q.rsample((num_samples,))
        log_q = q.log_prob(z) if estimator == "reparam" else \
            _rebuild(q, "stl").log_prob(z)
        fz = f(z, log_q)
        return fz.mean(0), fz.detach()
    z = q.sample((num_samples,))
    log_q = q.log_prob(z)
    fz = f(z, log_q.detach())  # θ-gradients stay; f's direct φ-dependence (zero mean) is dropped
    return (fz + log_q * (fz - baseline).detach()).mean(0), fz.detach()


def vae_integrand(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None, kl: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(z, log q) of the module docstring for ``vae`` at the batch ``x``."""
    prior = vae.prior(x.shape[0], x.device)

    def f(z: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        log_lik = vae.observation_distribution(z, y).log_prob(x)
        return log_lik if kl == "analytic" else log_lik + prior.log_prob(z) - log_q

    return f


class BaselineState:
    """The baselines' memory between estimates: the decaying average per data point, or the
    network b_ψ(x) with its optimizer (one Adam step on (f - b_ψ(x))² per estimate)."""

    def __init__(self, kind: str | None, x: torch.Tensor, lr: float = 1e-2,
                 offset: float = 0.0) -> None:
        self.kind = kind
        self.x = x
        self.average: torch.Tensor | None = None
        self.net: NeuralBaseline | None = None
        if kind == "nn":
            self.net = NeuralBaseline(tuple(x.shape[1:]), offset=offset).to(x.device)
            self.optim = torch.optim.Adam(self.net.parameters(), lr=lr)

    def value(self) -> torch.Tensor | float:
        if self.kind == "avg":
            return 0.0 if self.average is None else self.average
        if self.kind == "nn":
            assert self.net is not None
            with torch.no_grad():
                return self.net(self.x)
        return 0.0

    def update(self, f_values: torch.Tensor) -> None:
        if self.kind == "avg":  # per sample slot and data point, from 0, as Pyro keeps it
            old = torch.zeros_like(f_values) if self.average is None else self.average
            self.average = BASELINE_BETA * old + (1 - BASELINE_BETA) * f_values
        elif self.kind == "nn":
            target = f_values.mean(0)  # average over the S samples, per data point
            assert self.net is not None
            with torch.enable_grad():  # also during a no-grad warm-up
                self.optim.zero_grad()
                loss = ((self.net(self.x) - target) ** 2).mean()
                loss.backward()
                self.optim.step()


def mean_integrand(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, kl: str) -> float:
    """E_q[f] over the batch from one draw per point: the starting offset of b_ψ."""
    with torch.no_grad():
        q = vae.posterior(x, y)
        z = q.sample()
        return float(vae_integrand(vae, x, y, kl)(z, q.log_prob(z)).mean())


def explicit_surrogate(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    estimator: str,
    kl: str = "mc",
    num_samples: int = 1,
    baseline: BaselineState | None = None,
) -> torch.Tensor:
    """Minus the mean-per-point surrogate ELBO of ``estimator``: backpropagate it to get the
    estimate of -∇ ELBO. Updates ``baseline`` with this estimate's values of f."""
    check_estimator(estimator, kl)
    q = vae.posterior(x, y)
    b = baseline.value() if baseline is not None else 0.0
    objective, f_values = surrogate_objective(estimator, q, vae_integrand(vae, x, y, kl),
                                              num_samples, b)
    if kl == "analytic":
        objective = objective - kl_divergence(q, vae.prior(x.shape[0], x.device))
    if baseline is not None:
        baseline.update(f_values)
    return -objective.mean()


# --------------------------------------------------------------------------- through Pyro
def pyro_loss(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    estimator: str,
    kl: str = "mc",
    num_samples: int = 1,
    nn_baseline: nn.Module | None = None,
    guide: Callable[..., Any] | None = None,
) -> torch.Tensor:
    """The same estimator's surrogate through Pyro's ELBOs, per data point (loss / B), for
    ``guide`` (default ``vae.guide``; any guide of the protocol whose site ``"z"`` is a
    Gaussian, diagonal or full-covariance, for the score and STL estimators).

    ``vae.num_data`` must be ``None`` (the batch is the data set) so the scales match the
    explicit form. Returns a differentiable surrogate loss; for the ``score`` family it is
    ``TraceGraph_ELBO``'s surrogate including its baseline loss (whose gradient reaches only
    the baseline network).
    """
    check_estimator(estimator, kl)
    if estimator in SCORE_FAMILY:
        _check_pyro_supports(estimator, kl)
        sf_guide = _score_function_guide(vae, BASELINE_KIND[estimator], nn_baseline,
                                         num_samples, register=False,  # the lab trains it
                                         guide=guide)
        elbo = DifferentiableTraceGraph_ELBO(**particle_options(num_samples))
        return _tracegraph_surrogate(elbo, vae.model, sf_guide, x, y) / x.shape[0]
    est_guide, elbo = svi_objective(vae, estimator, kl, num_samples, guide=guide)
    return elbo.differentiable_loss(vae.model, est_guide, x, y) / x.shape[0]


def _check_pyro_supports(estimator: str, kl: str) -> None:
    if estimator in SCORE_FAMILY and kl == "analytic":
        raise ConfigError("Pyro has no score-function ELBO with an analytic KL "
                          "(TraceMeanField_ELBO needs reparameterized sites); use kl='mc', or "
                          "the explicit implementation for this combination")


def _score_function_guide(
    vae: VAE, kind: str | None, net: nn.Module | None, num_particles: int, register: bool,
    guide: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """The VAE's guide under :class:`ScoreFunctionMessenger`. The network baseline must match
    TraceGraph's downstream cost, shape (S, B) with S vectorized particles, so its input is
    expanded; ``register`` makes it a ``pyro.module`` that SVI trains."""

    base_guide = vae.guide if guide is None else guide

    def sf_guide(x, y=None, indices=None, beta=1.0):
        if register and net is not None:
            pyro.module("baseline", net)
        nn_input = x.expand(num_particles, *x.shape) if num_particles > 1 else x
        handler = ScoreFunctionMessenger(baseline=kind, nn_baseline=net,
                                         nn_baseline_input=nn_input)
        return handler(base_guide)(x, y, indices, beta)

    sf_guide.baseline_net = net  # for callers that train the baseline themselves
    return sf_guide


def _tracegraph_surrogate(elbo: TraceGraph_ELBO, model, guide, *args) -> torch.Tensor:
    """``TraceGraph_ELBO``'s differentiable surrogate loss (what ``loss_and_grads`` backprops)."""
    _, surrogate = elbo._loss_and_surrogate_loss(model, guide, args, {})
    return surrogate


def svi_objective(
    vae: VAE, estimator: str, kl: str = "mc", num_particles: int = 1,
    baseline_offset: float = 0.0, guide: Callable[..., Any] | None = None,
) -> tuple[Callable[..., Any], Any]:
    """A ``(guide, ELBO)`` pair that makes ``pyro.infer.SVI`` train with ``estimator``.

    ``reparam``: the VAE's guide with ``Trace_ELBO`` (``TraceMeanField_ELBO`` for an analytic
    KL). ``stl``: the guide under :class:`StickingTheLandingMessenger` with ``Trace_ELBO``.
    Score family: the guide under :class:`ScoreFunctionMessenger` with ``TraceGraph_ELBO``;
    ``score-nn`` registers its :class:`NeuralBaseline` with ``pyro.module("baseline", ...)``
    so that SVI trains it alongside the VAE. TraceGraph's costs carry the plate's N/B scale,
    so ``baseline_offset`` (the network's starting output) should be about N/B · E_q[f].
    """
    check_estimator(estimator, kl)
    _check_pyro_supports(estimator, kl)
    base_guide = vae.guide if guide is None else guide
    if estimator == "reparam" or (estimator == "stl" and kl == "analytic"):
        # with an analytic KL there is no sampled log q: STL is the reparameterized estimator
        return base_guide, make_elbo("meanfield" if kl == "analytic" else "trace",
                                     num_particles)
    if estimator == "stl":
        return StickingTheLandingMessenger()(base_guide), make_elbo("trace", num_particles)
    kind = BASELINE_KIND[estimator]
    net = NeuralBaseline(vae.event_shape, offset=baseline_offset) if kind == "nn" else None
    if net is not None:
        net.to(next(vae.encoder.parameters()).device)
    return (_score_function_guide(vae, kind, net, num_particles, register=True,
                                  guide=guide),
            DifferentiableTraceGraph_ELBO(**particle_options(num_particles)))
