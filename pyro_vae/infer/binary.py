"""Gradient estimators for binary (Bernoulli) latent sites: ARM, DisARM, REINFORCE leave-one-out,
REBAR and RELAX, each a Pyro ``ELBO`` that takes the user's unchanged model and guide; the
Gumbel-softmax relaxation (biased) and REINFORCE with a baseline (Pyro's ``TraceGraph_ELBO``)
beside them.

**Which sites.** A guide site is a *binary site* when it is a latent ``sample`` site (not
observed) whose distribution, with ``Independent`` / mask wrappers removed, is a
``Bernoulli`` (or has support ``constraints.boolean`` and ``logits``). Sites are found by
reading the guide trace, never by name; ``sites=[...]`` restricts an estimator to the named
ones (an unknown or non-binary name is a :class:`~pyro_vae.errors.ConfigError`). Every other
guide site keeps its usual gradient: pathwise for a reparameterized site (``rsample``), the plain
score function f·∇ log q (as ``Trace_ELBO``) for any other non-reparameterized site.

**The integrand, per data point.** With all latent values (b, z) of one draw and the sites'
log-densities scaled as Pyro scales them (subsampling N/B, ``poutine.scale``, masks),

    f(b, z) = log p(x, b, z) − log q(b, z | x).

The *local plates* are the vectorized plates that contain every observed site of the model and
every binary site of the guide — for the usual model, the data plate. A cell n of the local
plates (a data point) gets its own f_n: the terms of the sites in cell n plus every term outside
the local plates (those are shared by all cells). The ELBO is E_q[Σ_sites], and its gradient for
the logits α_{n,i} of unit i of point n needs f_n only (the other points' terms do not depend on
b_n; the units of a point may not couple across points, e.g. through batch norm).

Copies of a draw (antithetic pairs, K samples, relaxed copies) are vectorized as an outer
particle plate at dim ``-(max_plate_nesting + 1)`` around model and guide, as Pyro's vectorized
ELBOs do. The logits α are read from ``fn.logits`` of the binary site in the guide trace; they
keep their graph to the encoder, so every estimator below ends in a surrogate Σ ĝ·α whose
backward pass is ĝ·∂α/∂φ.

**Estimators** for ∇_α E_{q_α}[f(b)], q_α(b) = Π_i Bernoulli(b_i; σ(α_i)) over the d units of
a point (the units of all its binary sites, concatenated), u ~ U(0, 1)^d one uniform per unit.
ARM and DisARM treat all d units *jointly*: one antithetic pair b, b̃ ∈ {0, 1}^d per point, built
from the same u for every unit, and two evaluations f(b), f(b̃) shared by the d coordinates of
the gradient (the multi-dimensional estimators of the papers):

* **ARM** (Yin & Zhou 2019, "ARM: Augment-REINFORCE-Merge gradient for stochastic binary
  networks"), 2 evaluations of f:

      ĝ_i = (f(b̃) − f(b)) (u_i − ½),   b = 1[u < σ(α)],   b̃ = 1[u > σ(−α)] = 1[1 − u < σ(α)].

* **DisARM** (Dong, Mnih & Tucker 2020, "DisARM: an antithetic gradient estimator for binary
  latent variables"), the same pair, 2 evaluations — ARM with u integrated out given
  (b, b̃), so its variance is never above ARM's:

      ĝ_i = ½ (f(b) − f(b̃)) (−1)^{b̃_i} 1[b_i ≠ b̃_i] σ(|α_i|).

* **RLOO** (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples, get a baseline for
  free!"), K ≥ 2 independent draws, K evaluations; for any non-reparameterized site
  (categorical too):

      ĝ = (1/K) Σ_k (f(b_k) − (1/(K−1)) Σ_{j≠k} f(b_j)) ∇ log q(b_k).

* **REBAR** (Tucker et al. 2017, "REBAR: low-variance, unbiased gradient estimates for discrete
  latent variable models"), 3 evaluations and a double backward pass:

      ĝ = [f(b) − η f(σ_λ(z̃))] ∇ log q(b) + η ∇ f(σ_λ(z)) − η ∇ f(σ_λ(z̃)),

  z = α + logit(u), b = H(z) = 1[z > 0], z̃ ~ p(z | b) reparameterized as z̃ = α + logit(v')
  with v' = b (v σ(α) + 1 − σ(α)) + (1 − b) v (1 − σ(α)), v ~ U(0, 1), σ_λ(z) = σ(z/λ).

* **RELAX** (Grathwohl et al. 2018, "Backpropagation through the void"): REBAR with the
  control variate c_ψ(z) = η f(σ_λ(z)) + r_ρ(z), r_ρ a small network on the point's z:

      ĝ = [f(b) − c_ψ(z̃)] ∇ log q(b) + ∇ c_ψ(z) − ∇ c_ψ(z̃).

The relaxed evaluations f(σ_λ(·)) feed the relaxed values to the user's model and guide as they
are: the Bernoulli log-density extends to b ∈ (0, 1) as b log σ(a) + (1 − b) log σ(−a) (the
trace is run with distribution validation off), the decoder sees the relaxed code.

**Unbiasedness.** ARM and DisARM are exactly unbiased for ∇_α E_{q_α}[f(b)] for any f when the
logits α do not depend on b, per dimension with the shared f; RLOO for any f when the K
draws are independent; REBAR / RELAX for any differentiable control variate c (the REBAR
identity E[c(z̃) ∇ log q(b)] + E[∇ c(z̃)] = E[∇ c(z)]), whatever η, λ and ρ are. f itself
depends on α through −log q_α(b); that term's gradient E[−∇ log q_α(b)] is zero and is left out
(the papers do the same). The decoder θ gets the mean of ∇_θ f over the copies that are draws
from q (both antithetic copies, the K samples; the hard copy only for REBAR/RELAX). A
reparameterized site keeps its pathwise gradient ∇ f(z(ε)) (log q included).

*Conditions* (checked where they can be):

* ARM/DisARM (joint), REBAR and RELAX need the logits of each binary site not to depend on
  another binary draw (a guide whose binary layers are conditionally independent given x and any
  continuous draws). Latent sites drawn *before* the first binary site are shared by all copies
  of a group (their values copied from the first copy), so logits may depend on them; the
  logits are compared across the copies and a difference is a ConfigError. ARM and DisARM take
  ``layered=True`` for a hierarchical guide b₁ → b₂ → …: the estimator is then applied one
  binary site t at a time (as in the multi-layer experiments of the ARM and DisARM papers):
  every site before t is shared, the pair is antithetic at t, the later binary sites use the
  same u in both copies — 2·T evaluations for T binary sites, unbiased for any dependence
  between the sites.
* The estimators need the model and guide structure to be static (the same sites on each run).
* RLOO and the score-function terms need nothing else.

**REBAR/RELAX's control variate.** η, λ = exp(log λ) and ρ are parameters in the param store
(``pyro.param("<name>_eta")``, ``pyro.param("<name>_log_temperature")``,
``pyro.module("<name>_control", net)``), trained by the variance objective of the papers: the
estimator's per-logit gradient ĝ is built as a function of (η, λ, ρ) (double backward through
the relaxed evaluations) and the parameters receive ∇_ψ Σ_{n,i} ĝ_{n,i}², a one-sample estimate of
∇_ψ of the total variance of ĝ (E ĝ does not depend on ψ, so ∇_ψ E ĝ² = ∇_ψ Var ĝ). That
gradient enters :meth:`differentiable_loss` as a surrogate Σ ψ·(∇_ψ Σ ĝ²) with value 0, so
``SVI``'s optimizer steps ψ with the model and guide parameters. The variance is that of the
gradient w.r.t. the logits, as in the DisARM authors' code, not w.r.t. every encoder weight
(Grathwohl et al.), which would need one more backward pass through the encoder per step.

**Relaxed objective.** :class:`GumbelSoftmax_ELBO` replaces every binary site of model and guide
by its Concrete relaxation at temperature τ (Jang et al. 2017; Maddison et al. 2017) and uses
``TraceMeanField_ELBO`` (the discrete KL in closed form) or ``Trace_ELBO``. It is a *biased*
estimator of ∇ ELBO — the decoder sees relaxed codes, and its loss is the relaxed objective, not
−ELBO — with a bias that shrinks as τ → 0 while the variance grows.

**Reference estimators elsewhere.** :class:`REINFORCE_ELBO` is Pyro's ``TraceGraph_ELBO`` with
its decaying-average baseline switched on for the non-reparameterized guide sites (the guide is
not edited: the baseline option is set by ``poutine.infer_config``); VIMCO (the K-sample bound)
is :class:`pyro_vae.infer.discrete.VIMCO_ELBO`; exact enumeration is ``TraceEnum_ELBO`` with
:class:`pyro_vae.distributions.discrete.EnumerableIndependent`.

Cost per gradient (model + guide evaluations, vectorized): ARM/DisARM 2·num_pairs (2·T·num_pairs
layered), RLOO K, REBAR/RELAX 3 plus a double backward, REINFORCE num_particles
(:attr:`evaluations`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match, warn_if_nan
from torch.distributions import constraints

from pyro_vae.distributions.discrete import relax
from pyro_vae.errors import ConfigError, check_count

__all__ = [
    "ARM_ELBO",
    "BINARY_ESTIMATORS",
    "REBAR_ELBO",
    "REINFORCE_ELBO",
    "RELAX_ELBO",
    "RLOO_ELBO",
    "DisARM_ELBO",
    "GumbelSoftmax_ELBO",
    "binary_base",
    "is_binary_site",
]

PARTICLE_PLATE = "_binary_particles"
#: u is kept in [EPS, 1 − EPS] where logit(u) is taken (REBAR, RELAX)
EPS = 1e-6
_WRAPPERS = (torch.distributions.Independent, MaskedDistribution, ExpandedDistribution)


# --------------------------------------------------------------------------- site discovery
def binary_base(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """``fn`` without its ``Independent`` / mask / expand wrappers."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


