"""Measure gradient-estimator variance side by side, on any Pyro model and guide.

At fixed parameters and a fixed batch of B data points, each estimator is run R times with S
samples per point; every run gives one estimate of the gradient of the mean-per-point ELBO
(ascent direction). The problem is read off one trace of (model, guide) on the batch
(:func:`~pyro_vae.infer.problem.describe`), never from a model's attributes, and the gradient
is split into two parameter groups, named as in a VAE:

``"encoder"``  φ, the **guide's** parameters: every ``pyro.param`` / ``pyro.module`` parameter
               the guide's trace touches (``Problem.guide_params``), as the unconstrained
               tensors of Pyro's param store;
``"decoder"``  θ, the **model's** parameters that the guide does not use (``Problem.params``
               minus the guide's).

A group with no parameters is left out.

Per estimator and group, with g_r the r-th estimate of a P-vector:

=========================  ========================================================================
``total_variance``         tr Cov[g] = Σ_p Var[g_p]  (unbiased over the R runs)
``mean_variance``          tr Cov[g] / P
``snr_mean``               mean over p of abs(E[g_p]) / sd[g_p]  (``snr_median`` likewise; its
                           floor at zero signal is about 0.80/√R, ``snr_floor``)
``mean_norm``              ‖E[g]‖, the size of the mean gradient
``evaluations``            model (and guide) evaluations per estimate: S for the continuous
                           estimators and REINFORCE, 2·S for ARM/DisARM (S antithetic pairs), K = S
                           for RLOO, 3 for REBAR/RELAX (plus a double backward pass)
``seconds``                wall-clock seconds per estimate (forward, backward, baseline update),
                           ± ``seconds_se`` over the R estimates
``evaluation_variance``    total_variance × evaluations: variance at an equal number of model
                           evaluations (lower is better)
``work_variance``          total_variance × seconds: variance at equal compute time
=========================  ========================================================================

Every variance carries its delete-a-batch jackknife standard error (:class:`GradientMoments`);
the products carry theirs (the evaluation count is exact, the time has its own standard error).

**Estimators.** The continuous family of :mod:`pyro_vae.infer.estimators` (``reparam``,
``score``, ``score-avg``, ``score-nn``, ``stl``: Pyro ELBOs on the unchanged model and guide; the
score family makes *every* latent site of the guide score-function, whatever its name) and the
binary estimators of :mod:`pyro_vae.infer.binary` (``BINARY_ESTIMATORS``: ``arm``, ``disarm``,
``rloo``, ``rebar``, ``relax``, ``gumbel-softmax`` — biased —, ``reinforce``) for models with
Bernoulli latents (``rloo`` and ``reinforce``: any non-reparameterized latent). An estimator that
cannot be honoured on the model raises a one-line :class:`~pyro_vae.errors.ConfigError`: never a
silently pathwise or relabelled result.

**Implementations.** ``"pyro"`` measures the Pyro ELBOs on any model/guide. ``"explicit"`` is the
hand-written torch surrogate of :func:`~pyro_vae.infer.estimators.explicit_surrogate`, written
for the library's own :class:`~pyro_vae.models.vae.VAE` with its diagonal Gaussian guide (and the
only place for a score-function estimator with an analytic KL). ``implementation=None`` (the
default) picks ``"explicit"`` for that model and ``"pyro"`` for every other; asking for
``"explicit"`` elsewhere is a ConfigError.

**The batch is the data set.** The lab measures the gradient of the mean per point of the
batch. A data plate that subsamples (full size N, batch B) scales every site by N/B; the model
and guide are run under :class:`BatchAsDataSet`, which takes that factor out again (the
estimators' costs, baselines and control variates then see per-point values, as at N = B), and
the loss is divided by B — the same gradient as dividing the scaled loss by N, as
:func:`~pyro_vae.infer.estimators.pyro_loss` does. The model object is not changed; its
``nn.Module`` s (and the guide's) are put in eval mode for the measurement and restored after.

Baselines and control variates learn while they are measured, as during training: the network
b_ψ(x) of ``score-nn`` and the control variates of REBAR/RELAX (η, the temperature λ and RELAX's
network, trained by the variance objective of the papers) first take ``warmup`` Adam steps, the
decaying averages (``score-avg``, ``reinforce``) min(warmup, 100) updates, then one step per
measured estimate. On a fixed batch the decaying average is a per-data-point running mean of f,
close to the best constant baseline for each point; in mini-batch training the same slots see
other points and it degrades towards a global average.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import constraints

from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.binary import (
    BINARY_ESTIMATORS,
    REINFORCE_ELBO,
    RLOO_ELBO,
    GumbelSoftmax_ELBO,
)
from pyro_vae.infer.estimators import (
    BASELINE_KIND,
    ESTIMATORS,
    KL_MODES,
    SCORE_FAMILY,
    BaselineState,
    NeuralBaseline,
    check_estimator,
    explicit_surrogate,
    mean_integrand,
    pyro_objective,
)
from pyro_vae.infer.evaluation import elbo_terms, problem_of
from pyro_vae.infer.problem import Problem
from pyro_vae.jobs import job
from pyro_vae.lab import reporting
from pyro_vae.models.vae import VAE
from pyro_vae.nn.module import module_of

IMPLEMENTATIONS = ("explicit", "pyro")
#: The decaying average (β = 0.9) forgets its zero start within ~50 updates.
AVG_WARMUP = 100
#: Every estimator the lab measures: the continuous family, then the binary estimators.
LAB_ESTIMATORS = (*ESTIMATORS, *BINARY_ESTIMATORS)
#: Binary estimators that need a latent Bernoulli site.
BERNOULLI_ESTIMATORS = ("arm", "disarm", "rebar", "relax", "gumbel-softmax")
#: Binary estimators for any non-reparameterized latent site.
SCORE_ESTIMATORS = ("rloo", "reinforce")
#: Learning rate of the learned baselines and control variates during the measurement.
LEARNED_LR = 1e-2
#: z of a two-sided 95 % normal interval.
Z95 = 1.959963984540054


# --------------------------------------------------------------------------- the problem
def lab_labels(vae: Any, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels the model takes: ``y`` unless the model says it is not conditional (the
    library's models and :class:`~pyro_vae.infer.trainer.ModelGuide` carry ``.conditional``)."""
    return y if getattr(vae, "conditional", y is not None) else None


