"""Gradient estimators for discrete latent codes, each a Pyro ELBO that ``SVI`` takes.

A discrete code has no pathwise gradient: the score function is exact but noisy, relaxations
are smooth but biased, and a small code can be summed out. For the code z ~ q_φ(z | x) and
f(z) = log p_θ(x, z) − log q_φ(z | x), ∇_φ ELBO = E_q[f(z) ∇_φ log q_φ(z | x)] (the
−E_q[∇_φ log q] term is zero), estimated by:

==============  =================================================================================
``score``       REINFORCE: (f(z) − b) ∇ log q(z) with b = 0 — Pyro's ``TraceGraph_ELBO`` (the
                code's distribution has no ``rsample``, so Pyro scores it already)
``score-avg``   the same with b the decaying average of f per data point (``TraceGraph_ELBO``'s
                ``use_decaying_avg_baseline``)
``score-nn``    NVIL's input-dependent baseline b_ψ(x), trained on (f − b_ψ(x))²
                (Mnih & Gregor 2014; ``TraceGraph_ELBO``'s ``nn_baseline``)
``vimco``       :class:`VIMCO_ELBO`: the K-sample bound IWAE_K = E log (1/K) Σ_k w_k with, for each
                draw, the leave-one-out learning signal L̂ − L̂_{−k} (Mnih & Rezende 2016); K ≥ 2
``relaxed``     the Concrete / Gumbel-softmax relaxation at temperature τ with the discrete KL in
                closed form (Jang et al. 2017; Maddison et al. 2017) — ``TraceMeanField_ELBO``
                on model and guide under :class:`~pyro_vae.distributions.discrete.RelaxedMessenger`
``relaxed-st``  the same with straight-through samples (hard codes forward, relaxed backward)
``enum``        exact: ``TraceEnum_ELBO`` with the guide's code enumerated (``config_enumerate``),
                E_q[f] as a sum over every state — for codes of at most 2^20 states
==============  =================================================================================

The score-function family and ``enum`` are unbiased for ∇ ELBO (``enum`` exactly), ``vimco``
for ∇ IWAE_K; the relaxations are biased for ∇ ELBO, with a bias that shrinks as τ → 0 while the
variance grows (``pyro_vae.lab.discrete`` measures both against :func:`exact_objective`).
REBAR (Tucker et al. 2017) and RELAX (Grathwohl et al. 2018), which use a relaxation as a control
variate for the score function, are not implemented.

**VIMCO's gradient.** With log weights ℓ_k = log p(x, z_k) − log q(z_k | x) of K draws,
L̂ = log (1/K) Σ_k e^{ℓ_k}, normalized weights w̃_k and the leave-one-out bound
L̂_{−k} = log (1/K) (Σ_{j≠k} e^{ℓ_j} + e^{ℓ̄_{−k}}), ℓ̄_{−k} the mean of the other ℓ_j (the
geometric mean replaces the k-th weight),

    ∇ L̂ ≈ Σ_k (L̂ − L̂_{−k}) ∇_φ log q(z_k | x) + Σ_k w̃_k ∇ ℓ_k,

the first sum over the non-reparameterized sites only, unbiased for ∇ IWAE_K because L̂_{−k} does
not depend on z_k. Importance weights are per data point with the ``"data"`` plate's N/B applied
outside the log-mean-exp (as in :class:`~pyro_vae.infer.importance.ImportanceWeightedELBO`, which
this class extends; Pyro issue #3104).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from pyro.infer.elbo import ELBO

from pyro_vae.distributions.discrete import RelaxedMessenger, check_temperature
from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.estimators import svi_objective
from pyro_vae.infer.importance import ImportanceWeightedELBO

DISCRETE_ESTIMATORS = ("score", "score-avg", "score-nn", "vimco", "relaxed", "relaxed-st", "enum",
                       "arm", "disarm", "rloo", "rebar", "relax")
#: the estimators of :mod:`pyro_vae.infer.binary` that are defined for binary codes only
BINARY_ONLY = ("arm", "disarm", "rebar", "relax")
RELAXED = ("relaxed", "relaxed-st")


class VIMCO_ELBO(ImportanceWeightedELBO):  # noqa: N801 (Pyro's naming)
    """The IWAE_K bound with VIMCO's leave-one-out score-function gradient (module docstring),
    for guides with discrete (non-reparameterized) sites; reparameterized sites, if any, get the
    pathwise IWAE gradient.

    :param num_particles: K ≥ 2 draws per data point.
    :param max_plate_nesting: as for every Pyro ELBO (1 for the library's models).
    """

    score_sites_allowed = True

    def __init__(self, num_particles: int = 4, max_plate_nesting: int = 1) -> None:
        check_count("num_particles", num_particles)
        if num_particles < 2:
            raise ConfigError("VIMCO needs K ≥ 2 samples per point (its baseline for each draw "
                              f"is built from the others), got {num_particles}; use "
                              "--num-particles 2 or more")
        super().__init__("iwae", num_particles, 1, "reparam", max_plate_nesting=max_plate_nesting)

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        parts = self._log_weights(model_trace, guide_trace)
        log_w = parts["log_p"] - parts["log_q_fixed"]  # (K, B)
        lw = log_w.detach()
        K = lw.shape[0]
        value = torch.logsumexp(lw, 0) - math.log(K)
        scale = parts["scale"]
        loss = -scale * value.sum()
        if not torch.is_grad_enabled() or not log_w.requires_grad:
            return loss, loss
        signal = value - leave_one_out_bounds(lw)
        surrogate = (lw.softmax(0) * log_w).sum()
        if isinstance(parts["log_q_score"], torch.Tensor):
            surrogate = surrogate + (signal * parts["log_q_score"]).sum()
        surrogate_loss = -scale * surrogate
        return loss, loss.detach() + surrogate_loss - surrogate_loss.detach()


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """L̂_{−k} for each k, shape (K, B): the K-sample bound with the k-th log weight replaced by
    the mean of the others."""
    K = log_w.shape[0]
    others = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)
    replaced = log_w.unsqueeze(0).repeat(K, 1, 1)  # [k, j, b]
    idx = torch.arange(K, device=log_w.device)
    replaced[idx, idx] = others
    return torch.logsumexp(replaced, 1) - math.log(K)


# --------------------------------------------------------------------------- objectives
@dataclass
class TemperatureSchedule:
    """τ(t) = max(τ_min, τ_0 · exp(−r t)) at step t (Jang et al. 2017 anneal τ this way)."""

    initial: float = 1.0
    minimum: float = 0.5
    rate: float = 1e-4

    def __post_init__(self) -> None:
        check_temperature(self.initial)
        check_temperature(self.minimum)
        if isinstance(self.rate, bool) or not 0 <= self.rate < math.inf:
            raise ConfigError(f"--temperature-decay must be a finite number ≥ 0, got "
                              f"{self.rate!r}; e.g. 1e-4 (0 keeps τ constant)")

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.initial * math.exp(-self.rate * step))


class DiscreteObjective:
    """The (model, guide, ELBO) triple that trains a discrete-latent model with ``estimator``,
    for ``pyro.infer.SVI(objective.model, objective.guide, optim, objective.elbo)``.

    :param vae: a :class:`~pyro_vae.models.discrete_vae.DiscreteVAE` (or any object whose
        ``model`` / ``guide`` keep the library's protocol with a discrete code at ``"z"``).
    :param estimator: one of :data:`DISCRETE_ESTIMATORS`.
    :param num_particles: samples per point (K for ``vimco``, which needs K ≥ 2).
    :param temperature: τ of the relaxations; :meth:`set_temperature` changes it.
    :param baseline_offset: the starting output of ``score-nn``'s baseline network.
    :param guide: a guide to use instead of ``vae.guide``.
    """

    def __init__(self, vae: Any, estimator: str, num_particles: int = 1,
                 temperature: float = 0.5, baseline_offset: float = 0.0,
                 guide: Callable[..., Any] | None = None) -> None:
        if estimator not in DISCRETE_ESTIMATORS:
            raise ConfigError(f"unknown estimator {estimator!r} for a discrete code; choose "
                              f"from {', '.join(DISCRETE_ESTIMATORS)}")
        check_count("num_particles", num_particles)
        self.estimator = estimator
        base_guide = vae.guide if guide is None else guide
        self.model = vae.model
        self._relax: list[RelaxedMessenger] = []
        self.elbo: ELBO
        if estimator in ("score", "score-avg", "score-nn"):
            self.guide, self.elbo = svi_objective(vae, estimator, "mc", num_particles,
                                                  baseline_offset=baseline_offset, guide=guide)
        elif estimator == "vimco":
            self.guide, self.elbo = base_guide, VIMCO_ELBO(num_particles)
        elif estimator in ("arm", "disarm", "rloo", "rebar", "relax"):
            from pyro_vae.infer.binary import BINARY_ESTIMATORS

            options = {"num_particles": num_particles} if estimator == "rloo" else {}
            self.guide = base_guide
            self.elbo = BINARY_ESTIMATORS[estimator](max_plate_nesting=1, **options)
        elif estimator == "enum":
            if num_particles != 1:
                raise ConfigError("the enum estimator is exact: it takes no samples; drop "
                                  "--num-particles")
            self.guide = config_enumerate(base_guide, default="parallel")
            self.elbo = TraceEnum_ELBO(max_plate_nesting=1)
        else:
            prior = RelaxedMessenger(temperature)
            posterior = RelaxedMessenger(temperature, straight_through=estimator == "relaxed-st")
            self._relax = [prior, posterior]
            self.model, self.guide = prior(vae.model), posterior(base_guide)
            self.elbo = TraceMeanField_ELBO(**_particles(num_particles))

    @property
    def temperature(self) -> float | None:
        return self._relax[0].temperature if self._relax else None

    def set_temperature(self, temperature: float) -> None:
        for messenger in self._relax:
            messenger.temperature = check_temperature(temperature)

    def differentiable_loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)


def _particles(num_particles: int) -> dict:
    return {"num_particles": num_particles, "vectorize_particles": num_particles > 1,
            "max_plate_nesting": 1}


# --------------------------------------------------------------------------- exact values
def state_log_weights(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every state s of the code: log q(s | x_n) and log w = log p(x_n, s) − log q(s | x_n),
    each of shape (S, B), differentiable in the networks' parameters."""
    q = vae.posterior(x, y)
    states = q.enumerate_support(expand=True)  # (S, B, *code)
    log_q = q.log_prob(states)
    log_p = vae.prior(x.shape[0], x.device).log_prob(states) \
        + vae.observation_distribution(states, y).log_prob(x)
    return log_q, log_p - log_q


#: the most (state tuple × draw) entries :func:`exact_objective` builds for IWAE_K
MAX_TUPLE_ENTRIES = 2 ** 24


def exact_objective(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                    num_particles: int = 1) -> torch.Tensor:
    """The exact per-point objective by enumeration, shape (B,): the ELBO Σ_s q(s)·log w(s) for
    ``num_particles`` = 1, else IWAE_K = Σ over K-tuples of states of Π_k q(s_k) ·
    log (1/K) Σ_k w(s_k). Differentiable: its gradient is the exact gradient."""
    log_q, log_w = state_log_weights(vae, x, y)
    S = log_q.shape[0]
    if num_particles == 1:
        return (log_q.exp() * log_w).sum(0)
    K = num_particles
    if S ** K * K > MAX_TUPLE_ENTRIES:
        raise ConfigError(f"IWAE_{K} over {S} states needs {S ** K:,} tuples of states, too many "
                          "to enumerate; use fewer units or particles")
    grids = torch.meshgrid(*[torch.arange(S, device=x.device)] * K, indexing="ij")
    index = torch.stack(grids, -1).reshape(-1, K)  # (S^K, K)
    lw, lq = log_w[index], log_q[index]  # (S^K, K, B)
    bound = torch.logsumexp(lw, 1) - math.log(K)
    return (lq.sum(1).exp() * bound).sum(0)


#: the most joint states :func:`discrete_posterior` enumerates (12 binary units)
MAX_STATES = 2 ** 12


def discrete_posterior(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The exact posterior p(s | x_n) of a model whose local latents are all discrete, by
    enumerating their joint states: ``(states, log_probs)`` with ``states[site]`` of shape
    ``(S, *site event shape)`` (the same S states for every point) and ``log_probs`` of shape
    ``(S, B)``, normalized over the states per point. The MAP state of point n is state
    ``log_probs[:, n].argmax()``; a posterior draw, a categorical draw over ``log_probs[:, n]``.

    What ``pyro.infer.infer_discrete`` computes, for the codes it cannot take: Pyro 1.9's
    ``infer_discrete`` packs enumerated values without event dims, so a site whose event shape is
    a vector of units (``DiscreteVAE``'s code) fails inside it with "Invalid tensor shape".
    Each site's states come from its prior's ``enumerate_support`` (a prior whose support does
    not depend on the other latents); at most :data:`MAX_STATES` joint states.
    """
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    from pyro_vae.infer.problem import ModelError, describe

    model = vae.model if hasattr(vae, "model") else vae
    problem = describe(model, None, x, y)
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(model).get_trace(*problem.args(x, y))
    supports = []
    for site in problem.latents:
        fn = tr.nodes[site.name]["fn"]
        if not site.is_discrete or not fn.has_enumerate_support:
            raise ModelError(f"the exact discrete posterior enumerates every latent; site "
                             f"{site.name!r} has no finite support to enumerate (a continuous "
                             "site, or discrete units made .to_event: use "
                             "pyro_vae.distributions.discrete.bernoulli_code for those)")
        supports.append(fn.enumerate_support(expand=False))
    total = math.prod(s.shape[0] for s in supports)
    if total > MAX_STATES:
        raise ConfigError(f"the latents have {total:,} joint states, more than {MAX_STATES:,} "
                          "to enumerate; use fewer units or an estimator's posterior samples")
    grids = torch.meshgrid(*[torch.arange(s.shape[0], device=x.device) for s in supports],
                           indexing="ij")
    states, values = {}, {}
    for site, support, grid in zip(problem.latents, supports, grids, strict=True):
        value = support[grid.reshape(-1)].reshape(total, *site.event_shape)
        states[site.name] = value  # the same S states for every point
        values[site.name] = value.reshape(total, *(1,) * problem.max_plate_nesting,
                                          *site.event_shape)
    with torch.no_grad(), problem.particle_plate(total):
        joint = poutine.trace(poutine.condition(model, data=values)).get_trace(
            *problem.args(x, y))
    log_p = sum(problem.per_point(s, s["fn"].log_prob(s["value"]), total)
                for s in joint.nodes.values() if s["type"] == "sample"
                and not site_is_subsample(s))
    return states, log_p - torch.logsumexp(log_p, 0, keepdim=True)
