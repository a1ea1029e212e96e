"""Importance-weighted objectives (IWAE, MIWAE, CIWAE, PIWAE) as Pyro ``ELBO`` subclasses, with
the plain pathwise, sticking-the-landing and doubly reparameterized gradients.

**The bound, per data point.** With P = M·K reparameterized draws z_p ~ q(z | x_n) (vectorized
over a particle plate outside the model's plates) and the log importance weights

    log w_p = Σ_model sites s_i log p(· | ·) − Σ_guide sites s_i log q(z | x_n)

where every site's log-density is the *unscaled* ``fn.log_prob`` times its local scale s_i (a KL
weight β from :func:`~pyro_vae.models.kl_scale`; the ``"data"`` plate's subsampling factor N/B is
divided out), the objectives are, per point:

==========  ==================================================================================
``elbo``    (1/P) Σ_p log w_p                                  (the ELBO, P draws averaged)
``iwae``    log (1/K) Σ_k w_k                                  (Burda et al. 2016), M = 1
``miwae``   (1/M) Σ_m log (1/K) Σ_k w_mk                       (Rainforth et al. 2018)
``ciwae``   β_c · ELBO_K + (1 − β_c) · IWAE_K                  (Rainforth et al. 2018), M = 1
``piwae``   the decoder θ ascends IWAE_{MK}, the encoder φ ascends MIWAE_{M,K}
            (Rainforth et al. 2018): two gradient targets in one step; the loss
            reported is −IWAE_{MK}
==========  ==================================================================================

and the loss is −(N/B) Σ_{n in batch} objective_n: the log-mean-exp is taken over unscaled local
densities and the N/B scale applied *outside* it. Pyro's ``RenyiELBO(alpha=0)`` takes the
log-sum-exp of the already scaled densities, which is the IWAE bound only when N/B = 1 and β = 1
(Pyro issue #3104); ``tests/infer/test_importance.py`` shows both.

**Gradients.** Every objective's gradient is Σ_p c_p ∇ log w_p with self-normalized weights c_p
(1/P for the ELBO, w̃_k = w_k / Σ_j w_j for IWAE, w̃_mk / M for MIWAE, β_c / K + (1 − β_c) w̃_k for
CIWAE). The decoder θ always gets Σ_p c^θ_p ∇_θ log p(x, z_p). The encoder φ gets, through the
reparameterized z_p = g_φ(ε_p, x):

* ``reparam``: Σ_p c_p [∇_z log w_p · ∂z_p/∂φ − ∂_φ log q_φ(z_p | x)] — the plain pathwise
  gradient of the objective;
* ``stl`` (sticking the landing, Roeder et al. 2017): the same without the score term
  ∂_φ log q_φ(z_p) at fixed z, whose expectation is zero for the ELBO; for IWAE it is the
  "IWAE-STL" estimator, biased in general (Tucker et al. 2019, §4);
* ``dreg`` (doubly reparameterized, Tucker et al. 2019): Σ_p a_p ∇_z log w_p · ∂z_p/∂φ with
  a = w̃² for IWAE, w̃²/M per group for MIWAE and PIWAE's encoder, β_c / K + (1 − β_c) w̃² for
  CIWAE and 1/P for the ELBO (where DReG is STL): unbiased for the objective's gradient, with
  an encoder signal-to-noise ratio that does not vanish as K grows.

One backward pass gives both: the surrogate is Σ_p c^θ_p (log p(x, z_p) − log q̄(z_p)), with
log q̄ the guide's log-density at z_p with its parameters held fixed, and a gradient hook on each
z_p rescales what reaches the encoder by a_p / c^θ_p; ``reparam`` adds −Σ_p c^φ_p log q_φ(z̄_p)
at the detached draws z̄_p for the score term. The value of :meth:`differentiable_loss` is the
loss itself; its gradient is the estimator's.

**Conditions.** Every latent site of the guide must be reparameterizable and lie inside the
``"data"`` plate (one set of importance weights per data point); the model's sites too. ``stl``
and ``dreg`` treat each latent site's distribution parameters as functions of x and φ only (a
mean-field guide per point, as every guide of this library is), and like ``piwae`` they evaluate
log q at a detached draw, which a flow without an inverse (planar) cannot: those combinations
are refused; ``reparam`` with ``elbo``, ``iwae``, ``miwae`` or ``ciwae`` works with any
reparameterized guide.

References: Burda, Grosse & Salakhutdinov (2016); Rainforth et al. (2018) "Tighter variational
bounds are not necessarily better"; Roeder, Wu & Duvenaud (2017); Tucker, Lawson, Gu & Maddison
(2019) "Doubly reparameterized gradient estimators for Monte Carlo objectives".
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, warn_if_nan

from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.problem import DataPlate, ModelError, data_plate

OBJECTIVES = ("elbo", "iwae", "miwae", "ciwae", "piwae")
IW_ESTIMATORS = ("reparam", "stl", "dreg")
PARTICLE_PLATE = "_iw_particles"


#: Coefficients smaller than this are set to 0 (see :meth:`ImportanceWeightedELBO._coefficients`).
NEGLIGIBLE_WEIGHT = 1e-20


def _flush(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t < NEGLIGIBLE_WEIGHT, torch.zeros_like(t), t)


class ImportanceWeightedELBO(ELBO):
    """The importance-weighted objective ``objective`` with the encoder gradient ``estimator``
    (module docstring), usable as ``pyro.infer.SVI(model, guide, optim, loss=...)`` and by the
    library's trainer.

    :param objective: ``"elbo"``, ``"iwae"``, ``"miwae"``, ``"ciwae"`` or ``"piwae"``.
    :param num_particles: K, importance samples per group.
    :param num_groups: M, groups of K (``miwae``, ``piwae``); 1 otherwise.
    :param estimator: ``"reparam"``, ``"stl"`` or ``"dreg"``.
    :param ciwae_beta: β_c in [0, 1], the weight of the ELBO in ``ciwae``.
    :param max_plate_nesting: as for every Pyro ELBO (1 for the library's models); the particle
        plate goes at dim ``-(max_plate_nesting + 1)``.
    """

    #: whether guide sites without ``rsample`` are accepted (by a subclass that adds a
    #: score-function term for them, :class:`~pyro_vae.infer.discrete.VIMCO_ELBO`)
    score_sites_allowed = False

    def __init__(self, objective: str = "iwae", num_particles: int = 5, num_groups: int = 1,
                 estimator: str = "reparam", ciwae_beta: float = 0.5,
                 max_plate_nesting: int = 1) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; choose one of: "
                              f"{', '.join(OBJECTIVES)}")
        if estimator not in IW_ESTIMATORS:
            raise ConfigError(f"unknown estimator {estimator!r} for an importance-weighted "
                              f"objective; choose one of: {', '.join(IW_ESTIMATORS)}")
        check_count("num_particles", num_particles)
        check_count("num_groups", num_groups)
        if num_groups > 1 and objective not in ("miwae", "piwae", "elbo"):
            raise ConfigError(f"--num-groups applies to miwae, piwae (and elbo), not {objective}; "
                              "drop it or choose --objective miwae")
        if isinstance(ciwae_beta, bool) or not 0.0 <= ciwae_beta <= 1.0:
            raise ConfigError(f"--ciwae-beta must lie in [0, 1], got {ciwae_beta!r}; e.g. 0.5")
        super().__init__(num_particles=num_particles * num_groups,
                         max_plate_nesting=max_plate_nesting, vectorize_particles=True)
        self.objective, self.estimator = objective, estimator
        self.K, self.M, self.ciwae_beta = num_particles, num_groups, float(ciwae_beta)
        self.model_plates = max_plate_nesting  # Pyro's base class adds one for the particles

    @property
    def _splits_log_q(self) -> bool:
        """Whether log q must be split into its path through the draw and its path through the
        parameters: for STL and DReG, and for PIWAE's two targets. The plain pathwise gradient
        of the other objectives needs the total log q only, which every reparameterized
        distribution (flows included) provides."""
        return self.estimator != "reparam" or self.objective == "piwae"

    # ------------------------------------------------------------------ traces
    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's per-particle trace hook, an abstract method of ``pyro.infer.ELBO`` (without
        it the class cannot be instantiated). Nothing here calls it: :meth:`loss` and the
        surrogate trace through :meth:`_traces`, with the particles always vectorized."""
        return self._traces(model, guide, args, kwargs)

    def _vectorized(self, fn):
        """``fn`` inside the particle plate (inside ``replay``, as Pyro's own vectorized ELBOs
        do, so that the model's distributions are broadcast over the particles too)."""
        particles, dim = self.K * self.M, -(self.model_plates + 1)

        def vectorized(*args, **kwargs):
            with pyro.plate(PARTICLE_PLATE, particles, dim=dim):
                return fn(*args, **kwargs)

        return vectorized

    def _traces(self, model, guide, args, kwargs) -> tuple[poutine.Trace, poutine.Trace]:
        guide_trace = poutine.trace(self._vectorized(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(self._vectorized(model), trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        return model_trace, guide_trace

    def _local(self, site: dict[str, Any], log_prob: torch.Tensor, plate: DataPlate
               ) -> tuple[torch.Tensor, float]:
        """``log_prob`` times the site's local scale, as a (P, B) tensor, and the data plate's
        subsampling factor N/B."""
        data = [f for f in site["cond_indep_stack"] if f.name == plate.name]
        if not data:
            raise ModelError(
                f"site {site['name']!r} is outside the data plate {plate.name!r}; importance "
                "weights are per data point, so every sample site must be inside it"
            )
        frame = data[0]
        if site["mask"] is not None:
            log_prob = scale_and_mask(log_prob, mask=site["mask"])
        subsample = (frame.full_size or frame.size) / frame.size
        local = site["scale"] / subsample
        particles, rank = self.K * self.M, self.model_plates + 1
        lp = log_prob.reshape((1,) * (rank - log_prob.dim()) + tuple(log_prob.shape))
        lp = lp.expand(particles, *lp.shape[1:])
        # the data plate's dim last, the particle dim first, any other plate dims summed
        lp = lp.movedim(rank + frame.dim, -1)
        lp = lp.reshape(particles, -1, lp.shape[-1]).sum(1)
        return local * lp, subsample

    def _log_weights(self, model_trace, guide_trace) -> dict[str, Any]:
        """Per-particle, per-point pieces of log w: the model's log p (attached), the guide's
        log q with fixed parameters (z-path only), the guide's log q at detached draws
        (parameter path only), and the latent values. Where :attr:`score_sites_allowed`, a
        non-reparameterized guide site's log q (parameter path: its draw has no gradient)
        enters ``log_q_fixed`` whole and is also summed in ``log_q_score``."""
        log_p = log_q_fixed = log_q_params = log_q_score = 0.0
        scale = None
        latents = []
        plate = data_plate(model_trace, exclude=(PARTICLE_PLATE,))
        for site in model_trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            lp, scale = self._local(site, site["fn"].log_prob(site["value"]), plate)
            log_p = log_p + lp
        for site in guide_trace.nodes.values():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            fn, z = site["fn"], site["value"]
            if not fn.has_rsample and self.score_sites_allowed:
                lq, _ = self._local(site, fn.log_prob(z), plate)
                log_q_fixed = log_q_fixed + lq
                log_q_score = log_q_score + lq
                continue
            if not fn.has_rsample:
                raise ConfigError(
                    f"guide site {site['name']!r} is not reparameterizable; the "
                    "importance-weighted objectives need reparameterized draws (for discrete "
                    "latents use a score-function estimator)"
                )
            full = fn.log_prob(z)
            if not self._splits_log_q:
                lq_full, _ = self._local(site, full, plate)  # the plain pathwise gradient: one term
                log_q_fixed = log_q_fixed + lq_full
            else:
                try:
                    at_fixed_z = fn.log_prob(z.detach())
                except (KeyError, NotImplementedError):
                    raise ConfigError(
                        f"--estimator {self.estimator}"
                        + (" and --objective piwae" if self.objective == "piwae" else "")
                        + f" need log q at a detached draw, which guide site "
                        f"{site['name']!r} ({type(fn).__name__}) cannot (a flow without an "
                        "inverse); use --estimator reparam with iwae, miwae or ciwae"
                    ) from None
                fixed_params = full - at_fixed_z + full.detach()  # value log q, z-path grad
                lq_fixed, _ = self._local(site, fixed_params, plate)
                lq_params, _ = self._local(site, at_fixed_z, plate)
                log_q_fixed = log_q_fixed + lq_fixed
                log_q_params = log_q_params + lq_params
            data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == plate.name)
            latents.append((z, fn.event_dim, data_dim))
        if scale is None:
            raise ConfigError("the model has no sample site; nothing to weight")
        return {"log_p": log_p, "log_q_fixed": log_q_fixed, "log_q_params": log_q_params,
                "log_q_score": log_q_score, "latents": latents, "scale": scale}

    # ------------------------------------------------------------------ the objective
    def _coefficients(self, log_w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Objective value per point and the (detached) coefficients c^θ, c^φ and log(a/c^θ)
        of the module docstring, each (P, B)."""
        P, B = log_w.shape
        K, M = self.K, self.M
        lw = log_w.detach().reshape(M, K, B)
        log_group = lw.log_softmax(1)                      # log w̃ within each group
        lse_group = torch.logsumexp(lw, 1) - math.log(K)   # (M, B)
        mean_lw = lw.mean((0, 1))
        flat = lambda t: t.reshape(P, B)  # noqa: E731
        if self.objective == "elbo":
            value = mean_lw
            c_theta = c_phi = torch.full_like(log_w, 1.0 / P)
            log_a = c_phi.log()
        elif self.objective in ("iwae", "miwae"):
            value = lse_group.mean(0)
            c_theta = c_phi = flat(log_group.exp() / M)
            log_a = flat(2 * log_group - math.log(M))
        elif self.objective == "ciwae":
            b = self.ciwae_beta
            value = b * mean_lw + (1 - b) * lse_group[0]
            w = flat(log_group.exp())
            c_theta = c_phi = b / K + (1 - b) * w
            log_a = (b / K + (1 - b) * w * w).log()
        else:  # piwae: θ on IWAE over all M·K draws, φ on MIWAE(M, K)
            value = torch.logsumexp(lw.reshape(P, B), 0) - math.log(P)
            c_theta = lw.reshape(P, B).softmax(0)
            c_phi = flat(log_group.exp() / M)
            log_a = flat(2 * log_group - math.log(M))
        if self.estimator != "dreg":
            log_a = c_phi.log()
        log_ratio = log_a - c_theta.log()
        ratio = torch.nan_to_num(log_ratio.exp(), nan=0.0, posinf=0.0)
        # Self-normalized weights of far-off draws underflow into float32's subnormal range,
        # where CPU arithmetic is about 100x slower, and the backward pass multiplies every
        # draw's gradient by them: weights below NEGLIGIBLE_WEIGHT (which sum to less than
        # P·1e-20 against a total of 1) are set to exactly 0.
        return {"value": value, "c_theta": _flush(c_theta), "c_phi": _flush(c_phi),
                "ratio": _flush(ratio)}

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        parts = self._log_weights(model_trace, guide_trace)
        log_w = parts["log_p"] - parts["log_q_fixed"]
        coef = self._coefficients(log_w)
        scale = parts["scale"]
        loss = -scale * coef["value"].sum()
        if not torch.is_grad_enabled() or not log_w.requires_grad:
            return loss, loss
        surrogate = (coef["c_theta"] * log_w).sum()
        if self.estimator == "reparam" and self._splits_log_q:
            surrogate = surrogate - (coef["c_phi"] * parts["log_q_params"]).sum()
        ratio = coef["ratio"]
        # a/c^θ is exactly 1 unless DReG reweights or PIWAE splits c^θ from c^φ: decided from
        # the options, not the values, so that the step can be traced into a graph
        if self.estimator == "dreg" or self.objective == "piwae":
            rank = self.model_plates + 1
            for z, event_dim, data_dim in parts["latents"]:
                if z.requires_grad:  # the ratio as a (P, ..., B, ..., *event) view
                    shape = [1] * rank
                    shape[0], shape[rank + data_dim] = ratio.shape
                    r = ratio.reshape(*shape, *(1,) * event_dim)
                    z.register_hook(lambda g, r=r: g * r)
        surrogate_loss = -scale * surrogate
        return loss, loss.detach() + surrogate_loss - surrogate_loss.detach()

    # ------------------------------------------------------------------ Pyro's ELBO API
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss −(N/B) Σ_n objective_n, as a float."""
        with torch.no_grad():
            loss, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        value = float(loss)
        warn_if_nan(value, "loss")
        return value

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a tensor whose gradient is the chosen estimator's (for the trainer, or a
        hand-written optimization loop)."""
        _, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        return surrogate

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """What ``pyro.infer.SVI.step`` calls: backpropagates the estimator, returns the loss."""
        surrogate = self.differentiable_loss(model, guide, *args, **kwargs)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        value = float(surrogate.detach())
        warn_if_nan(value, "loss")
        return value