def lab_problem(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                guide: Callable[..., Any] | None = None) -> Problem:
    """The :class:`~pyro_vae.infer.problem.Problem` of ``vae``'s model and ``guide`` (default
    ``vae.guide``) on the batch; ``y`` as :func:`lab_labels` passes it."""
    return problem_of(vae, x, lab_labels(vae, y), guide)


def lab_modules(vae: Any, guide: Callable[..., Any] | None = None) -> list[nn.Module]:
    """The ``nn.Module`` s the lab can see behind model and guide (the object itself, the
    modules of bound methods), for eval mode."""
    found: list[nn.Module] = []
    for owner in (vae, module_of(getattr(vae, "model", None)), module_of(guide)):
        if isinstance(owner, nn.Module) and all(owner is not m for m in found):
            found.append(owner)
    return found


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Eval mode (batch norm uses running statistics, no dropout) for the ``nn.Module`` s among
    ``modules``, gradients still on; every submodule's mode is restored afterwards."""
    mods = [m for m in modules if isinstance(m, nn.Module)]
    saved = [(sub, sub.training) for m in mods for sub in m.modules()]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for sub, mode in saved:
            sub.training = mode


class BatchAsDataSet(Messenger):
    """Takes the subsampling scale N/B of a plate back out of every sample site: the batch is
    then the whole data set (used around a model and a guide, or as a context).

    :param plate: the name of the data plate; ``None``: every subsampled plate.
    """

    def __init__(self, plate: str | None = None) -> None:
        super().__init__()
        self.plate = plate

    def _process_message(self, msg: Any) -> None:
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if (self.plate is None or frame.name == self.plate) and frame.full_size \
                    and frame.size and frame.size > 0 and frame.full_size != frame.size:
                msg["scale"] = msg["scale"] * (frame.size / frame.full_size)


@contextlib.contextmanager
def batch_as_data_set(vae: Any) -> Iterator[None]:
    """Inside: every subsampled plate's N/B scale is taken out (:class:`BatchAsDataSet`, the
    measured batch is the whole data set) and ``vae``'s modules are in eval mode; nothing of
    ``vae`` is changed (its modes are restored however the block ends)."""
    with eval_mode(*lab_modules(vae)), BatchAsDataSet():
        yield


# --------------------------------------------------------------------------- bookkeeping
def problem_parameter_groups(problem: Problem) -> dict[str, list[torch.Tensor]]:
    """``{"encoder": guide parameters φ, "decoder": model parameters θ not in the guide}`` from
    the traces' param sites, as the unconstrained tensors of Pyro's param store (those the
    optimizer steps); empty groups are left out."""
    store = dict(pyro.get_param_store().named_parameters())
    guide_names = list(dict.fromkeys(problem.guide_params))
    model_names = [n for n in dict.fromkeys(problem.params) if n not in set(guide_names)]
    missing = [n for n in (*guide_names, *model_names) if n not in store]
    if missing:
        raise ConfigError(f"parameter {missing[0]!r} of the trace is not in Pyro's param store; "
                          "register parameters with pyro.param / pyro.module")
    groups = {"encoder": [store[n] for n in guide_names],
              "decoder": [store[n] for n in model_names]}
    groups = {g: [p for p in ps if p.requires_grad] for g, ps in groups.items()}
    groups = {g: ps for g, ps in groups.items() if ps}
    if not groups:
        raise ConfigError("neither the model nor the guide has a parameter that takes a "
                          "gradient; there is nothing to measure")
    return groups


def parameter_groups(vae: Any, guide: Callable[..., Any] | None = None,
                     problem: Problem | None = None) -> dict[str, list[torch.Tensor]]:
    """The parameters whose gradients the lab measures.

    With ``problem`` (:func:`lab_problem`): :func:`problem_parameter_groups`, the guide's
    parameters ("encoder", φ) and the model's others ("decoder", θ), for any model and guide.
    Without it, the library's own models by their modules (the discrete lab): φ = the module
    of a user's ``guide`` or ``vae.encoder``, θ = ``vae.decoder``."""
    if problem is not None:
        return problem_parameter_groups(problem)
    owner = module_of(guide)
    phi = list(owner.parameters()) if owner is not None and owner is not vae \
        else list(vae.encoder.parameters())
    return {"encoder": phi, "decoder": list(vae.decoder.parameters())}