def is_binary_site(site: dict[str, Any]) -> bool:
    """Whether a trace site is a latent Bernoulli (boolean-support) sample site."""
    if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
        return False
    base = binary_base(site["fn"])
    return isinstance(base, torch.distributions.Bernoulli) or \
        isinstance(getattr(base, "support", None), constraints._Boolean)


def _logits(name: str, fn: torch.distributions.Distribution) -> torch.Tensor:
    """The site's logits, broadcast to ``batch_shape + event_shape``."""
    base = binary_base(fn)
    try:
        logits = base.logits
    except AttributeError:
        raise ConfigError(f"binary site {name!r} ({type(base).__name__}) has no logits; these "
                          "estimators need a Bernoulli(logits=...) or Bernoulli(probs=...)"
                          ) from None
    return logits.expand(fn.batch_shape + fn.event_shape)


def _check_sites(sites: Iterable[str] | None) -> frozenset[str] | None:
    if sites is None:
        return None
    if isinstance(sites, str):
        sites = [sites]
    names = list(sites)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"sites must be a non-empty list of site names, got {sites!r}; e.g. "
                          "sites=['z'] or None for every binary site")
    return frozenset(names)


def _narrow(t: torch.Tensor, axis: int, start: int, length: int) -> torch.Tensor:
    return t.narrow(axis, start, length)


