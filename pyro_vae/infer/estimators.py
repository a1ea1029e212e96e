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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import particle_options
from pyro_vae.infer.problem import Problem, describe, program_of
from pyro_vae.models.vae import VAE

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
class StopGradientNormal(dist.Normal):
    """A Normal whose samples are reparameterized but whose ``log_prob`` sees μ and σ as constants
    (the sticking-the-landing path derivative)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.loc.detach(), self.scale.detach()).log_prob(value)


class StopGradientMultivariateNormal(dist.MultivariateNormal):
    """A full-covariance Gaussian whose ``log_prob`` sees its parameters as constants."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.MultivariateNormal(self.loc.detach(),
                                       scale_tril=self.scale_tril.detach()).log_prob(value)


_STOP_GRADIENT = {dist.Normal: StopGradientNormal,
                  dist.MultivariateNormal: StopGradientMultivariateNormal}


def _rebuild(fn: dist.TorchDistribution, kind: str = "stl", name: str = "z"
             ) -> dist.TorchDistribution:
    """``fn`` as the sticking-the-landing version of its Gaussian (``log_prob`` with its
    parameters held fixed), keeping its ``to_event`` dims: a diagonal (``Normal``) or
    full-covariance (``MultivariateNormal``) Gaussian. A ``Delta`` site (an autoguide's
    deterministic site, whose density is a Jacobian term of its auxiliary draw) is left as it
    is; any other family is refused."""
    base, ndims = fn, 0
    while isinstance(base, dist.Independent):
        ndims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if isinstance(base, dist.Delta):
        return fn
    if isinstance(base, dist.MultivariateNormal):
        new = _STOP_GRADIENT[dist.MultivariateNormal](base.loc, scale_tril=base.scale_tril)
    elif isinstance(base, dist.Normal):
        new = _STOP_GRADIENT[dist.Normal](base.loc, base.scale)
    else:
        raise ConfigError(f"the {kind} estimator needs Gaussian guide sites (Normal or "
                          f"MultivariateNormal); site {name!r} is {type(base).__name__}: use "
                          "the reparam estimator for this guide")
    return new.to_event(ndims) if ndims else new


_NO_SHAPE = torch.Size()