def flat_gradients(loss: torch.Tensor, groups: dict[str, list[torch.Tensor]]) -> dict[str,
                                                                                      torch.Tensor]:
    """∇ loss for each parameter group, flattened to one vector per group."""
    names = list(groups)
    params = [p for n in names for p in groups[n]]
    grads = torch.autograd.grad(loss, params, allow_unused=True) if params else ()
    out, i = {}, 0
    for n in names:
        k = len(groups[n])
        out[n] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads[i:i + k], groups[n], strict=True)])
        i += k
    return out


def ascent_and_baseline_step(loss: torch.Tensor, groups: dict[str, list[torch.Tensor]],
                             net: nn.Module | list[torch.Tensor], optim: torch.optim.Optimizer
                             ) -> dict[str, torch.Tensor]:
    """From a surrogate ``loss`` whose gradient includes a learned baseline's (or control
    variate's) own loss: the ascent direction of each group (−∇ loss) and, as in training, one
    ``optim`` step of the learned parameters ``net`` (a module or a list of tensors) on their
    part of ∇ loss."""
    learned = list(net.parameters()) if isinstance(net, nn.Module) else list(net)
    grads = flat_gradients(loss, {**groups, "__learned__": learned})
    optim.zero_grad()
    start = 0
    for p in learned:
        p.grad = grads["__learned__"][start:start + p.numel()].view_as(p).detach().clone()
        start += p.numel()
    optim.step()
    return {g: -grads[g] for g in groups}


def pyro_surrogate_needs_clean_store() -> None:
    """TraceGraph's decaying-average baseline lives in the param store; start afresh."""
    store = pyro.get_param_store()
    for name in [n for n in store if n.startswith("__baseline_avg_downstream_cost_")]:
        del store[name]