def _along(mask: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """A (G,) mask shaped to broadcast along ``axis`` of an ``ndim``-dim tensor."""
    return mask.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


# --------------------------------------------------------------------------- layout of cells
class _Layout:
    """Maps a site's tensors to cells of the local plates: log-densities to (P, L), per-unit
    tensors (logits, values, noise) to (P, L, U), and totals per copy to (P,)."""

    def __init__(self, particles: int, rank: int, local: list[Any]) -> None:
        self.P, self.R = particles, rank
        self.local_pos = sorted(rank + f.dim for f in local)
        self.local_size = [f.size for f in sorted(local, key=lambda f: f.dim)]
        self.L = math.prod(self.local_size)

    def _pad(self, t: torch.Tensor, event: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        batch = t.dim() - event
        if batch > self.R:
            raise ConfigError(f"a site has batch shape {tuple(t.shape[:batch])} with more dims "
                              f"than max_plate_nesting + 1 = {self.R}; pass the model's "
                              "max_plate_nesting")
        return t.reshape((1,) * (self.R - batch) + tuple(t.shape))

    def totals(self, lp: torch.Tensor) -> torch.Tensor:
        lp = self._pad(lp, 0)
        return lp.reshape(lp.shape[0], -1).sum(1).expand(self.P)

    def cells(self, lp: torch.Tensor) -> torch.Tensor:
        lp = self._pad(lp, 0)
        others = [i for i in range(1, self.R) if i not in self.local_pos]
        if others:
            lp = lp.sum(others, keepdim=True)
        shape = [self.P] + [1] * (self.R - 1)
        for pos, size in zip(self.local_pos, self.local_size, strict=True):
            shape[pos] = size
        return lp.expand(shape).reshape(self.P, self.L)

    def units(self, t: torch.Tensor, event: int, particles: int | None = None) -> torch.Tensor:
        t = self._pad(t, event)
        others = [i for i in range(1, self.R) if i not in self.local_pos]
        t = t.permute(0, *self.local_pos, *others, *range(self.R, self.R + event))
        shape = list(t.shape)
        shape[0] = self.P if particles is None else particles
        for k, size in enumerate(self.local_size):
            shape[1 + k] = size
        return t.expand(shape).reshape(shape[0], self.L, -1)


# --------------------------------------------------------------------------- the draws
class _Draws(Messenger):
    """Draws the guide's latent sites for an estimator's copies (outside the particle plate, so
    that ``msg["fn"]`` is already broadcast over every plate)."""

    def __init__(self, estimator: _BinaryELBO, particles: int, rank: int) -> None:
        super().__init__()
        self.est, self.P, self.R = estimator, particles, rank
        self.targets: list[str] = []   # target sites in execution order
        self.records: dict[str, dict[str, Any]] = {}
        self.binary_seen: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg) \
                or msg["infer"].get("_do_not_trace"):
            return
        fn = msg["fn"]
        axis = len(fn.batch_shape) - self.R
        if axis < 0:
            raise ConfigError(f"guide site {msg['name']!r} lies outside the estimator's particle "
                              "plate; is max_plate_nesting right?")
        if is_binary_site(msg):
            self.binary_seen.add(msg["name"])
        if self.est._is_target(msg):
            value = self.est._draw_target(self, msg, axis)
            self.targets.append(msg["name"])
        else:
            value = fn(*msg["args"], **msg["kwargs"])
            value = self.est._draw_other(self, msg, value, axis)
        msg["value"] = value
        msg["done"] = True


# --------------------------------------------------------------------------- the base class
class _BinaryELBO(ELBO):
    """Shared machinery: the copies' traces, f per copy and per cell, the surrogate."""

    #: the estimator's name in messages and in the param store
    label = "binary"
    #: whether the targets are binary sites (else every non-reparameterized site: RLOO)
    binary_only = True
    #: whether the relaxed copies need distribution validation off
    relaxed_values = False

    def __init__(self, sites: Iterable[str] | None = None,
                 max_plate_nesting: float = float("inf"), retain_graph: bool | None = None
                 ) -> None:
        super().__init__(num_particles=1, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=False, retain_graph=retain_graph)
        self.sites = _check_sites(sites)

    # ------------------------------------------------------------ per estimator
    @property
    def evaluations(self) -> int:
        """Model (and guide) evaluations per gradient, vectorized as copies."""
        return self._particles(1)

    def _particles(self, num_targets: int) -> int:
        raise NotImplementedError

    def _is_target(self, msg) -> bool:
        if self.sites is not None and msg["name"] not in self.sites:
            return False
        if self.binary_only:
            return is_binary_site(msg)
        return not msg["fn"].has_rsample

    def _draw_target(self, draws: _Draws, msg, axis: int) -> torch.Tensor:
        return msg["fn"](*msg["args"], **msg["kwargs"])

    def _draw_other(self, draws: _Draws, msg, value: torch.Tensor, axis: int) -> torch.Tensor:
        return value

    def _estimate(self, ctx: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss value, surrogate objective) from the traces' pieces in ``ctx``."""
        raise NotImplementedError

    def _before(self, model, guide, args, kwargs) -> int:
        """Hook run before the traces; returns the number of target sites it needs (1 if
        it does not)."""
        return 1

    # ------------------------------------------------------------ traces and terms
    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's per-particle hook; the copies here are always vectorized (:meth:`_traces`)."""
        raise NotImplementedError("the binary estimators vectorize their copies; use loss, "
                                  "loss_and_grads or differentiable_loss")

    def _traces(self, model, guide, args, kwargs, particles: int):
        rank = self.max_plate_nesting + 1

        def vectorize(fn):
            def vectorized(*a, **k):
                with pyro.plate(PARTICLE_PLATE, particles, dim=-rank):
                    return fn(*a, **k)
            return vectorized

        draws = _Draws(self, particles, rank)
        guide_trace = poutine.trace(draws(vectorize(guide))).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(vectorize(model), trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, rank)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        return model_trace, guide_trace, draws

    def _check_targets(self, draws: _Draws, guide_trace) -> None:
        if self.sites is not None:
            for name in sorted(self.sites - set(draws.targets)):
                if name not in guide_trace.nodes:
                    raise ConfigError(f"{type(self).__name__}: the guide has no sample site "
                                      f"{name!r}; its binary sites are: "
                                      f"{', '.join(sorted(draws.binary_seen)) or 'none'}")
                raise ConfigError(f"{type(self).__name__}: guide site {name!r} is not a latent "
                                  "Bernoulli site" + ("" if self.binary_only else
                                                      " nor another non-reparameterized site"))
        if not draws.targets:
            raise ConfigError(f"{type(self).__name__} found no latent Bernoulli site in the guide; "
                              "these estimators are for binary latents (use Trace_ELBO for "
                              "continuous ones)")

    def _local_frames(self, model_trace, guide_trace, targets: list[str]) -> list[Any]:
        stacks = [site["cond_indep_stack"] for site in model_trace.nodes.values()
                  if site["type"] == "sample" and site["is_observed"]]
        stacks += [guide_trace.nodes[name]["cond_indep_stack"] for name in targets]
        sets = [{f for f in stack if f.vectorized and f.name != PARTICLE_PLATE}
                for stack in stacks]
        return sorted(set.intersection(*sets), key=lambda f: f.dim) if sets else []

    def _context(self, model, guide, args, kwargs) -> dict[str, Any]:
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        num_targets = self._before(model, guide, args, kwargs)
        particles = self._particles(num_targets)
        model_trace, guide_trace, draws = self._traces(model, guide, args, kwargs, particles)
        self._check_targets(draws, guide_trace)
        layout = _Layout(particles, self.max_plate_nesting + 1,
                         self._local_frames(model_trace, guide_trace, draws.targets))
        f_cells = f_total = f_path = 0.0
        lq_target = lq_score = 0.0
        for site in model_trace.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site["log_prob"]
            f_cells = f_cells + layout.cells(lp)
            total = layout.totals(lp)
            f_total, f_path = f_total + total, f_path + total
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            lq = site["log_prob"]
            f_cells = f_cells - layout.cells(lq)
            total = layout.totals(lq)
            f_total = f_total - total
            if name in draws.records or name in draws.targets:
                f_path = f_path - total.detach()  # E ∇ log q = 0 at the target sites: left out
                lq_target = lq_target + layout.cells(lq)
            elif site["fn"].has_rsample:
                f_path = f_path - total           # pathwise, log q included
            else:
                f_path = f_path - total.detach()
                lq_score = lq_score + layout.cells(lq)
        return {"model_trace": model_trace, "guide_trace": guide_trace, "draws": draws,
                "layout": layout, "f_cells": f_cells, "f_total": f_total, "f_path": f_path,
                "lq_target": lq_target, "lq_score": lq_score}

    @staticmethod
    def _score_term(ctx, weights: torch.Tensor) -> torch.Tensor | float:
        """Σ_p w_p f_p ∇ log q_p for the non-target non-reparameterized sites (plain score
        function, as ``Trace_ELBO``)."""
        lq = ctx["lq_score"]
        if not isinstance(lq, torch.Tensor):
            return 0.0
        return (weights[:, None] * ctx["f_cells"].detach() * lq).sum()

    def _check_shared_logits(self, name: str, copies: list[torch.Tensor]) -> None:
        first = copies[0].detach()
        for other in copies[1:]:
            if not torch.allclose(first, other.detach(), rtol=1e-4, atol=1e-5):
                hint = (f"use {type(self).__name__}(layered=True), which pairs one binary site at "
                        "a time, or RLOO_ELBO" if isinstance(self, _AntitheticELBO)
                        else "use RLOO_ELBO, or ARM_ELBO / DisARM_ELBO with layered=True")
                raise ConfigError(f"{type(self).__name__}: the logits of binary site {name!r} "
                                  "depend on another binary draw of the guide (a hierarchical "
                                  "guide) or on a draw made after the first binary site, which "
                                  f"biases the joint estimator; {hint}")

    # ------------------------------------------------------------ the ELBO interface
    def _loss_and_surrogate(self, model, guide, args, kwargs):
        if self.relaxed_values:
            with pyro.validation_enabled(False):
                ctx = self._context(model, guide, args, kwargs)
        else:
            ctx = self._context(model, guide, args, kwargs)
        loss, objective = self._estimate(ctx)
        return loss.detach(), -objective

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A tensor whose value is the loss (−ELBO, estimated from the copies that are draws
        from q) and whose gradient is the estimator's."""
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
            return loss + surrogate - surrogate.detach()
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss −ELBO (a Monte Carlo estimate), as a float."""
        with torch.no_grad():
            loss, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        loss = loss.item()
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss, after a backward pass of the estimator's surrogate (like
        ``Trace_ELBO.loss_and_grads``)."""
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        loss = loss.item()
        warn_if_nan(loss, "loss")
        return loss


# --------------------------------------------------------------------------- ARM / DisARM
class _AntitheticELBO(_BinaryELBO):
    """An antithetic pair (b, b̃) from one u per unit; copies laid out as [copy 0 | copy 1],
    G = num_pairs × (binary sites if layered else 1) pairs each."""

    def __init__(self, num_pairs: int = 1, layered: bool = False,
                 sites: Iterable[str] | None = None, max_plate_nesting: float = float("inf"),
                 retain_graph: bool | None = None) -> None:
        super().__init__(sites, max_plate_nesting, retain_graph)
        self.num_pairs = check_count("num_pairs", num_pairs)
        self.layered = bool(layered)
        self._split: torch.Tensor | None = None

    @property
    def evaluations(self) -> int:
        """2 × num_pairs (times the number of binary sites when layered)."""
        return 2 * self.num_pairs * (getattr(self, "_num_targets", 1) if self.layered else 1)

    def _particles(self, num_targets: int) -> int:
        self._num_targets = num_targets
        groups = self.num_pairs * (num_targets if self.layered else 1)
        # pair g is antithetic at target site split[g] (−1: at every target site, joint)
        self._split = (torch.arange(groups) // self.num_pairs if self.layered
                       else torch.full((groups,), -1))
        return 2 * groups

    def _before(self, model, guide, args, kwargs) -> int:
        if not self.layered:
            return 1
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        n = sum(1 for site in trace.nodes.values() if is_binary_site(site)
                and (self.sites is None or site["name"] in self.sites))
        return max(n, 1)

    def _draw_target(self, draws: _Draws, msg, axis: int) -> torch.Tensor:
        fn = msg["fn"]
        logits = _logits(msg["name"], fn)
        G = draws.P // 2
        index = len(draws.targets)
        split = self._split.to(logits.device)
        antithetic = (split < 0) | (split == index)                     # (G,)
        u = torch.rand(_narrow(logits, axis, 0, G).shape, dtype=logits.dtype,
                       device=logits.device)
        u_tilde = torch.where(_along(antithetic, axis, u.dim()), 1 - u, u)
        noise = torch.cat([u, u_tilde], axis)
        value = (noise < torch.sigmoid(logits.detach())).to(logits.dtype)
        draws.records[msg["name"]] = {"logits": logits, "noise": noise, "value": value,
                                      "event": len(fn.event_shape), "index": index,
                                      "antithetic": antithetic}
        return value

    def _draw_other(self, draws: _Draws, msg, value: torch.Tensor, axis: int) -> torch.Tensor:
        G = draws.P // 2
        seen = len(draws.targets)
        split = self._split.to(value.device)
        shared = torch.where(split < 0, torch.tensor(seen == 0, device=value.device),
                             seen <= split)                              # before the split
        if not bool(shared.any()):
            return value
        first, second = _narrow(value, axis, 0, G), _narrow(value, axis, G, G)
        second = torch.where(_along(shared, axis, value.dim()), first, second)
        return torch.cat([first, second], axis)

    def _coefficient(self, delta: torch.Tensor, u: torch.Tensor, b: torch.Tensor,
                     b_tilde: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ĝ per unit from Δ = f(b̃) − f(b) (G, L, 1) and the pair's (G, L, U) tensors."""
        raise NotImplementedError

    def _estimate(self, ctx):
        layout, draws = ctx["layout"], ctx["draws"]
        P = layout.P
        G = P // 2
        f = ctx["f_cells"].detach()
        delta = (f[G:] - f[:G]).unsqueeze(-1)                            # f(b̃) − f(b)
        objective = ctx["f_path"].sum() / P + self._score_term(ctx, torch.full((P,), 1.0 / P))
        for name, rec in draws.records.items():
            event = rec["event"]
            logits = layout.units(rec["logits"], event)
            noise = layout.units(rec["noise"], event)
            value = layout.units(rec["value"], event)
            anti = rec["antithetic"].to(f.device)
            self._check_shared_logits(name, [logits[:G][anti], logits[G:][anti]])
            coef = self._coefficient(delta, noise[:G], value[:G], value[G:], logits[:G].detach())
            coef = coef * anti.to(coef.dtype)[:, None, None] / anti.sum()
            objective = objective + (coef.detach() * logits[:G]).sum()
        loss = -ctx["f_total"].detach().mean()
        return loss, objective


class ARM_ELBO(_AntitheticELBO):  # noqa: N801 (Pyro's naming)
    """The ELBO with the Augment-REINFORCE-Merge gradient for the binary sites (Yin & Zhou
    2019): for each unit, ĝ_i = (f(b̃) − f(b)) (u_i − ½) with b = 1[u < σ(α)],
    b̃ = 1[u > σ(−α)], one u per unit shared by all units of a point (module docstring for the
    conditions). Unbiased; 2 evaluations of model and guide per pair.

    :param num_pairs: M antithetic pairs per point, averaged (2M evaluations).
    :param layered: pair one binary site at a time (for a hierarchical guide; 2·T·M
        evaluations for T binary sites); the default pairs all units jointly.
    :param sites: restrict the estimator to these binary sites (others: plain score function).
    :param max_plate_nesting: as for every Pyro ELBO (guessed by one run when left ``inf``).
    """

    label = "arm"

    def _coefficient(self, delta, u, b, b_tilde, logits):
        return delta * (u - 0.5)


class DisARM_ELBO(_AntitheticELBO):  # noqa: N801
    """The ELBO with the DisARM gradient for the binary sites (Dong, Mnih & Tucker 2020):
    ĝ_i = ½ (f(b) − f(b̃)) (−1)^{b̃_i} 1[b_i ≠ b̃_i] σ(|α_i|) on ARM's antithetic pair, i.e.
    ARM with u integrated out given (b, b̃) — unbiased, with variance at most ARM's at the same
    cost (2 evaluations per pair). Arguments as :class:`ARM_ELBO`."""

    label = "disarm"

    def _coefficient(self, delta, u, b, b_tilde, logits):
        sign = 1.0 - 2.0 * b_tilde                                   # (−1)^{b̃}
        differ = (b != b_tilde).to(logits.dtype)
        return -0.5 * delta * sign * differ * torch.sigmoid(logits.abs())


# --------------------------------------------------------------------------- RLOO
class RLOO_ELBO(_BinaryELBO):  # noqa: N801
    """The ELBO with REINFORCE leave-one-out (Kool, van Hoof & Welling 2019): K ≥ 2 independent
    draws per point, each scored against the mean of the other K − 1,

        ĝ = (1/K) Σ_k (f_k − (1/(K−1)) Σ_{j≠k} f_j) ∇ log q(b_k)
          = (1/(K−1)) Σ_k (f_k − f̄) ∇ log q(b_k),

    unbiased because the baseline of draw k does not depend on it. Unlike ARM it needs no
    structure: every non-reparameterized guide site gets it (categorical sites too), or only
    ``sites``. The ELBO value and the pathwise / decoder gradients average the K draws.

    :param num_particles: K ≥ 2 draws per point (K evaluations).
    :param sites: restrict the leave-one-out term to these sites (other non-reparameterized
        sites: plain score function).
    :param max_plate_nesting: as for every Pyro ELBO.
    """

    label = "rloo"
    binary_only = False

    def __init__(self, num_particles: int = 2, sites: Iterable[str] | None = None,
                 max_plate_nesting: float = float("inf"), retain_graph: bool | None = None
                 ) -> None:
        super().__init__(sites, max_plate_nesting, retain_graph)
        check_count("num_particles", num_particles)
        if num_particles < 2:
            raise ConfigError(f"RLOO needs K ≥ 2 samples per point (the baseline of each draw is "
                              f"the mean of the others), got {num_particles}; use 2 or more")
        self.K = num_particles

    @property
    def evaluations(self) -> int:
        return self.K

    def _particles(self, num_targets: int) -> int:
        return self.K

    def _check_targets(self, draws, guide_trace) -> None:
        if self.sites is not None or draws.targets:
            super()._check_targets(draws, guide_trace)
        else:
            raise ConfigError("RLOO_ELBO found no non-reparameterized latent site in the guide; "
                              "use Trace_ELBO for continuous latents")

    def _estimate(self, ctx):
        K = self.K
        f = ctx["f_cells"].detach()
        baseline = (f.sum(0, keepdim=True) - f) / (K - 1)
        objective = (ctx["f_path"].sum() / K
                     + ((f - baseline) * ctx["lq_target"]).sum() / K
                     + self._score_term(ctx, torch.full((K,), 1.0 / K)))
        return -ctx["f_total"].detach().mean(), objective


# --------------------------------------------------------------------------- REBAR / RELAX
class _ControlVariateELBO(_BinaryELBO):
    """Copies [hard b = H(z) | σ_λ(z) | σ_λ(z̃)] with z = α + logit(u), z̃ ~ p(z | b)."""

    relaxed_values = True

    def __init__(self, temperature: float = 0.5, eta: float = 1.0, name: str | None = None,
                 sites: Iterable[str] | None = None, max_plate_nesting: float = float("inf"),
                 retain_graph: bool | None = None) -> None:
        super().__init__(sites, max_plate_nesting, retain_graph)
        if isinstance(temperature, bool) or not 0 < float(temperature) < math.inf:
            raise ConfigError(f"the temperature must be a positive number, got {temperature!r}; "
                              "e.g. 0.5")
        self.initial_temperature, self.initial_eta = float(temperature), float(eta)
        self.name = name or self.label

    @property
    def evaluations(self) -> int:
        return 3

    def _particles(self, num_targets: int) -> int:
        return 3

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        log_temperature = pyro.param(f"{self.name}_log_temperature",
                                     lambda: torch.tensor(math.log(self.initial_temperature)))
        eta = pyro.param(f"{self.name}_eta", lambda: torch.tensor(self.initial_eta))
        return log_temperature, eta

    @property
    def temperature(self) -> float:
        """The current λ."""
        return float(self._params()[0].detach().exp())

    @property
    def eta(self) -> float:
        """The current η."""
        return float(self._params()[1].detach())

    def _before(self, model, guide, args, kwargs) -> int:
        self._log_temperature, self._eta = self._params()
        return 1

    def _draw_target(self, draws: _Draws, msg, axis: int) -> torch.Tensor:
        fn = msg["fn"]
        logits = _logits(msg["name"], fn)
        leaf = _narrow(logits, axis, 0, 1).detach().requires_grad_(torch.is_grad_enabled())
        theta = torch.sigmoid(leaf)
        u = torch.rand(leaf.shape, dtype=leaf.dtype, device=leaf.device).clamp(EPS, 1 - EPS)
        v = torch.rand(leaf.shape, dtype=leaf.dtype, device=leaf.device).clamp(EPS, 1 - EPS)
        z = leaf + torch.logit(u)
        b = (z > 0).to(leaf.dtype).detach()
        v_cond = (b * (v * theta + 1 - theta) + (1 - b) * v * (1 - theta)).clamp(EPS, 1 - EPS)
        z_tilde = leaf + torch.logit(v_cond)
        lam = self._log_temperature.exp()
        value = torch.cat([b, torch.sigmoid(z / lam), torch.sigmoid(z_tilde / lam)], axis)
        draws.records[msg["name"]] = {"logits": logits, "leaf": leaf, "b": b, "z": z,
                                      "z_tilde": z_tilde, "event": len(fn.event_shape)}
        return value

    def _draw_other(self, draws: _Draws, msg, value: torch.Tensor, axis: int) -> torch.Tensor:
        if draws.targets:
            return value
        first = _narrow(value, axis, 0, 1)  # shared by the relaxed copies: drawn before any b
        return torch.cat([first] * draws.P, axis)

    def _residual(self, ctx, z_units: torch.Tensor) -> torch.Tensor | float:
        """r_ρ(z) per cell (RELAX's network); 0 for REBAR."""
        return 0.0

    def _control_parameters(self) -> list[torch.Tensor]:
        return [self._log_temperature, self._eta]

    def _estimate(self, ctx):
        layout, draws = ctx["layout"], ctx["draws"]
        f = ctx["f_cells"]                                       # (3, L), graph to λ, leaves
        total = ctx["f_total"]                                   # (3,)
        loss = -total[0].detach()
        objective = ctx["f_path"][0] + self._score_term(ctx, torch.tensor([1.0, 0.0, 0.0]))
        if not torch.is_grad_enabled():
            return loss, objective
        records = list(draws.records.items())
        for name, rec in records:
            logits = layout.units(rec["logits"], rec["event"])
            self._check_shared_logits(name, [logits[0], logits[1], logits[2]])
        leaves = [rec["leaf"] for _, rec in records]
        z = torch.cat([layout.units(rec["z"], rec["event"], 1)[0] for _, rec in records], -1)
        z_tilde = torch.cat([layout.units(rec["z_tilde"], rec["event"], 1)[0]
                             for _, rec in records], -1)
        eta = self._eta
        r_z, r_z_tilde = self._residual(ctx, z), self._residual(ctx, z_tilde)
        # c(z) summed over cells (globals once): its gradient at α_n is ∂c_n/∂α_n
        c_sum = eta * (total[1] - total[2]) + _sum(r_z) - _sum(r_z_tilde)
        grads = torch.autograd.grad(c_sum, leaves, create_graph=True, retain_graph=True,
                                    allow_unused=True)
        c_tilde = eta * f[2] + r_z_tilde                        # per cell, graph to ψ
        signal = f[0].detach() - c_tilde                        # (L,)
        var_loss = 0.0
        for (_name, rec), grad in zip(records, grads, strict=True):
            event = rec["event"]
            leaf = layout.units(rec["leaf"], event, 1)[0]
            score = layout.units(rec["b"], event, 1)[0] - torch.sigmoid(leaf)
            g = signal.unsqueeze(-1) * score.detach()
            if grad is not None:
                g = g + layout.units(grad, event, 1)[0]
            logits = layout.units(rec["logits"], event)[0]
            objective = objective + (g.detach() * logits).sum()
            var_loss = var_loss + (g ** 2).sum()
        params = self._control_parameters()
        param_grads = torch.autograd.grad(var_loss, params, retain_graph=True, allow_unused=True)
        self.last_variance_objective = float(var_loss.detach())
        for p, g in zip(params, param_grads, strict=True):
            if g is not None:
                objective = objective - (p * g.detach()).sum()   # −∇_ψ Σ ĝ² (loss: +)
        return loss, objective


def _sum(t: torch.Tensor | float) -> torch.Tensor | float:
    return t.sum() if isinstance(t, torch.Tensor) else t


class REBAR_ELBO(_ControlVariateELBO):  # noqa: N801
    """The ELBO with the REBAR gradient for the binary sites (Tucker, Mnih, Maddison, Lawson &
    Sohl-Dickstein 2017):

        ĝ = [f(b) − η f(σ_λ(z̃))] ∇ log q(b) + η ∇ f(σ_λ(z)) − η ∇ f(σ_λ(z̃)),

    b = H(z), z = α + logit(u), z̃ ~ p(z | b) (module docstring). Unbiased for any η, λ; η and
    the temperature λ are trained by the variance objective (``pyro.param`` ``<name>_eta`` and
    ``<name>_log_temperature``, stepped by the SVI optimizer with ∇ Σ ĝ²). 3 evaluations of model
    and guide (hard, relaxed, conditionally relaxed), and a double backward pass.

    :param temperature: λ's initial value (0.5, as Tucker et al.).
    :param eta: η's initial value.
    :param name: the prefix of the control variate's parameters (default ``"rebar"``).
    :param sites: restrict the estimator to these binary sites.
    :param max_plate_nesting: as for every Pyro ELBO.
    """

    label = "rebar"


class RELAX_ELBO(_ControlVariateELBO):  # noqa: N801
    """The ELBO with the RELAX gradient for the binary sites (Grathwohl, Choi, Wu, Roeder &
    Duvenaud 2018): REBAR with a learned control variate c_ψ(z) = η f(σ_λ(z)) + r_ρ(z),

        ĝ = [f(b) − c_ψ(z̃)] ∇ log q(b) + ∇ c_ψ(z) − ∇ c_ψ(z̃),

    r_ρ a network on the point's logistic samples z (all binary units of the point,
    concatenated): by default one hidden layer of ``hidden`` tanh units, built at the first call;
    registered as ``pyro.module("<name>_control")``. ψ = (η, λ, ρ) is trained by the variance
    objective (module docstring). Unbiased for any ψ; 3 evaluations and a double backward pass.

    :param control_net: a module mapping (L, U) to (L,) or (L, 1) to use as r_ρ.
    :param hidden: the default network's hidden width.
    :param temperature, eta, name, sites, max_plate_nesting: as :class:`REBAR_ELBO`
        (default name ``"relax"``).
    """

    label = "relax"

    def __init__(self, control_net: torch.nn.Module | None = None, hidden: int = 50,
                 temperature: float = 0.5, eta: float = 1.0, name: str | None = None,
                 sites: Iterable[str] | None = None, max_plate_nesting: float = float("inf"),
                 retain_graph: bool | None = None) -> None:
        super().__init__(temperature, eta, name, sites, max_plate_nesting, retain_graph)
        self.hidden = check_count("hidden", hidden)
        self.control_net = control_net

    def _net(self, units: int, like: torch.Tensor) -> torch.nn.Module:
        if self.control_net is None:
            net = torch.nn.Sequential(torch.nn.Linear(units, self.hidden), torch.nn.Tanh(),
                                      torch.nn.Linear(self.hidden, 1))
            torch.nn.init.zeros_(net[-1].weight)       # r starts at 0: RELAX starts as REBAR
            torch.nn.init.zeros_(net[-1].bias)
            self.control_net = net.to(dtype=like.dtype, device=like.device)
        return pyro.module(f"{self.name}_control", self.control_net)

    def _residual(self, ctx, z_units):
        out = self._net(z_units.shape[-1], z_units)(z_units)
        return out.squeeze(-1) if out.dim() == z_units.dim() else out

    def _control_parameters(self):
        return [*super()._control_parameters(), *self.control_net.parameters()]


# --------------------------------------------------------------------------- relaxed, REINFORCE
class _RelaxSites(Messenger):
    """Replace the binary latent sites (all, or ``sites``) by their Concrete relaxation."""

    def __init__(self, temperature: float, straight_through: bool, sites) -> None:
        super().__init__()
        self.temperature, self.straight_through, self.sites = temperature, straight_through, sites
        self.relaxed: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if not is_binary_site(msg) or (self.sites is not None and msg["name"] not in self.sites):
            return
        fn = msg["fn"]
        tau = torch.tensor(self.temperature, dtype=_logits(msg["name"], fn).dtype)
        msg["fn"] = relax(fn, tau, self.straight_through)
        self.relaxed.add(msg["name"])


class GumbelSoftmax_ELBO(ELBO):  # noqa: N801
    """The Concrete / Gumbel-softmax relaxation of every binary site of model and guide at
    temperature τ (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017) — **biased** for the
    gradient of the discrete ELBO, and its loss is the relaxed objective, not −ELBO (evaluate
    the ELBO with another estimator's ``loss``). The bias shrinks as τ → 0 while the variance
    grows. With ``analytic_kl`` (default) the objective is E_q̃[log p(x | z̃)] − KL(q(b|x) ‖ p(b))
    with the discrete KL in closed form (``TraceMeanField_ELBO``, Jang et al.); without, relaxed
    densities for prior and posterior (``Trace_ELBO``, Maddison et al.). ``straight_through``
    feeds hard codes forward in the guide and differentiates through the relaxed ones.

    :param temperature: τ > 0.
    :param straight_through: hard forward, relaxed backward (guide only).
    :param analytic_kl: the discrete KL in closed form (needs a mean-field guide).
    :param num_particles: samples per point (vectorized).
    :param sites: restrict the relaxation to these binary sites.
    :param max_plate_nesting: as for every Pyro ELBO.
    """

    evaluations = 1

    def __init__(self, temperature: float = 0.5, straight_through: bool = False,
                 analytic_kl: bool = True, num_particles: int = 1,
                 sites: Iterable[str] | None = None,
                 max_plate_nesting: float = float("inf")) -> None:
        check_count("num_particles", num_particles)
        if isinstance(temperature, bool) or not 0 < float(temperature) < math.inf:
            raise ConfigError(f"the temperature must be a positive number, got {temperature!r}; "
                              "e.g. 0.5")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.temperature, self.straight_through = float(temperature), bool(straight_through)
        self.sites = _check_sites(sites)
        cls = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
        self.inner = cls(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=num_particles > 1)
        self.evaluations = num_particles

    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's per-particle hook; the inner ELBO draws the particles."""
        raise NotImplementedError("GumbelSoftmax_ELBO delegates to its inner ELBO")

    def _wrap(self, model, guide):
        prior = _RelaxSites(self.temperature, False, self.sites)
        posterior = _RelaxSites(self.temperature, self.straight_through, self.sites)
        return prior, posterior, prior(model), posterior(guide)

    def _check(self, guide, args, kwargs) -> None:
        """One run of the guide (first call only): the sites to relax exist."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        binary = sorted(name for name, site in trace.nodes.items() if is_binary_site(site))
        for name in sorted(self.sites or ()):
            if name not in binary:
                raise ConfigError(f"GumbelSoftmax_ELBO: the guide has no latent Bernoulli site "
                                  f"{name!r}; its binary sites are: {', '.join(binary) or 'none'}")
        if not binary:
            raise ConfigError("GumbelSoftmax_ELBO found no latent Bernoulli site in the guide")
        self._checked = True

    def _run(self, method: str, model, guide, args, kwargs):
        if not getattr(self, "_checked", False):
            self._check(guide, args, kwargs)
        _, _, m, g = self._wrap(model, guide)
        return getattr(self.inner, method)(m, g, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The relaxed objective's loss (not −ELBO)."""
        return self._run("loss", model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self._run("loss_and_grads", model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._run("differentiable_loss", model, guide, args, kwargs)


class REINFORCE_ELBO(TraceGraph_ELBO):  # noqa: N801
    """REINFORCE with a baseline: Pyro's ``TraceGraph_ELBO`` (score function with
    Rao-Blackwellized downstream costs) with its decaying-average baseline
    b ← β b + (1 − β) f switched on for every non-reparameterized guide site (or ``sites``), set
    through ``poutine.infer_config`` so that the guide stays unchanged. Pyro keeps one baseline
    per slot of the site's batch (per particle and batch position, not per data point), so with
    shuffled mini-batches it is a running mean over the data. Unbiased.

    :param num_particles: samples per point, vectorized (num_particles evaluations).
    :param baseline_beta: β of the decaying average.
    :param sites: the sites that get the baseline (others: none).
    :param max_plate_nesting: as for every Pyro ELBO.
    """

    def __init__(self, num_particles: int = 1, baseline_beta: float = 0.9,
                 sites: Iterable[str] | None = None,
                 max_plate_nesting: float = float("inf")) -> None:
        check_count("num_particles", num_particles)
        if isinstance(baseline_beta, bool) or not 0 <= baseline_beta < 1:
            raise ConfigError(f"baseline_beta must lie in [0, 1), got {baseline_beta!r}; "
                              "e.g. 0.9")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=num_particles > 1)
        self.baseline_beta, self.sites = float(baseline_beta), _check_sites(sites)
        self.evaluations = num_particles

    def _config(self, msg) -> dict[str, Any]:
        if msg["type"] != "sample" or msg["is_observed"] or msg["fn"].has_rsample \
                or (self.sites is not None and msg["name"] not in self.sites):
            return {}
        self._seen.add(msg["name"])
        return {"baseline": {"use_decaying_avg_baseline": True,
                             "baseline_beta": self.baseline_beta}}

    def _guide(self, guide: Callable) -> Callable:
        self._seen: set[str] = set()
        return poutine.infer_config(guide, self._config)

    def _check(self) -> None:
        if self.sites is not None and self.sites - self._seen:
            name = sorted(self.sites - self._seen)[0]
            raise ConfigError(f"REINFORCE_ELBO: the guide has no non-reparameterized latent "
                              f"site {name!r}")

    def loss(self, model, guide, *args, **kwargs) -> float:
        out = super().loss(model, self._guide(guide), *args, **kwargs)
        self._check()
        return out

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        out = super().loss_and_grads(model, self._guide(guide), *args, **kwargs)
        self._check()
        return out

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate = self._loss_and_surrogate_loss(model, self._guide(guide), args, kwargs)
        self._check()
        loss = -torch.as_tensor(elbo).detach()
        return loss + surrogate - surrogate.detach()


#: name → constructor of each estimator, with its cost in evaluations per gradient
BINARY_ESTIMATORS: dict[str, Callable[..., ELBO]] = {
    "arm": ARM_ELBO,
    "disarm": DisARM_ELBO,
    "rloo": RLOO_ELBO,
    "rebar": REBAR_ELBO,
    "relax": RELAX_ELBO,
    "gumbel-softmax": GumbelSoftmax_ELBO,
    "reinforce": REINFORCE_ELBO,
}

