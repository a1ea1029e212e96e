"""Annealed importance sampling (AIS) estimates of log p(x), and bidirectional Monte Carlo (BDMC)
bounds that sandwich the true value on data simulated from the model — for any model and guide
with a data plate and continuous local latents (:mod:`pyro_vae.infer.problem`).

**The space.** AIS anneals over the joint of *all* local latent sites of a data point at once,
in unconstrained space: u ∈ ℝ^D is the flat vector of every latent of the point, mapped by
``biject_to(site.support).inv`` (:meth:`~pyro_vae.infer.problem.Problem.constrain`), and the
target density is

    p(x, u) = p(x, T(u)) abs(det ∂T/∂u)          (:meth:`Problem.log_joint`),

whose normalizer is p(x) for every site name, number of sites and support. The start p_0(u) is
the model's prior pushed to u — draws by ancestral sampling of the model, density the latent
part of log p(x, u) (its sites' log-densities plus log abs(det J)) — or the guide q(z | x) pushed
to u, where its density at any u can be evaluated (not for a guide with auxiliary sites, such as
``AutoNormal``: then use the prior).

**AIS** (Neal 2001), per data point: from u_0 ~ p_0, through the intermediate targets
π_β(u) ∝ p_0(u)^{1−β} p(x, u)^{β} with 0 = β_0 < … < β_T = 1,

    log w = Σ_t (β_t − β_{t−1}) [log p(x, u_{t−1}) − log p_0(u_{t−1})],
    u_t ~ HMC step leaving π_{β_t} invariant,

and E[w] = p(x): log p̂(x) = log (1/C) Σ_c w_c over C chains is a stochastic *lower* bound
(Jensen), tight as T grows. The transitions are Hamiltonian Monte Carlo written in torch
(``leapfrog_steps`` leapfrog steps, a Metropolis correction), batched over chains and points,
with one step size per point adapted towards an acceptance rate of 0.65 from the acceptances
of a few *pilot* chains that move alongside but carry no weight (each transition leaves its
target invariant, and the kernels never depend on the weighted chains' own paths, which would
bias their weights). The schedule is the sigmoid of Grosse et al. (2015) (δ = 4), or linear.
Each leapfrog step runs the model once (and the guide once, with the guide as the start): both
log p_0 and log p(x, ·) and their gradients are kept per chain, so a change of β costs nothing.

**Standard error** (:class:`AISResult`). The weights of a short schedule are heavy-tailed, and
the spread of the few weights drawn then understates their variance: the delta method over the
chains, sd(w) / (√C mean(w)), read 0.75 where repeated runs spread by 1.70 (T = 10, 16
chains). The reported error is the jackknife over the chains, and NaN where the weights are
too uneven for any error computed from one run to be trustworthy
(:func:`log_mean_exp_stderr`).

**BDMC** (Grosse et al. 2015; Wu et al. 2017): for x simulated from the model together with its
latents z*, z* is an exact posterior sample, so AIS run in *reverse* (β from 1 to 0, starting at
z*) gives w_rev with E[w_rev] = 1 / p(x): −log (1/C) Σ_c w_rev,c is a stochastic *upper* bound.
The true log p(x) lies between the forward and the reverse estimates; the sandwich width bounds
the error of both.

References: Neal (2001) "Annealed importance sampling"; Grosse, Ghahramani & Adams (2015)
"Sandwiching the marginal likelihood using bidirectional Monte Carlo"; Wu, Burda, Salakhutdinov
& Grosse (2017) "On the quantitative analysis of decoder-based generative models".
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from pyro_vae.errors import ConfigError, DataError, check_count, check_real
from pyro_vae.infer.problem import ModelError, Problem, describe, program_of, site_log_prob
from pyro_vae.jobs import job, report
from pyro_vae.models.vae import VAE, evaluating, frozen
from pyro_vae.nn.module import module_of
from pyro_vae.resources import check_draws, check_memory, points_per_chunk

#: the unit AIS reports its work in: one leapfrog step of every chain of one point
LEAPFROG = "leapfrog step"

TARGET_ACCEPTANCE = 0.65
#: the standard error needs at least this many chains (the jackknife's degrees of freedom)
MIN_CHAINS_FOR_STDERR = 8
#: ... and, at a point, an effective sample size of at least max(this, C / 8) ...
MIN_ESS_FOR_STDERR = 3.0
#: ... at all but this fraction of the points of the call (else it is NaN at every point)
MAX_UNEVEN_FRACTION = 0.1


def schedule(num_steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1: ``sigmoid`` (Grosse et al. 2015) or ``linear``."""
    # the schedule, its temporaries and the step size kept per temperature
    check_memory(f"--ais-steps {num_steps}", 4 * 8 * (num_steps + 1), "lower --ais-steps")
    if kind == "linear":
        return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind != "sigmoid":
        raise ConfigError(f"unknown AIS schedule {kind!r}; use sigmoid or linear")
    s = torch.sigmoid(torch.linspace(-delta, delta, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def jackknife_stderr(log_w: torch.Tensor) -> torch.Tensor:
    """The jackknife standard error over the chains of log (1/C) Σ_c w_c, per point, from the
    log-weights ``log_w`` (C, B): √((C−1)/C Σ_c (ℓ_(−c) − ℓ̄)²) with ℓ_(−c) the log mean of
    the weights without chain c. Where one chain's weight dominates, leaving it out moves the
    estimate by as much as it is uncertain — which the delta method, sd(w) / (√C mean(w)),
    does not see."""
    log_w = log_w.detach().double()
    chains = log_w.shape[0]
    if chains < 2:
        return torch.full(log_w.shape[1:], math.nan, dtype=torch.float32, device=log_w.device)
    total = torch.logsumexp(log_w, 0)
    rest = -torch.expm1(log_w - total)  # (Σ w − w_c) / Σ w, in (0, 1)
    loo = torch.log(rest.clamp_min(1e-300)) + total - math.log(chains - 1)
    spread = ((loo - loo.mean(0)) ** 2).sum(0)
    return torch.sqrt((chains - 1) / chains * spread).float()


def log_mean_exp_stderr(log_w: torch.Tensor) -> torch.Tensor:
    """The standard error of log (1/C) Σ_c w_c per point, from the final log-weights
    ``log_w`` (C, N) of one call over N points — or NaN where one run cannot tell it.

    The error is the jackknife over the chains (:func:`jackknife_stderr`). It is reported only
    where the weights are even enough for the spread of the drawn weights to stand for the
    weights not drawn: C ≥ :data:`MIN_CHAINS_FOR_STDERR`, the point's effective sample size
    (Σw)² / Σw² ≥ max(:data:`MIN_ESS_FOR_STDERR`, C / 8), and the same at all but
    :data:`MAX_UNEVEN_FRACTION` of the N points (else NaN at every point). The last condition
    makes it a property of the schedule, not of one lucky run: where a short schedule makes
    the weights uneven at some points, the runs that happen to look even at a point are those
    that missed the upper tail of its weights, and their errors are too small (by up to 2× in
    repeated runs of linear-Gaussian models with a per-point rule). With few points per call
    the condition is a weaker guard.

    Measured against the spread of 40 repeated runs (linear-Gaussian models with 2 to 10
    latents, the zoo's two-site hierarchy and ``code`` site, prior and guide proposals, C = 4,
    16, 64, T = 1, 10, 100; 522 point-settings): where it was reported (in at least 3 of the
    40 runs: 80 point-settings, all at T = 100 and C ≥ 16), its root mean square was within
    0.68–1.47× of the spread; the jackknife at every point was outside 1/1.5–1.5× at 102 of
    the 522, the delta method at 305 (mostly too small, down to 0.2×). A finer sweep of T
    (20 to 150, 60 repeats) found the one weakness left: in the transition from refusing to
    reporting (T = 60–80 there, where 10–30 % of the calls report it), the error at the
    points with the most uneven weights was 0.45–0.65× the spread in the calls that reported
    it (5 of 80 point-settings) — a finite error next to NaN at other schedules or seeds is
    worth a longer schedule."""
    log_w = log_w.detach().double()
    chains = log_w.shape[0]
    se = jackknife_stderr(log_w)
    nan = torch.full_like(se, math.nan)
    if chains < MIN_CHAINS_FOR_STDERR or log_w.shape[1] == 0:
        return nan
    ess = 1.0 / (torch.softmax(log_w, 0) ** 2).sum(0)
    even = ess >= max(MIN_ESS_FOR_STDERR, chains / 8)
    if float((~even).float().mean()) > MAX_UNEVEN_FRACTION:
        return nan
    return torch.where(even, se, nan)


@dataclass
class AISResult:
    """Per point: the log p(x) estimate, its standard error, and the effective sample size of
    the final weights; the mean acceptance rate of the HMC transitions.

    ``stderr`` is the jackknife error over the chains (:func:`log_mean_exp_stderr`): when it is
    finite, it is the spread that independent runs of the same call would show (within
    0.68–1.47× of it, measured). It is **NaN where one run cannot tell its error**: fewer than
    8 chains, or weights too uneven — an effective sample size below max(3, C/8) at the point,
    or at more than a tenth of the call's points (a schedule too short for the data: raise
    ``num_steps``). It measures the noise of the estimate, not the bias of a lower bound
    whose chains all miss posterior mass: check that with BDMC where the model can simulate
    its data. ``log_weights`` are the chains' final log-weights (C, N), float64;
    ``stderr_delta`` the former error, the delta method over the chains sd(w) / (√C mean(w)),
    kept for comparison: it only sees the weights drawn and was 2.3× too small at T = 10
    (0.75 where repeated runs spread by 1.70)."""

    log_px: torch.Tensor
    ess: torch.Tensor
    acceptance: float
    stderr: torch.Tensor | None = None
    log_weights: torch.Tensor | None = field(default=None, repr=False)
    stderr_delta: torch.Tensor | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- the annealer
class _Annealer:
    """The pieces of one AIS run on a batch: the start p_0 and the joint p(x, ·) of the
    unconstrained latents u (C, B, D), evaluated together with their gradients."""

    def __init__(self, problem: Problem, x: torch.Tensor, y: torch.Tensor | None,
                 proposal: str, guide: Callable[..., Any] | None = None) -> None:
        self.problem, self.x, self.y, self.proposal = problem, x, y, proposal
        self.guide = guide

    def sample_start(self, num: int) -> torch.Tensor:
        p = self.problem
        with torch.no_grad():
            draws = p.prior_draws(self.x, self.y, num) if self.proposal == "prior" \
                else p.guide_draws(self.x, self.y, num, self.guide)
            return p.unconstrain(draws, num).detach()

    def _log_guide(self, u: torch.Tensor) -> torch.Tensor:
        """log q(T(u) | x) + log abs(det ∂T/∂u) per chain and point."""
        p = self.problem
        values, log_det = p.constrain(u)
        num = u.shape[0]
        with p.particle_plate(num):
            tr = poutine.trace(poutine.condition(self.guide, data=values)).get_trace(
                *p.args(self.x, self.y))
        out = log_det
        for name in p.latent_names:
            site = tr.nodes[name]
            out = out + p.per_point(site, site_log_prob(site), num)
        return out

    def evaluate(self, u: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p_0(u), log p(x, u)) per chain and point, and their gradients with respect to
        u: one run of the model (and of the guide, when it is p_0), two backward passes."""
        with torch.enable_grad():
            v = u.detach().requires_grad_(True)
            log_prior, log_lik = self.problem.log_joint(self.x, self.y, v, split=True)
            log_joint = log_prior + log_lik
            log_start = log_prior if self.proposal == "prior" else self._log_guide(v)
            (g_start,) = torch.autograd.grad(log_start.sum(), v, retain_graph=True,
                                             allow_unused=True)
            g_start = torch.zeros_like(v) if g_start is None else g_start
            if self.proposal == "prior":  # log p(x, u) = log p_0(u) + log p(x | u)
                (g_lik,) = torch.autograd.grad(log_lik.sum(), v, allow_unused=True)
                g_joint = g_start + (0.0 if g_lik is None else g_lik)
            else:
                (g_joint,) = torch.autograd.grad(log_joint.sum(), v, allow_unused=True)
                g_joint = torch.zeros_like(v) if g_joint is None else g_joint
        return log_start.detach(), log_joint.detach(), g_start.detach(), g_joint.detach()


@dataclass
class _State:
    """Chains with their cached log-densities and gradients (each per chain and point)."""

    u: torch.Tensor
    f0: torch.Tensor
    f1: torch.Tensor
    g0: torch.Tensor
    g1: torch.Tensor

    @classmethod
    def at(cls, annealer: _Annealer, u: torch.Tensor) -> _State:
        return cls(u, *annealer.evaluate(u))

    def log_target(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.f0 + beta * self.f1

    def grad_target(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.g0 + beta * self.g1

    def where(self, keep_new: torch.Tensor, new: _State) -> _State:
        k = keep_new.unsqueeze(-1)
        return _State(torch.where(k, new.u, self.u), torch.where(keep_new, new.f0, self.f0),
                      torch.where(keep_new, new.f1, self.f1), torch.where(k, new.g0, self.g0),
                      torch.where(k, new.g1, self.g1))


def _hmc_step(annealer: _Annealer, state: _State, beta: float, step: torch.Tensor,
              leapfrog_steps: int) -> tuple[_State, torch.Tensor]:
    """One HMC transition leaving π_β invariant, per chain and point; returns (state,
    accepted)."""
    eps = step.unsqueeze(-1)
    p0 = torch.randn_like(state.u)
    p = p0 + 0.5 * eps * state.grad_target(beta)
    new = state
    for i in range(leapfrog_steps):
        new = _State.at(annealer, new.u + eps * p)
        report(new.u.shape[1], LEAPFROG)
        if i < leapfrog_steps - 1:
            p = p + eps * new.grad_target(beta)
    p = p + 0.5 * eps * new.grad_target(beta)
    log_accept = (new.log_target(beta) - 0.5 * (p ** 2).sum(-1)) \
        - (state.log_target(beta) - 0.5 * (p0 ** 2).sum(-1))
    finite = torch.isfinite(new.u).all(-1) & torch.isfinite(new.g0).all(-1) \
        & torch.isfinite(new.g1).all(-1)
    log_accept = torch.where(finite, torch.nan_to_num(log_accept, nan=-math.inf), -math.inf)
    accept = torch.log(torch.rand_like(log_accept)) < log_accept
    return state.where(accept, new), accept


def _anneal(annealer: _Annealer, z: torch.Tensor, betas: torch.Tensor, leapfrog_steps: int,
            step_size: float, pilot: torch.Tensor | None = None,
            steps: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Run the chains ``z`` (C, B, D) through ``betas``; returns (log w, final z, acceptance
    rate, the step sizes used, (T, B)).

    Step sizes are either the fixed schedule ``steps`` or adapted per point towards
    :data:`TARGET_ACCEPTANCE` from the acceptances of the ``pilot`` chains (P, B, D), which move
    alongside with the same kernels but carry no weight: the kernels then never depend on the
    weighted chains' own paths, which would bias their weights (an adaptive kernel must be
    chosen independently of the chain it moves). Without either, the step stays ``step_size``.
    """
    chains = z.shape[0]
    if steps is None and pilot is not None:
        z = torch.cat([z, pilot])
    state = _State.at(annealer, z)
    log_w = torch.zeros(chains, z.shape[1], dtype=torch.float64, device=z.device)
    step = torch.full(z.shape[1:-1], step_size, device=z.device, dtype=z.dtype)
    used, accepted = [], 0.0
    for t in range(1, len(betas)):
        b0, b1 = float(betas[t - 1]), float(betas[t])
        log_w += (b1 - b0) * (state.f1[:chains] - state.f0[:chains]).double()
        current = steps[t - 1] if steps is not None else step
        used.append(current)
        state, acc = _hmc_step(annealer, state, b1, current.expand(state.u.shape[:-1]),
                               leapfrog_steps)
        if steps is None and pilot is not None:
            rate = acc[chains:].float().mean(0)
            step = step * torch.where(rate > TARGET_ACCEPTANCE, 1.02, 0.98).to(step.dtype)
        accepted += float(acc[:chains].float().mean())
    return log_w, state.u[:chains], accepted / max(1, len(betas) - 1), torch.stack(used)


# --------------------------------------------------------------------------- set-up
def _owners(vae: Any, guide: Callable[..., Any] | None) -> tuple[nn.Module, ...]:
    mods = [m for m in (vae if isinstance(vae, nn.Module) else None, module_of(guide))
            if m is not None]
    return tuple(dict.fromkeys(mods))


@contextlib.contextmanager
def frozen_program(vae: Any, problem: Problem, guide: Callable[..., Any] | None = None
                   ) -> Iterator[None]:
    """Eval mode for the modules of ``vae`` (and of ``guide``), and ``requires_grad`` off for
    their parameters and for every param-store entry the model and guide read: only the
    latents move. All restored afterwards."""
    store = dict(pyro.get_param_store().named_parameters())
    tensors = {id(store[n]): store[n] for n in (*problem.params, *problem.guide_params)
               if n in store}
    with frozen(*_owners(vae, guide)), warnings.catch_warnings():
        # pyro.module skips (and warns about, in train mode) a parameter that does not
        # require grad: here that is the point
        warnings.filterwarnings("ignore", message=".*not registered in the param store")
        flags = [(t, t.requires_grad) for t in tensors.values()]
        for t, _ in flags:
            t.requires_grad_(False)
        try:
            yield
        finally:
            for t, flag in flags:
                t.requires_grad_(flag)


def _labels(vae: Any, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels to pass: none to the library's unconditional VAE (it ignores them), as given
    to every other model."""
    return None if isinstance(vae, VAE) and not vae.conditional else y


def _check_data(x: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ConfigError(f"x must be a torch.Tensor batch with one row per point, got "
                          f"{type(x).__name__}; convert it with torch.as_tensor(x)")
    if x.shape[0] == 0:
        raise DataError("x is an empty batch; pass at least one data point")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError("x contains NaN or infinite values; remove or impute them first")


def _problem(vae: Any, x: torch.Tensor, y: torch.Tensor | None, proposal: str,
             guide: Callable[..., Any] | None, what: str,
             model: Callable[..., Any] | None = None) -> tuple[Problem, Callable | None]:
    """The problem of ``vae``'s model on the batch (the guide only where it is the proposal),
    checked for what AIS needs; and the guide."""
    if proposal not in ("prior", "guide"):
        raise ConfigError(f"unknown AIS proposal {proposal!r}; use prior or guide")
    own_model, own_guide = program_of(vae, guide)
    model = own_model if model is None else model
    if proposal == "prior":
        problem = describe(model, None, x, y)
    else:
        problem = describe(model, own_guide, x, y)
        if problem.auxiliary:
            raise ConfigError(f"{what} with proposal='guide' needs the guide's density at any "
                              "value of the latents, which a guide with auxiliary sites ("
                              f"{', '.join(problem.auxiliary)}) does not give; use "
                              "proposal='prior'")
    problem.require_continuous(what)
    if problem.dim == 0:
        raise ModelError(f"{what} needs latent sites inside the data plate; the model has none "
                         "(its log p(x) needs no estimate)")
    return problem, (own_guide if proposal == "guide" else None)


def ais_log_likelihood(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None = None, num_steps: int = 2000,
    num_chains: int = 16, leapfrog_steps: int = 2, step_size: float = 0.1,
    proposal: str = "prior", schedule_kind: str = "sigmoid", batch_size: int = 100,
    pilot_chains: int = 4, guide: Callable[..., Any] | None = None,
) -> AISResult:
    """AIS estimate of log p(x) per point of ``x`` (module docstring), for ``vae``'s model —
    any object with ``.model`` and ``.guide`` (the library's models,
    :class:`~pyro_vae.infer.trainer.ModelGuide`) — over all its local latent sites.

    The defaults spend the gradient evaluations on many intermediate distributions with short
    HMC trajectories: on a linear-Gaussian model (exact log p(x) known) T = 4000 with 3
    leapfrog steps was within 0.022 nats of the truth at every point, T = 1000 with 10 leapfrog
    steps (about the same cost) 0.10, and T = 6000 with 2 leapfrog steps and 32 chains 0.018.

    :param proposal: ``"prior"`` (the model's prior) or ``"guide"`` (``guide``, default
        ``vae.guide``, as p_0: fewer steps for the same error where it is close to the
        posterior; it must not have auxiliary sites).
    :param pilot_chains: unweighted chains per point whose acceptances adapt the step size
        (0: the step stays ``step_size``).
    :raises ModelError: for a discrete latent, a latent outside the data plate (a global one),
        or a model without a plate over the points of ``x``.
    """
    for name, value in (("num_steps", num_steps), ("num_chains", num_chains),
                        ("leapfrog_steps", leapfrog_steps), ("batch_size", batch_size)):
        check_count(name, value)
    check_real("step_size", step_size, example="step_size=0.1")
    betas = schedule(num_steps, schedule_kind)
    if isinstance(pilot_chains, bool) or not isinstance(pilot_chains, int) or pilot_chains < 0:
        raise ConfigError(f"pilot_chains must be an integer ≥ 0, got {pilot_chains!r}; "
                          "0 keeps the step size fixed")
    _check_data(x)
    y = _labels(vae, y)
    draws = num_chains + pilot_chains
    check_draws(vae, draws, f"--ais-chains {num_chains}" + (
        f" (+ {pilot_chains} pilot chains)" if pilot_chains else ""), "--ais-chains")
    # points per batch: chains × points × the decoder's activations per draw within a chunk
    batch_size = min(batch_size, points_per_chunk(vae, draws))
    out, ess, acc, log_ws = [], [], [], []
    with job("AIS log-likelihood", x.shape[0] * num_steps * leapfrog_steps, LEAPFROG,
             "lower --ais-steps, --ais-leapfrog or the number of points"):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            yb = None if y is None else y[start:start + batch_size]
            problem, q = _problem(vae, xb, yb, proposal, guide, "AIS")
            with frozen_program(vae, problem, q):
                annealer = _Annealer(problem, xb, yb, proposal, q)
                u0 = annealer.sample_start(num_chains)
                pilot = annealer.sample_start(pilot_chains) if pilot_chains else None
                log_w, _, a, _ = _anneal(annealer, u0, betas, leapfrog_steps, step_size, pilot)
            log_ws.append(log_w)
            out.append((torch.logsumexp(log_w, 0) - math.log(num_chains)).float())
            w = torch.softmax(log_w, 0)
            ess.append((1.0 / (w ** 2).sum(0)).float())
            acc.append(a)
    log_w = torch.cat(log_ws, 1)
    w = torch.softmax(log_w, 0)
    # w_c / mean(w) = C · softmax: sd of that over √C is the delta-method error
    delta = ((num_chains * w).std(0) / math.sqrt(num_chains)).float() if num_chains > 1 \
        else torch.full_like(w[0], math.inf).float()
    return AISResult(torch.cat(out), torch.cat(ess), sum(acc) / len(acc),
                     log_mean_exp_stderr(log_w), log_w, delta)


# --------------------------------------------------------------------------- BDMC
@dataclass
class Sandwich:
    """BDMC on simulated data: per point the forward (lower) and reverse (upper) estimates.

    ``x`` is the simulated data; ``latents`` the simulated value of every latent site (site →
    value for the batch, e.g. (B, L)); ``z`` that value itself for a model with one latent
    site (the former field), the dict for several."""

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor | dict[str, torch.Tensor]
    latents: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def width(self) -> torch.Tensor:
        return self.upper - self.lower


def simulate(vae: Any, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
             num_points: int = 16) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                            Callable[..., Any]]:
    """Draw (z*, x) from ``vae``'s model: its latents from the prior and its observed site
    sampled (``poutine.uncondition``), on the template batch ``x`` (only its shape and dtype
    are used; default, for the library's models, ``num_points`` rows of zeros of
    ``vae.event_shape``).

    Returns the simulated data (shaped as ``x``), the latents' values (site → value) and the
    model conditioned on the simulated observation, which AIS then scores."""
    model, _ = program_of(vae)
    if x is not None:
        _check_data(x)
    else:
        shape = getattr(vae, "event_shape", None)
        if shape is None:
            raise ConfigError("BDMC needs a template batch for this model: pass x= a batch of "
                              "the data's shape (its values are not used), one row per point "
                              "to simulate")
        check_count("num_points", num_points)
        ref = next(iter(vae.parameters()), None) if isinstance(vae, nn.Module) else None
        x = torch.zeros(num_points, *shape, dtype=ref.dtype if ref is not None else None,
                        device=ref.device if ref is not None else None)
    y = _labels(vae, y)
    problem = describe(model, None, x, y)
    problem.require_continuous("BDMC")
    with evaluating(*_owners(vae, None)):
        tr = poutine.trace(poutine.uncondition(model)).get_trace(*problem.args(x, y))
    observed = {name: tr.nodes[name]["value"].detach() for name in problem.observed}
    latents = {s.name: tr.nodes[s.name]["value"].detach() for s in problem.latents}
    if len(observed) != 1:
        raise ModelError(f"BDMC simulates the data x from the model's observed site, but the "
                         f"model has {len(observed)} ({', '.join(observed)}); give it one "
                         "observed site for x")
    (value,) = observed.values()
    if value.numel() != x.numel():
        raise ModelError(f"the model's observed site has {value.numel()} values for a batch x "
                         f"of {x.numel()}; BDMC needs it to observe x itself (any reshape of it)")
    x_sim = value.reshape(x.shape).to(x.dtype)
    return x_sim, latents, poutine.condition(model, data=observed)


def bdmc(vae: Any, num_points: int = 16, num_steps: int = 2000, num_chains: int = 16,
         leapfrog_steps: int = 2, step_size: float = 0.1, schedule_kind: str = "sigmoid",
         y: torch.Tensor | None = None, pilot_chains: int = 4, x: torch.Tensor | None = None,
         proposal: str = "prior", guide: Callable[..., Any] | None = None) -> Sandwich:
    """Simulate (z*, x) from the model (:func:`simulate`: ``num_points`` points, or one per
    row of the template batch ``x``, which a model that is not the library's needs), then
    forward AIS (lower bound) and reverse AIS from z* (upper bound) on the same x, over all
    local latent sites in unconstrained space. The reverse run uses the forward run's step
    sizes, reversed: adapting on chains that start at z* would make its kernels depend on z*.

    :param proposal: p_0 of both runs: ``"prior"`` or ``"guide"`` (``guide``, default
        ``vae.guide``)."""
    check_count("num_chains", num_chains)
    check_count("num_steps", num_steps)
    check_count("leapfrog_steps", leapfrog_steps)
    check_real("step_size", step_size, example="step_size=0.1")
    betas = schedule(num_steps, schedule_kind)
    x_sim, latents, model = simulate(vae, x, y, num_points)
    y = _labels(vae, y)
    problem, q = _problem(vae, x_sim, y, proposal, guide, "BDMC", model=model)
    z_star = problem.unconstrain(latents, 1)  # (1, B, D)
    with frozen_program(vae, problem, q), job(
            "BDMC", 2 * x_sim.shape[0] * num_steps * leapfrog_steps, LEAPFROG,
            "lower num_steps, leapfrog_steps or num_points"):
        annealer = _Annealer(problem, x_sim, y, proposal, q)
        z0 = annealer.sample_start(num_chains)
        pilot = annealer.sample_start(pilot_chains) if pilot_chains else None
        log_w, _, _, steps = _anneal(annealer, z0, betas, leapfrog_steps, step_size, pilot)
        lower = (torch.logsumexp(log_w, 0) - math.log(num_chains)).float()
        # the forward transition into β_t used steps[t − 1]; the reverse one into β_{T−t}
        # takes the forward step of that temperature (β_0 borrows β_1's)
        reverse = torch.cat([steps.flip(0)[1:], steps[:1]])
        z = z_star.expand(num_chains, *z_star.shape[1:]).clone()
        log_w, _, _, _ = _anneal(annealer, z, betas.flip(0), leapfrog_steps, step_size,
                                 steps=reverse)
    # reversed, the increments are (β_{t−1} − β_t) f(z) with f = log p(x, z) − log p_0(z)
    upper = -(torch.logsumexp(log_w, 0) - math.log(num_chains)).float()
    single = next(iter(latents.values())) if len(latents) == 1 else latents
    return Sandwich(lower, upper, x_sim, single, latents)