class GradientMoments:
    """Streaming first and second moments of R gradient draws per parameter, in float64, kept
    in ``num_batches`` interleaved batches so that any statistic of them carries a delete-a-batch
    jackknife standard error (no R × P matrix is kept).

    Draws are shifted by the first one before squaring, which avoids cancellation when
    abs(mean) ≫ sd.
    """

    def __init__(self, num_batches: int = 10) -> None:
        self.num_batches = num_batches
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.counts = [0] * num_batches
        self.draws = 0

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().double()
        if self.shift is None:
            self.shift = g.clone()
            self.s1 = torch.zeros(self.num_batches, *g.shape, dtype=torch.float64,
                                  device=g.device)
            self.s2 = torch.zeros_like(self.s1)
        b = self.draws % self.num_batches
        d = g - self.shift
        self.s1[b] += d
        self.s2[b] += d * d
        self.counts[b] += 1
        self.draws += 1

    def _moments(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = sum(c for c, k in zip(self.counts, keep.tolist(), strict=True) if k)
        s1, s2 = self.s1[keep].sum(0), self.s2[keep].sum(0)
        return self.shift + s1 / n, ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0)

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-parameter mean and unbiased variance over all draws."""
        return self._moments(torch.ones(self.num_batches, dtype=torch.bool))

    def statistic(self, fn) -> tuple[float, float]:
        """``fn(mean, variance)`` over all draws and its jackknife standard error."""
        value = float(fn(*self.mean_and_variance()))
        full = [b for b in range(self.num_batches) if self.counts[b]]
        if len(full) < 2:
            return value, float("nan")
        leave_out = []
        for b in full:
            keep = torch.tensor([i != b and self.counts[i] > 0
                                 for i in range(self.num_batches)])
            leave_out.append(float(fn(*self._moments(keep))))
        g = len(leave_out)
        mean = sum(leave_out) / g
        return value, math.sqrt((g - 1) / g * sum((v - mean) ** 2 for v in leave_out))


def snr_mean(mean: torch.Tensor, var: torch.Tensor, draws: int | None = None) -> torch.Tensor:
    """Mean over parameters of abs(E ĝ) / sd ĝ (parameters with zero variance left out).

    With ``draws`` = R, abs(E ĝ) is estimated as sqrt(max(ḡ² − s²/R, 0)): the sample mean's own
    noise s²/R is subtracted. That lowers, but does not remove, the floor under every SNR: at
    zero signal the plain estimate reads about 0.80/√R, this one about 0.34/√R
    (:func:`snr_floor`).
    """
    sd = var.sqrt()
    ok = sd > 0
    if not bool(ok.any()):
        return torch.zeros(())
    signal = mean.abs()[ok] if draws is None else \
        (mean[ok] ** 2 - var[ok] / draws).clamp_min(0).sqrt()
    return (signal / sd[ok]).mean()


@functools.lru_cache(maxsize=256)
def snr_floor(draws: int, debiased: bool = True) -> float:
    """What :func:`snr_mean` reads at zero signal (E ĝ = 0) from R = ``draws`` Gaussian draws.

    Then √R ḡ/s is Student-t with R − 1 degrees of freedom, T, and the statistic is
    abs(T)/√R (plain) or sqrt(max(T² − 1, 0))/√R (``debiased``); its expectation, by quadrature:
    about 0.80/√R and 0.343/√R for large R (0.83/√R and 0.381/√R at R = 20). Infinite for R < 3,
    where E abs(T) is.
    """
    if draws < 3:
        return math.inf
    nu = torch.tensor(float(draws - 1), dtype=torch.float64)
    t = torch.linspace(0.0, 200.0, 400001, dtype=torch.float64)
    density = 2 * torch.distributions.StudentT(nu).log_prob(t).exp()
    f = (t * t - 1).clamp_min(0).sqrt() if debiased else t
    return float(torch.trapezoid(f * density, t)) / math.sqrt(draws)


@dataclass
class GroupStats:
    """Gradient statistics of one parameter group; ``*_se``: jackknife standard errors.

    ``snr_low`` / ``snr_high``: the 95 % interval snr_mean ± 1.96 se; ``snr_floor``: what the SNR
    statistic reads at zero signal (:func:`snr_floor`); ``resolved``: whether the signal is
    resolved, i.e. ``snr_low`` lies above the floor (``None`` where not assessed).
    """

    total_variance: float
    mean_variance: float
    snr_mean: float
    snr_median: float
    mean_norm: float
    num_params: int
    total_variance_se: float = float("nan")
    snr_mean_se: float = float("nan")
    snr_low: float = float("nan")
    snr_high: float = float("nan")
    snr_floor: float = float("nan")
    resolved: bool | None = None

    @classmethod
    def of(cls, mean: torch.Tensor, var: torch.Tensor) -> GroupStats:
        """From the per-parameter mean and (unbiased) variance over the R estimates."""
        sd = var.sqrt()
        ok = sd > 0
        snr = (mean.abs()[ok] / sd[ok]) if bool(ok.any()) else torch.zeros(1)
        return cls(float(var.sum()), float(var.mean()), float(snr.mean()),
                   float(snr.median()), float(mean.norm()), int(mean.shape[0]))

    @classmethod
    def of_moments(cls, moments: GradientMoments, debiased: bool = False) -> GroupStats:
        """With the jackknife standard errors of the total variance and the mean SNR, the SNR's
        95 % interval, its zero-signal floor and whether the signal is resolved; ``debiased``:
        the mean SNR corrected for the noise of the sample mean (:func:`snr_mean` with
        ``draws``), as the SNR lab reports it."""
        mean, var = moments.mean_and_variance()
        stats = cls.of(mean, var)
        stats.total_variance_se = moments.statistic(lambda m, v: v.sum())[1]
        if debiased:
            stats.snr_mean = float(snr_mean(mean, var, moments.draws))
            kept = round(moments.draws * (1 - 1 / moments.num_batches))  # draws of a leave-out
            stats.snr_mean_se = moments.statistic(lambda m, v: snr_mean(m, v, kept))[1]
        else:
            stats.snr_mean_se = moments.statistic(snr_mean)[1]
        stats.snr_floor = snr_floor(moments.draws, debiased)
        if math.isfinite(stats.snr_mean_se):
            stats.snr_low = stats.snr_mean - Z95 * stats.snr_mean_se
            stats.snr_high = stats.snr_mean + Z95 * stats.snr_mean_se
            stats.resolved = bool(stats.snr_low > stats.snr_floor)
        return stats


@dataclass
class EstimatorResult:
    """One (estimator, KL mode, S) measurement: per-group statistics and the cost per gradient
    (``evaluations`` of model and guide, ``seconds`` ± ``seconds_se``)."""

    estimator: str
    kl: str
    implementation: str
    num_samples: int
    repeats: int
    seconds: float
    groups: dict[str, GroupStats]
    mean_gradient: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    stderr_gradient: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    evaluations: int = 1
    seconds_se: float = float("nan")
    latent_sites: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.estimator} ({self.kl} KL)"

    def work_variance(self, group: str) -> float:
        """Variance × seconds per estimate: the variance at equal compute time."""
        return self.groups[group].total_variance * self.seconds

    def work_variance_se(self, group: str) -> float:
        """Its standard error (the variance's and the time's, combined to first order)."""
        st = self.groups[group]
        seconds_se = self.seconds_se if math.isfinite(self.seconds_se) else 0.0
        return math.hypot(st.total_variance_se * self.seconds, st.total_variance * seconds_se)

    def evaluation_variance(self, group: str) -> float:
        """Variance × model evaluations per estimate: the variance at an equal number of model
        evaluations (an average of n estimates has variance / n at n times the cost)."""
        return self.groups[group].total_variance * self.evaluations

    def evaluation_variance_se(self, group: str) -> float:
        return self.groups[group].total_variance_se * self.evaluations

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("mean_gradient",
                                                                "stderr_gradient")}
        d["latent_sites"] = list(self.latent_sites)
        d["work_variance"] = {g: self.work_variance(g) for g in self.groups}
        d["work_variance_se"] = {g: self.work_variance_se(g) for g in self.groups}
        d["evaluation_variance"] = {g: self.evaluation_variance(g) for g in self.groups}
        d["evaluation_variance_se"] = {g: self.evaluation_variance_se(g) for g in self.groups}
        return d


# --------------------------------------------------------------------------- estimators
def check_lab_estimator(estimator: str, kl: str) -> None:
    """One-line ConfigError for an unknown estimator or KL mode, or a binary estimator with an
    analytic KL (only ``gumbel-softmax`` has one: the discrete KL in closed form)."""
    if estimator not in LAB_ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; choose from "
                          f"{', '.join(LAB_ESTIMATORS)}")
    if estimator in ESTIMATORS:
        check_estimator(estimator, kl)
    elif kl not in KL_MODES:
        raise ConfigError(f"unknown KL mode {kl!r}; choose mc (Monte Carlo) or analytic")
    elif kl == "analytic" and estimator != "gumbel-softmax":
        raise ConfigError(f"the {estimator} estimator has no analytic-KL form; use kl='mc'")


def _is_bernoulli(site: Any) -> bool:
    """Whether a latent site's support is boolean (a Bernoulli site, ``to_event`` or not)."""
    support = site.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return isinstance(support, constraints._Boolean)