class ScoreFunctionDistribution(TorchDistribution):
    """Any distribution, seen by Pyro as non-reparameterizable: ``has_rsample`` is ``False``,
    ``sample`` draws without a gradient path, ``log_prob`` is the wrapped distribution's. Pyro's
    ``TraceGraph_ELBO`` then gives the site the score-function term
    ``log q(z) · (downstream cost − baseline)``. ``expand`` keeps the wrapper, so it survives
    plates and the vectorized-particle plate."""

    arg_constraints: ClassVar[dict] = {}
    has_rsample = False

    def __init__(self, base: TorchDistribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_enumerate_support(self) -> bool:
        return self.base.has_enumerate_support

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base.enumerate_support(expand)

    def expand(self, batch_shape, _instance=None) -> ScoreFunctionDistribution:
        return ScoreFunctionDistribution(self.base.expand(batch_shape))

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance


class _SiteMessenger(Messenger):
    """Rewrites the guide's latent sample sites — the named ``sites``, or every one (auxiliary
    sites included) when ``sites`` is ``None`` — and refuses, when the guide returns, a named
    site it never sampled."""

    what = "the estimator"

    def __init__(self, sites: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(sites, str):
            sites = (sites,)
        self.sites = None if sites is None else tuple(sites)
        self._seen: set[str] = set()
        self._sampled: set[str] = set()

    def __enter__(self):
        self._seen, self._sampled = set(), set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        out = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.sites is not None:
            missing = [s for s in self.sites if s not in self._seen]
            if missing:
                known = ", ".join(map(repr, sorted(self._sampled))) or "none"
                raise ConfigError(f"{self.what} names site(s) {', '.join(map(repr, missing))}, "
                                  f"which the guide does not sample; name its latent sites "
                                  f"({known}) or pass sites=None for all of them")
        return out

    def _applies(self, msg: Any) -> bool:
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return False
        self._sampled.add(msg["name"])
        if self.sites is not None and msg["name"] not in self.sites:
            return False
        self._seen.add(msg["name"])
        return True


class ScoreFunctionMessenger(_SiteMessenger):
    """Make the guide's ``sites`` (default: all its latent sites) non-reparameterizable
    (:class:`ScoreFunctionDistribution`), optionally with a baseline.

    :param baseline: ``None``, ``"avg"`` (decaying average, ``baseline_beta`` = 0.9) or
        ``"nn"`` (with ``nn_baseline`` and its input ``nn_baseline_input``).
    """

    what = "the score-function estimator"

    def __init__(self, sites: Sequence[str] | None = None, baseline: str | None = None,
                 nn_baseline: nn.Module | None = None,
                 nn_baseline_input: torch.Tensor | None = None) -> None:
        super().__init__(sites)
        self.baseline = baseline
        self.nn_baseline = nn_baseline
        self.nn_baseline_input = nn_baseline_input

    def _process_message(self, msg: Any) -> None:
        if not self._applies(msg):
            return
        if msg["fn"].has_rsample:
            msg["fn"] = ScoreFunctionDistribution(msg["fn"])
        if self.baseline == "avg":
            msg["infer"]["baseline"] = {"use_decaying_avg_baseline": True,
                                        "baseline_beta": BASELINE_BETA}
        elif self.baseline == "nn":
            msg["infer"]["baseline"] = {"nn_baseline": self.nn_baseline,
                                        "nn_baseline_input": self.nn_baseline_input}


class StickingTheLandingMessenger(_SiteMessenger):
    """Evaluate ``log q`` at the guide's ``sites`` (default: all its latent sites) with
    stop-gradient parameters (STL); the sites must be Gaussian (diagonal or full covariance)."""

    what = "the sticking-the-landing estimator"

    def _process_message(self, msg: Any) -> None:
        if self._applies(msg):
            msg["fn"] = _rebuild(msg["fn"], "stl", msg["name"])


class DifferentiableTraceGraph_ELBO(TraceGraph_ELBO):  # noqa: N801 (Pyro's naming)
    """``TraceGraph_ELBO`` with the ``differentiable_loss`` that Pyro's other ELBOs have: a
    tensor whose value is the loss and whose gradient is the score-function estimator's
    (the surrogate ``loss_and_grads`` backpropagates, baseline losses included)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        # Pyro's ``_loss_and_surrogate_loss`` returns the ELBO (not the loss) and the surrogate
        # loss; the loss is −ELBO, as ``loss_and_grads`` reports it
        elbo, surrogate = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate - surrogate.detach() - torch.as_tensor(elbo).detach()


class ScoreFunctionELBO(DifferentiableTraceGraph_ELBO):
    """The score-function (REINFORCE) estimator of the ELBO gradient as a Pyro ``ELBO``: hand it
    to ``pyro.infer.SVI`` with the *unchanged* model and guide.

    Each step runs the guide with ``sites`` (default: every latent site it samples) made
    non-reparameterizable (:class:`ScoreFunctionMessenger`), so ``TraceGraph_ELBO`` gives each
    of them the surrogate term log q(z) · stop_grad(downstream cost − b); every other site
    keeps its pathwise gradient. Unbiased for any baseline b that does not depend on the draw
    of z (Williams 1992; Mnih & Gregor 2014; Pyro's SVI tutorial part III).

    :param sites: guide site names, or ``None`` for all; a name the guide never samples raises
        :class:`~pyro_vae.errors.ConfigError` at the first step.
    :param baseline: ``None``, ``"avg"`` (Pyro's decaying average, β = 0.9, per site), ``"nn"``
        (a :class:`NeuralBaseline` b_ψ(x) of the guide's first argument, built at the first step
        and registered as ``pyro.module(baseline_name, ...)`` so that SVI trains it on
        (cost − b)²) or an ``nn.Module`` to use as that network.
    :param baseline_offset: b_ψ's initial output (TraceGraph's costs carry the plate's N/B, so
        about N/B · E_q[f] is a good start).
    """

    def __init__(self, sites: Sequence[str] | None = None,
                 baseline: str | nn.Module | None = None, num_particles: int = 1,
                 baseline_offset: float = 0.0, baseline_name: str = "baseline",
                 register_baseline: bool = True, **elbo_options: Any) -> None:
        if isinstance(baseline, nn.Module):
            self.baseline_kind, self.nn_baseline = "nn", baseline
        elif baseline in (None, "avg", "nn"):
            self.baseline_kind, self.nn_baseline = baseline, None
        else:
            raise ConfigError(f"unknown baseline {baseline!r}; use None, 'avg', 'nn' or a "
                              "torch.nn.Module")
        elbo_options.setdefault("vectorize_particles", num_particles > 1)
        super().__init__(num_particles=num_particles, **elbo_options)
        self.messenger = ScoreFunctionMessenger(sites)
        self.sites = self.messenger.sites
        self.baseline_offset, self.baseline_name = baseline_offset, baseline_name
        self.register_baseline = register_baseline

    def _guide(self, guide):
        def scored(*args, **kwargs):
            handler = self.messenger
            handler.baseline = self.baseline_kind
            if self.baseline_kind == "nn":
                x = args[0] if args else next(iter(kwargs.values()))
                if self.nn_baseline is None:
                    self.nn_baseline = NeuralBaseline(tuple(x.shape[1:]),
                                                      offset=self.baseline_offset).to(x.device)
                if self.register_baseline:
                    pyro.module(self.baseline_name, self.nn_baseline)
                particles = self.num_particles if self.vectorize_particles else 1
                handler.nn_baseline = self.nn_baseline
                handler.nn_baseline_input = x.expand(particles, *x.shape) if particles > 1 else x
            with handler:
                return guide(*args, **kwargs)

        return scored

    def _get_trace(self, model, guide, args, kwargs):
        return super()._get_trace(model, self._guide(guide), args, kwargs)


class StickingTheLandingELBO(Trace_ELBO):
    """The sticking-the-landing estimator (Roeder, Wu & Duvenaud 2017) as a Pyro ``ELBO``:
    ``Trace_ELBO`` with log q of the guide's ``sites`` (default: all its Gaussian sites)
    evaluated with the distribution's parameters held fixed, which drops the score term
    ∇_φ log q(z)|_z (zero mean, non-zero variance) from the pathwise gradient. Unbiased for the
    ELBO; exact (zero variance) when q equals the posterior."""

    def __init__(self, sites: Sequence[str] | None = None, **elbo_options: Any) -> None:
        super().__init__(**elbo_options)
        self.messenger = StickingTheLandingMessenger(sites)
        self.sites = self.messenger.sites

    def _get_trace(self, model, guide, args, kwargs):
        return super()._get_trace(model, self.messenger(guide), args, kwargs)


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
            _rebuild(q).log_prob(z)
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


def mean_integrand(vae: Any, x: torch.Tensor, y: torch.Tensor | None, kl: str,
                   guide: Callable[..., Any] | None = None) -> float:
    """E_q[f] over the batch from one draw per point (the starting offset of b_ψ): the ELBO
    integrand log p(x, z) − log q(z | x) for ``kl="mc"``, log p(x | z) for ``"analytic"``."""
    from pyro_vae.infer.evaluation import elbo_terms

    with torch.no_grad():
        terms = elbo_terms(vae, x, y, 1, guide)
    return float(terms["recon" if kl == "analytic" else "elbo"].mean())


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
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    estimator: str,
    kl: str = "mc",
    num_samples: int = 1,
    nn_baseline: nn.Module | None = None,
    guide: Callable[..., Any] | None = None,
    problem: Problem | None = None,
) -> torch.Tensor:
    """The estimator's surrogate loss through Pyro's ELBOs, per data point of the whole data
    set (loss / N, N the data plate's full size), for ``vae.model`` and ``guide`` (default
    ``vae.guide``) — any model and guide: the score family makes every latent site of the
    guide score-function, STL stops the gradient through every Gaussian site's parameters.

    For the ``score`` family it is ``TraceGraph_ELBO``'s surrogate including its baseline loss
    (whose gradient reaches only ``nn_baseline``, which the caller trains).
    """
    check_estimator(estimator, kl)
    model, guide = program_of(vae, guide)
    problem = problem or describe(model, guide, x, y)
    args = problem.args(x, y)
    _, elbo = pyro_objective(estimator, kl, num_samples, nn_baseline=nn_baseline,
                             register_baseline=False,
                             max_plate_nesting=problem.max_plate_nesting)
    return elbo.differentiable_loss(model, guide, *args) / problem.plate.full_size


def _check_pyro_supports(estimator: str, kl: str) -> None:
    if estimator in SCORE_FAMILY and kl == "analytic":
        raise ConfigError("Pyro has no score-function ELBO with an analytic KL "
                          "(TraceMeanField_ELBO needs reparameterized sites); use kl='mc', or "
                          "the explicit implementation for this combination")


def pyro_objective(estimator: str, kl: str = "mc", num_particles: int = 1,
                   baseline_offset: float = 0.0, nn_baseline: nn.Module | None = None,
                   sites: Sequence[str] | None = None, register_baseline: bool = True,
                   max_plate_nesting: float = float("inf")) -> tuple[str, Any]:
    """The Pyro ``ELBO`` of ``estimator`` (and its name): ``Trace_ELBO`` (or
    ``TraceMeanField_ELBO`` for an analytic KL) for ``reparam``, :class:`StickingTheLandingELBO`
    for ``stl``, :class:`ScoreFunctionELBO` with the estimator's baseline for the score
    family. Each takes the user's model and guide unchanged; ``max_plate_nesting`` unset,
    Pyro finds the model's nesting from its first trace."""
    check_estimator(estimator, kl)
    _check_pyro_supports(estimator, kl)
    options = {**particle_options(num_particles), "max_plate_nesting": max_plate_nesting}
    if estimator == "reparam" or (estimator == "stl" and kl == "analytic"):
        # with an analytic KL there is no sampled log q: STL is the reparameterized estimator
        cls = TraceMeanField_ELBO if kl == "analytic" else Trace_ELBO
        return "reparam", cls(**options)
    if estimator == "stl":
        return "stl", StickingTheLandingELBO(sites, **options)
    kind = BASELINE_KIND[estimator]
    baseline = nn_baseline if (kind == "nn" and nn_baseline is not None) else kind
    return estimator, ScoreFunctionELBO(sites, baseline, baseline_offset=baseline_offset,
                                        register_baseline=register_baseline, **options)


def svi_objective(
    vae: Any, estimator: str, kl: str = "mc", num_particles: int = 1,
    baseline_offset: float = 0.0, guide: Callable[..., Any] | None = None,
    sites: Sequence[str] | None = None,
) -> tuple[Callable[..., Any], Any]:
    """A ``(guide, ELBO)`` pair that makes ``pyro.infer.SVI`` train with ``estimator``: the
    guide is ``guide`` (default ``vae.guide``) unchanged, the ELBO :func:`pyro_objective`'s.
    ``score-nn`` registers its :class:`NeuralBaseline` with ``pyro.module("baseline", ...)``
    so that SVI trains it alongside the model; ``baseline_offset`` is its starting output
    (about N/B · E_q[f], as TraceGraph's costs carry the plate's N/B scale)."""
    base_guide = vae.guide if guide is None else guide
    net = None
    if BASELINE_KIND.get(estimator) == "nn" and hasattr(vae, "event_shape"):
        # built now, not at the first step, so that it is a parameter of the guide's trace
        # (the trainer's optimizer and compiled step see it from the start)
        net = NeuralBaseline(tuple(vae.event_shape), offset=baseline_offset)
        owner = next(iter(vae.parameters()), None) if isinstance(vae, nn.Module) else None
        if owner is not None:
            net.to(owner.device)
    _, elbo = pyro_objective(estimator, kl, num_particles, baseline_offset, nn_baseline=net,
                             sites=sites)
    if net is None:
        return base_guide, elbo

    def guide_with_baseline(*args: Any, **kwargs: Any) -> Any:
        pyro.module(elbo.baseline_name, net)
        return base_guide(*args, **kwargs)

    guide_with_baseline.baseline_net = net  # for callers that train the baseline themselves
    return guide_with_baseline, elbo