def check_applies(problem: Problem, estimator: str, num_samples: int = 1) -> None:
    """One-line ConfigError unless ``estimator`` can be honoured on the problem's latents."""
    names = ", ".join(repr(s.name) for s in problem.latents)
    not_rsample = [s.name for s in problem.latents if not s.has_rsample]
    if estimator in ("reparam", "stl") and not_rsample:
        raise ConfigError(f"the {estimator} estimator needs reparameterized guide sites, but "
                          f"site {not_rsample[0]!r} is not; use score, score-avg, score-nn or a "
                          "binary estimator (arm, disarm, rloo, rebar, relax, reinforce)")
    if estimator in BERNOULLI_ESTIMATORS and not any(_is_bernoulli(s) for s in problem.latents):
        raise ConfigError(f"the {estimator} estimator is for Bernoulli latent sites; this "
                          f"model's latents ({names}) have none: use reparam, stl or the score "
                          "family")
    if estimator in SCORE_ESTIMATORS and not not_rsample:
        raise ConfigError(f"the {estimator} estimator is for non-reparameterized (discrete) "
                          f"latent sites; every latent of this model ({names}) is "
                          "reparameterized: use reparam, stl or the score family")
    if estimator == "rloo" and num_samples < 2:
        raise ConfigError(f"rloo needs K = num_samples ≥ 2 draws per point (each draw's baseline "
                          f"is the mean of the others), got {num_samples}; e.g. 2")
    if estimator in ("rebar", "relax") and num_samples != 1:
        raise ConfigError(f"{estimator} takes one sample per estimate (3 evaluations), got "
                          f"num_samples={num_samples}; use 1")


def evaluations_per_estimate(estimator: str, num_samples: int, elbo: Any = None) -> int:
    """Model (and guide) evaluations per gradient estimate: the ELBO's own count where it has
    one (:mod:`pyro_vae.infer.binary`), else S."""
    count = getattr(elbo, "evaluations", None)
    return int(count) if isinstance(count, int) else int(num_samples)


def binary_objective(estimator: str, kl: str, num_samples: int, max_plate_nesting: int,
                     name: str) -> Any:
    """The Pyro ELBO of a binary estimator (:data:`BINARY_ESTIMATORS`) with S samples: S
    antithetic pairs (``arm``, ``disarm``), K = S draws (``rloo``), S particles
    (``reinforce``, ``gumbel-softmax``, whose ``kl`` picks the closed-form discrete KL), one
    (``rebar``, ``relax``, whose control-variate parameters are named ``name``)."""
    options = {"max_plate_nesting": max_plate_nesting}
    cls = BINARY_ESTIMATORS[estimator]
    if estimator in ("arm", "disarm"):
        return cls(num_pairs=num_samples, **options)
    if estimator == "rloo":
        return RLOO_ELBO(num_particles=num_samples, **options)
    if estimator in ("rebar", "relax"):
        return cls(name=name, **options)
    if estimator == "gumbel-softmax":
        return GumbelSoftmax_ELBO(num_particles=num_samples, analytic_kl=kl == "analytic",
                                  **options)
    return REINFORCE_ELBO(num_particles=num_samples, **options)


def resolve_implementation(vae: Any, guide: Callable[..., Any] | None, estimator: str,
                           implementation: str | None, problem: Problem | None = None) -> str:
    """``"explicit"`` or ``"pyro"``: ``None`` picks explicit for the library's own
    :class:`~pyro_vae.models.vae.VAE` with its diagonal Gaussian guide and a continuous
    estimator, pyro for everything else; asking for explicit elsewhere is a ConfigError."""
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown implementation {implementation!r}; use explicit or pyro")
    own_guide = guide is None or guide == getattr(vae, "guide", None)
    family = getattr(vae, "family", None)
    diagonal_vae = (isinstance(vae, VAE) and type(vae).posterior is VAE.posterior
                    and family is not None and family.is_diagonal
                    and (problem is None or problem.continuous))
    applies = diagonal_vae and own_guide and estimator in ESTIMATORS
    if implementation is None:
        return "explicit" if applies else "pyro"
    if implementation == "explicit" and not applies:
        if estimator not in ESTIMATORS:
            raise ConfigError(f"the {estimator} estimator exists only through Pyro; use "
                              "implementation='pyro' (--implementation pyro)")
        if not own_guide:
            raise ConfigError("the explicit estimators are written for the built-in diagonal "
                              "Gaussian guide; measure your own guide with "
                              "implementation='pyro'")
        if isinstance(vae, VAE) and family is not None and not family.is_diagonal:
            raise ConfigError(f"the explicit estimators are written for the diagonal Gaussian; "
                              f"this model's guide is {family.kind!r}: use "
                              "--implementation pyro")
        raise ConfigError(f"the explicit estimators are written for the library's VAE with a "
                          f"diagonal Gaussian guide, not {type(vae).__name__}; use "
                          "implementation='pyro'")
    return implementation


@dataclass
class _Setup:
    """One measurement's machinery: ``loss()`` is a fresh per-point surrogate loss (its negative
    gradient one estimate), ``learned`` the parameters of baselines / control variates stepped
    by ``optim`` during the measurement, ``warm_up()`` one update of them without a gradient
    for the groups."""

    loss: Callable[[], torch.Tensor]
    warm_up: Callable[[], None]
    warmup_steps: int
    evaluations: int
    learned: list[torch.Tensor] = field(default_factory=list)
    optim: torch.optim.Optimizer | None = None
    cleanup: Callable[[], None] = lambda: None


def _learned_step(loss: torch.Tensor, learned: list[torch.Tensor],
                  optim: torch.optim.Optimizer) -> None:
    grads = torch.autograd.grad(loss, learned, allow_unused=True)
    optim.zero_grad()
    for p, g in zip(learned, grads, strict=True):
        p.grad = None if g is None else g.detach().clone()
    optim.step()


def pyro_setup(problem: Problem, x: torch.Tensor, y: torch.Tensor | None, estimator: str,
               kl: str, num_samples: int, warmup: int, elbo: Any = None,
               offset: float | None = None) -> _Setup:
    """The measurement of ``estimator`` (or of a given Pyro ``elbo``) on the problem's model
    and guide, run under :class:`BatchAsDataSet`, the loss divided by the batch size."""
    batch = problem.plate.size
    model = BatchAsDataSet(problem.plate.name)(problem.model)
    guide = BatchAsDataSet(problem.plate.name)(problem.guide)
    args = problem.args(x, y)
    store = pyro.get_param_store()
    before = set(store.keys())
    name = f"_variance_lab_{estimator}"
    kind = BASELINE_KIND.get(estimator)
    pyro_surrogate_needs_clean_store()
    nn_baseline = None
    if kind == "nn" and elbo is None:
        if offset is None:  # E_q[f] per point: b_ψ's starting output
            with torch.no_grad():
                offset = float(elbo_terms(None, x, y, 1, problem=problem)["elbo"].mean())
        nn_baseline = NeuralBaseline(tuple(x.shape[1:]), offset=offset).to(x.device)

    def make(samples: int) -> Any:
        if estimator in ESTIMATORS:
            return pyro_objective(estimator, kl, samples, nn_baseline=nn_baseline,
                                  register_baseline=False,
                                  max_plate_nesting=problem.max_plate_nesting)[1]
        return binary_objective(estimator, kl, samples, problem.max_plate_nesting, name)

    elbo = make(num_samples) if elbo is None else elbo
    # b_ψ learns E_q[f | x], which one sample per point also targets: a cheaper warm-up
    warm_elbo = make(1) if nn_baseline is not None and num_samples > 1 else elbo

    def loss(objective: Any = elbo) -> torch.Tensor:
        return objective.differentiable_loss(model, guide, *args) / batch

    def cleanup() -> None:
        """Remove what the measurement added to the param store (control variates, decaying
        averages)."""
        for n in [n for n in store if n not in before]:
            del store[n]

    learned: list[torch.Tensor] = []
    if nn_baseline is not None:
        learned = list(nn_baseline.parameters())
    elif estimator in ("rebar", "relax"):
        try:
            loss()  # registers η, λ (and RELAX's network) in the param store
        except BaseException:
            cleanup()
            raise
        learned = [p for n, p in store.named_parameters() if n not in before and p.requires_grad]
    optim = torch.optim.Adam(learned, lr=LEARNED_LR) if learned else None
    avg = kind == "avg" or estimator == "reinforce"

    def warm_up() -> None:
        if optim is None:
            with torch.no_grad():  # a decaying average updates without a graph
                loss()
        else:
            _learned_step(loss(warm_elbo), learned, optim)

    steps = warmup if learned else (min(warmup, AVG_WARMUP) if avg else 0)
    return _Setup(loss, warm_up, steps, evaluations_per_estimate(estimator, num_samples, elbo),
                  learned, optim, cleanup)


def explicit_setup(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, estimator: str, kl: str,
                   num_samples: int, warmup: int) -> _Setup:
    """The hand-written surrogates of :func:`~pyro_vae.infer.estimators.explicit_surrogate`
    (library VAE with its diagonal Gaussian guide; per point, no plate involved)."""
    kind = BASELINE_KIND.get(estimator)
    offset = mean_integrand(vae, x, y, kl) if kind == "nn" else 0.0
    state = BaselineState(kind, x, offset=offset)

    def loss() -> torch.Tensor:
        return explicit_surrogate(vae, x, y, estimator, kl, num_samples, state)

    def warm_up() -> None:
        """The baseline only: the network learns E_q[f | x], which one sample per point also
        targets; the average keeps S slots."""
        with torch.no_grad():
            explicit_surrogate(vae, x, y, estimator, kl, num_samples if kind == "avg" else 1,
                               state)

    steps = {"nn": warmup, "avg": min(warmup, AVG_WARMUP)}.get(kind or "", 0)
    return _Setup(loss, warm_up, steps, num_samples)


def sample_gradients(setup: _Setup, groups: dict[str, list[torch.Tensor]], repeats: int,
                     device: torch.device | None = None
                     ) -> tuple[dict[str, GradientMoments], float, float]:
    """R estimates (after the warm-up): their moments per group, and the seconds per estimate
    with its standard error."""
    cuda = device is not None and device.type == "cuda"
    with pyro.validation_enabled(False), job(  # argument checks cost more than the nets
            "gradient estimates", setup.warmup_steps + repeats, "gradient estimate",
            "lower --repeats (or --warmup)") as work:
        for _ in range(setup.warmup_steps):
            setup.warm_up()
            work.advance()
        moments: dict[str, GradientMoments] = {}
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = setup.loss()
            if setup.optim is None:
                grads = flat_gradients(-loss, groups)
            else:
                grads = ascent_and_baseline_step(loss, groups, setup.learned, setup.optim)
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            for g, v in grads.items():
                moments.setdefault(g, GradientMoments()).add(v)
            work.advance()
    t = torch.tensor(times, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(times))) if len(times) > 1 else float("nan")
    return moments, float(t.mean()), se


def measure_estimator(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    estimator: str,
    kl: str = "mc",
    num_samples: int = 1,
    repeats: int = 100,
    implementation: str | None = None,
    warmup: int = 500,
    guide: Any = None,
) -> EstimatorResult:
    """R gradient estimates of ``estimator`` at the current parameters; their statistics.

    :param vae: the model's owner: the library's models, or any object with ``.model`` and
        ``.guide`` (:class:`~pyro_vae.infer.trainer.ModelGuide` for a user's functions).
    :param estimator: one of :data:`LAB_ESTIMATORS` (module docstring).
    :param num_samples: S samples per point (pairs for ARM/DisARM, K for RLOO, 1 for
        REBAR/RELAX).
    :param implementation: ``None`` (default: explicit for the library's diagonal-Gaussian
        VAE, pyro otherwise), ``"explicit"`` or ``"pyro"``.
    :param guide: a guide to measure instead of ``vae.guide``; its parameters are the
        "encoder" group.
    """
    check_lab_estimator(estimator, kl)
    check_count("num_samples", num_samples)
    check_count_repeats(repeats, 2)
    y = lab_labels(vae, y)
    problem = lab_problem(vae, x, y, guide)
    check_applies(problem, estimator, num_samples)
    implementation = resolve_implementation(vae, guide, estimator, implementation, problem)
    groups = problem_parameter_groups(problem)
    with eval_mode(*lab_modules(vae, guide)):
        if implementation == "explicit":
            setup = explicit_setup(vae, x, y, estimator, kl, num_samples, warmup)
        else:
            setup = pyro_setup(problem, x, y, estimator, kl, num_samples, warmup)
        try:
            moments, seconds, seconds_se = sample_gradients(setup, groups, repeats, x.device)
        finally:
            setup.cleanup()
    means_vars = {g: m.mean_and_variance() for g, m in moments.items()}
    return EstimatorResult(
        estimator, kl, implementation, num_samples, repeats, seconds,
        {g: GroupStats.of_moments(m) for g, m in moments.items()},
        {g: mv[0] for g, mv in means_vars.items()},
        {g: (mv[1] / repeats).sqrt() for g, mv in means_vars.items()},
        setup.evaluations, seconds_se, problem.latent_names,
    )


def check_count_repeats(repeats: Any, least: int) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < least:
        raise ConfigError(f"--repeats must be an integer ≥ {least} to estimate a variance, got "
                          f"{repeats!r}; e.g. 100")
    return repeats


def default_estimators(problem: Problem) -> tuple[str, ...]:
    """The estimators that apply to the problem: the continuous family for reparameterized
    latents; the score family, the binary estimators and RLOO / REINFORCE otherwise."""
    if problem.reparameterized:
        return ("reparam", "score", "score-avg", "score-nn", "stl")
    if any(_is_bernoulli(s) for s in problem.latents) and all(
            _is_bernoulli(s) or s.has_rsample for s in problem.latents):
        return ("reinforce", "rloo", "arm", "disarm", "rebar", "relax", "gumbel-softmax")
    return ("score", "score-avg", "score-nn", "reinforce", "rloo")


def run_lab(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    estimators: tuple[str, ...] | None = ("reparam", "score", "score-avg", "score-nn", "stl"),
    kls: tuple[str, ...] = KL_MODES,
    samples: tuple[int, ...] = (1, 4, 16),
    repeats: int = 100,
    implementation: str | None = None,
    seed: int = 0,
    warmup: int = 500,
    guide: Any = None,
) -> list[EstimatorResult]:
    """Every (estimator, KL mode, S) combination that exists; ``estimators=None``: those that
    apply to the model (:func:`default_estimators`). Combinations without a form are skipped:
    the score family with an analytic KL through Pyro, binary estimators with an analytic KL
    (but ``gumbel-softmax``), RLOO with S < 2, REBAR/RELAX with S > 1."""
    if estimators is None:
        estimators = default_estimators(lab_problem(vae, x, y, guide))
    for estimator in estimators:
        check_lab_estimator(estimator, "mc")
    settings = []
    for estimator in estimators:
        for kl in kls:
            impl = resolve_implementation(vae, guide, estimator, implementation)
            if kl == "analytic" and ((impl == "pyro" and estimator in SCORE_FAMILY) or (
                    estimator in BINARY_ESTIMATORS and estimator != "gumbel-softmax")):
                continue
            settings += [(estimator, kl, s) for s in samples
                         if not ((estimator == "rloo" and s < 2)
                                 or (estimator in ("rebar", "relax") and s != 1))]
    results = []
    with job("variance lab", len(settings), "setting",
             "lower --repeats or measure fewer estimators, KL modes or sample sizes",
             units_are_jobs=True) as work:
        for estimator, kl, s in settings:
            pyro.set_rng_seed(seed)
            results.append(measure_estimator(vae, x, y, estimator, kl, s, repeats,
                                             implementation, warmup, guide))
            work.advance()
    return results


# --------------------------------------------------------------------------- reporting
def markdown_table(results: list[EstimatorResult], reference: str = "reparam") -> str:
    """One row per (estimator, KL, S, group) with the variance ratio to ``reference`` at the
    same KL mode and S (the first estimator of ``results`` where ``reference`` was not
    measured), the cost per gradient, and the variance at equal cost (× evaluations and
    × seconds), each ± its standard error."""
    if results and not any(r.estimator == reference for r in results):
        reference = results[0].estimator
    ref = {(r.kl, r.num_samples): r for r in results if r.estimator == reference}
    rows = []
    for r in results:
        for g, st in r.groups.items():
            base = ref.get((r.kl, r.num_samples))
            ratio = st.total_variance / base.groups[g].total_variance if base and \
                g in base.groups and base.groups[g].total_variance > 0 else float("nan")
            rows.append([r.estimator, r.kl, r.num_samples, g,
                         reporting.pm(st.total_variance, st.total_variance_se),
                         f"{ratio:.3g}", reporting.pm(st.snr_mean, st.snr_mean_se),
                         r.evaluations,
                         reporting.pm(r.seconds * 1e3, r.seconds_se * 1e3, " ms"),
                         reporting.pm(r.evaluation_variance(g), r.evaluation_variance_se(g)),
                         reporting.pm(r.work_variance(g), r.work_variance_se(g))])
    return reporting.markdown_table(
        ["estimator", "KL", "S", "group", "total variance ± se", f"ratio to {reference}",
         "SNR (mean) ± se", "evals / estimate", "time / estimate ± se",
         "variance × evals ± se", "variance × seconds ± se"], rows, align="llrlrrrrrrr")


def plot_lab(results: list[EstimatorResult], out: Path) -> list[Path]:
    """variance_vs_samples.png (log-log, per group, ± 1.96 se) and snr.png (per estimator and
    group)."""
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    fig = Figure(figsize=(6 * len(groups), 4.5))
    axes = fig.subplots(1, len(groups))
    axes = axes if len(groups) > 1 else [axes]
    labels = list(dict.fromkeys(r.label for r in results))
    for ax, g in zip(axes, groups, strict=True):
        for label in labels:
            rs = sorted((r for r in results if r.label == label and g in r.groups),
                        key=lambda r: r.num_samples)
            if not rs:
                continue
            se = [Z95 * r.groups[g].total_variance_se if math.isfinite(
                r.groups[g].total_variance_se) else 0.0 for r in rs]
            ax.errorbar([r.num_samples for r in rs], [r.groups[g].total_variance for r in rs],
                        yerr=se, fmt="o-" if "mc" in label else "s--", capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples S per estimate")
        ax.set_ylabel("total variance tr Cov[ĝ]")
        ax.set_title(f"{g} gradient")
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    p1 = out / "variance_vs_samples.png"
    fig.savefig(p1, dpi=110)

    s_min = min(r.num_samples for r in results)
    rows = [r for r in results if r.num_samples == s_min]
    fig = Figure(figsize=(max(6, len(rows) * 0.9), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        ax.bar([k + i * width for k in range(len(rows))],
               [r.groups[g].snr_mean if g in r.groups else 0.0 for r in rows], width, label=g)
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(rows))])
    ax.set_xticklabels([r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("mean |E[g]| / sd[g] per parameter")
    ax.set_title(f"signal-to-noise ratio, S = {s_min}")
    ax.legend()
    fig.tight_layout()
    p2 = out / "snr.png"
    fig.savefig(p2, dpi=110)
    return [p1, p2]


def write_report(results: list[EstimatorResult], out: str | Path, meta: dict | None = None
                 ) -> list[Path]:
    """``variance.md``, ``variance.json`` and the two figures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "variance.md"
    md.write_text(markdown_table(results))
    js = out / "variance.json"
    js.write_text(json.dumps({"meta": meta or {}, "results": [r.to_dict() for r in results]},
                             indent=2) + "\n")
    return [md, js, *plot_lab(results, out)]
