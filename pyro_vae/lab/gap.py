"""The inference gaps of an amortized guide, per data point (Cremer, Li & Duvenaud 2018), for
any model and guide whose continuous local latents lie in a data plate
(:mod:`pyro_vae.infer.problem`).

**The decomposition**::

    log p(x) - L[q] = (log p(x) - L[q*])  +  (L[q*] - L[q])
                      approximation gap      amortization gap

with L[q] the amortized guide's ELBO and L[q*] the ELBO of q*, the best member of a family for
that point, found by :func:`~pyro_vae.infer.vem.fit_local` (per-point optimization with a
learning-rate decay and a stopping rule, θ frozen). The family fitted for every guide is the
factorized Gaussian q*_FFG over the unconstrained vector of all the point's latents; a library
VAE's richer family (full covariance, IAF, planar), or one passed as ``family=``, is fitted
too, so that one report shows both "is the family too poor?" and "is the encoder too poor?".

**No clamps.** Each row is what was measured: L[q*_FFG] is the FFG fit's ELBO, the amortization
gap is L[q*] − L[q] and can read negative within Monte Carlo noise (or where the fit failed to
reach the encoder's q: then it says so). The ELBOs are Monte Carlo estimates on fresh draws
(``eval_samples`` per point), with standard errors.

**log p̂(x)** comes from stochastic lower bounds of log p(x): IWAE with the amortized q as
proposal, IWAE with q* (and q*_FFG) as proposal, and AIS
(:func:`~pyro_vae.infer.ais.ais_log_likelihood`, when ``ais_steps`` > 0). A poor proposal drags
its estimate far below the truth, so the report picks, per point, the estimate with the highest
value − 2 standard errors — but picking on the same draws that are reported would favour lucky
heavy-tailed draws (up to +1.35 nats above the exact log p(x) with a poor encoder). Every
estimator is therefore run on two independent halves of its draws (chains): the choice is made
on the first half and the value reported from the second, which is independent of the choice,
so the reported log p̂(x) is a lower bound of log p(x) in expectation. The report says which
estimator was chosen how often. A point whose L[q*] still exceeds log p̂(x) is counted and
flagged.

Semi-amortized refinement (Kim et al. 2018) is the curve of the mean ELBO along the first
``refine_steps`` steps of the fit from the encoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae.distributions.guides import GuideFamily, draw
from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.evaluation import LogMeanExp, iwae_log_likelihood, problem_of
from pyro_vae.infer.problem import describe, program_of
from pyro_vae.infer.vem import (
    CHECK_SAMPLES,
    LocalFit,
    _chunk,
    _modules,
    chunked_local_elbo,
    fit_local,
    fixed_draws,
    labels,
    model_problem,
    real_dtype,
)
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.resources import CHUNK_ELEMENTS

#: log p̂(x) takes, per point, the estimate with the highest value − CONFIDENCE · standard error
CONFIDENCE = 2.0
#: the estimates log p̂(x) is the best of, in the order the table lists them
ESTIMATE_LABELS = {"iwae_q": "IWAE, amortized q as proposal",
                   "iwae_q_star": "IWAE, q* as proposal",
                   "iwae_q_star_ffg": "IWAE, q*_FFG as proposal",
                   "ais": "AIS from the prior"}


@dataclass
class GapReport:
    """Per point: log p̂(x) (the best available estimate, see the module docstring), the ELBOs
    of q, q* (the guide's family) and q*_FFG, and every estimate of log p(x) that was run."""

    family: str
    log_px: torch.Tensor
    elbo_q: torch.Tensor
    elbo_q_star: torch.Tensor
    elbo_q_star_ffg: torch.Tensor
    estimates: dict[str, torch.Tensor]
    refinement_curve: list[float]
    seconds: dict[str, float]
    stderrs: dict[str, torch.Tensor] = field(default_factory=dict)
    chosen: dict[str, int] = field(default_factory=dict)
    fit_steps: dict[str, int] = field(default_factory=dict)
    #: whether q*_FFG was also fitted from the prior (``amortization_gap``'s ``prior_start``)
    prior_start: bool = False
    #: L[q_SA] per point: the guide refined by ``semi_amortized_steps`` SVI steps (or None)
    elbo_q_sa: torch.Tensor | None = None
    semi_amortized_steps: int = 0

    @property
    def flagged(self) -> torch.Tensor:
        """Points whose L[q*] exceeds log p̂(x): impossible for the truth, so their log p̂(x) is
        too low (more importance samples or AIS steps are needed there)."""
        return self.elbo_q_star > self.log_px

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_px - self.elbo_q_star

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.elbo_q_star - self.elbo_q

    def summary(self) -> dict[str, Any]:
        def stat(t: torch.Tensor) -> dict[str, float]:
            t = t.double()
            return {"mean": float(t.mean()),
                    "stderr": float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else 0.0}

        return {
            "num_points": int(self.log_px.numel()),
            "family": self.family,
            "log_px": stat(self.log_px),
            "estimates": {k: stat(v) for k, v in self.estimates.items()},
            "estimate_stderr_mean": {k: float(v.mean()) for k, v in self.stderrs.items()
                                     if k in self.estimates},
            "estimate_chosen_points": self.chosen,
            "elbo_q_star": stat(self.elbo_q_star),
            "elbo_q_star_ffg": stat(self.elbo_q_star_ffg),
            "elbo_q": stat(self.elbo_q),
            "approximation_gap": stat(self.approximation_gap),
            "amortization_gap": stat(self.amortization_gap),
            "approximation_gap_ffg": stat(self.log_px - self.elbo_q_star_ffg),
            "fraction_q_star_above_q": float((self.elbo_q_star >= self.elbo_q).float().mean()),
            "mc_stderr_mean": {k: float(self.stderrs[k].mean()) for k in
                               ("elbo_q", "elbo_q_star", "log_px") if k in self.stderrs},
            "points_with_elbo_above_log_px": int(self.flagged.sum()),
            **({} if self.elbo_q_sa is None else {
                "elbo_q_sa": stat(self.elbo_q_sa),
                "semi_amortized_steps": self.semi_amortized_steps,
                "semi_amortized_gain": stat(self.elbo_q_sa - self.elbo_q),
                "semi_amortized_fraction_closed": float(
                    (self.elbo_q_sa - self.elbo_q).double().mean()
                    / (self.elbo_q_star - self.elbo_q).double().mean())}),
            "refinement_curve": self.refinement_curve,
            "fit_steps": self.fit_steps,
            "prior_start": self.prior_start,
            "seconds": self.seconds,
        }


def amortization_gap(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None = None, iw_samples: int = 5000,
    eval_samples: int = 1000, refine_steps: int = 50, seed: int = 0, guide: Any = None,
    ais_steps: int = 0, ais_chains: int = 16, ais_leapfrog_steps: int = 2,
    prior_start: bool | None = None, family: GuideFamily | None = None,
    semi_amortized: int | Any = 0, **fit_kwargs: Any,
) -> GapReport:
    """The gap report of the amortized guide (``guide``, default ``vae.guide``: any guide of
    any model with its local latents inside a data plate) on the points ``x``.

    * **L[q]**: the amortized guide's ELBO per point, the mean of ``eval_samples`` log-weights
      over every latent site (:meth:`~pyro_vae.infer.problem.Problem.log_weights`), with its
      Monte Carlo standard error.
    * **L[q*_FFG]**: the best factorized Gaussian over the unconstrained vector of all the
      point's latents (:func:`~pyro_vae.infer.vem.fit_local`, started from the guide's moments,
      and from the prior where the probe says so), scored on ``eval_samples`` fresh draws.
    * **L[q*]**: the best member of the guide's own family where that family can be fitted per
      point — ``family`` (default: a library VAE's non-diagonal family) — else q*_FFG, and the
      report's family reads ``"ffg"``.
    * **log p̂(x)**: see the module docstring: per point, the estimator chosen on one half of
      each estimator's draws (or chains) is reported from the *other*, independent half, so the
      report is a stochastic lower bound of log p(x) in expectation.

    No number is clamped: a point whose amortized guide beats the fitted q* reads a negative
    amortization gap, and a point whose L[q*] exceeds log p̂(x) is counted as flagged.

    :param ais_steps: intermediate distributions of AIS from the prior (0: no AIS), with
        ``ais_chains`` chains (two independent halves) and ``ais_leapfrog_steps`` leapfrog
        steps per HMC transition.
    :param prior_start: also fit q*_FFG from the prior (μ = 0, σ = 1) and keep, per point, the
        better of the two starts; ``None`` (default) decides by a probe
        (:func:`_prior_start_needed`).
    :param semi_amortized: a row between L[q] and L[q*]: **L[q_SA]**, the ELBO of the guide's
        output refined per point by SVI steps
        (:class:`~pyro_vae.infer.semi_amortized.SemiAmortizedGuide`, each point's gradient
        clipped at :data:`~pyro_vae.infer.semi_amortized.CLIP_NORM`), scored on
        ``eval_samples`` draws, and the fraction (L[q_SA] − L[q]) / (L[q*] − L[q]) of the
        amortization gap it closes (mean over points of the two differences). An integer K
        wraps ``guide`` with K steps; a ``SemiAmortizedGuide`` (a model trained as SA-VAE) is
        used as it is, its inner amortized guide then being the report's q.
    :param fit_kwargs: passed to every :func:`~pyro_vae.infer.vem.fit_local`.
    """
    for name, value in (("iw_samples", iw_samples), ("eval_samples", eval_samples),
                        ("ais_chains", ais_chains), ("ais_leapfrog_steps", ais_leapfrog_steps)):
        check_count(name, value)
    check_count("refine_steps", refine_steps, least=0)
    check_count("ais_steps", ais_steps, least=0)
    if iw_samples < 2:
        raise ConfigError("--iw-samples must be ≥ 2: log p̂(x) is chosen on one half of the draws "
                          "and reported from the other; e.g. 1000")
    yy = labels(vae, y)
    from pyro_vae.infer.semi_amortized import CLIP_NORM, SemiAmortizedGuide

    sa = semi_amortized if isinstance(semi_amortized, SemiAmortizedGuide) else None
    if sa is None and isinstance(guide, SemiAmortizedGuide):
        sa = guide
    if sa is not None:
        guide = sa.guide  # q is the amortized guide inside
    elif isinstance(semi_amortized, bool) or not isinstance(semi_amortized, int) \
            or semi_amortized < 0:
        raise ConfigError(f"semi_amortized must be a number of refinement steps ≥ 0 or a "
                          f"SemiAmortizedGuide, got {semi_amortized!r}; e.g. 20")
    model, guide = program_of(vae, guide)
    if sa is None and semi_amortized:
        # clipped as Kim et al. clip: the report runs on models whose curvature no step size
        # was chosen for
        sa = SemiAmortizedGuide(model, guide, steps=semi_amortized,
                                max_grad_norm=CLIP_NORM)
    problem = describe(model, guide, x[:min(x.shape[0], 64)], None if yy is None else
                       yy[:min(x.shape[0], 64)])
    problem.require_continuous("the gap report")
    if family is None and isinstance(vae, VAE) and guide == vae.guide \
            and not vae.family.is_diagonal:
        family = vae.family
    own = None if family is None or family.is_diagonal else family
    family_name = own.kind if own is not None else "ffg"
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ffg = fit_local(vae, x, yy, init="encoder", seed=seed, guide=guide, **fit_kwargs)
    prior_start = _prior_start_needed(vae, x, yy, ffg, prior_start, seed, fit_kwargs)
    if prior_start:
        ffg = better_of(ffg, fit_local(vae, x, yy, init="zero", seed=seed, **fit_kwargs))
    q_star = ffg if own is None else fit_local(vae, x, yy, init="encoder", seed=seed,
                                               family=own, **fit_kwargs)
    seconds["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    curve = fit_local(vae, x, yy, init="encoder", seed=seed, max_steps=refine_steps,
                      check_every=refine_steps, patience=1, record_steps=refine_steps,
                      guide=guide if own is None else None, family=own,
                      check_samples=REFINE_SAMPLES).curve if refine_steps else []
    seconds["refine"] = time.perf_counter() - t
    # fresh draws, independent of every fit's check draws
    eps = fixed_draws(problem, x, seed + 1, eval_samples)
    t = time.perf_counter()
    with evaluating(*_modules(vae, guide)):
        e_q, e_q_se = _guide_elbo(vae, guide, x, yy, eval_samples)
        e_star, e_star_se = chunked_local_elbo(vae, x, yy, own, q_star.params, eps,
                                               return_stderr=True)
        e_ffg = e_star if own is None else chunked_local_elbo(vae, x, yy, None, ffg.params, eps)
    seconds["elbo"] = time.perf_counter() - t
    e_sa = e_sa_se = None
    if sa is not None:
        t = time.perf_counter()
        with evaluating(*_modules(vae, guide)):
            e_sa, e_sa_se = _guide_elbo(vae, sa, x, yy, eval_samples)
        seconds["semi_amortized"] = time.perf_counter() - t
    t = time.perf_counter()
    halves = {"iwae_q": _guide_iwae_halves(vae, guide, x, yy, iw_samples),
              "iwae_q_star": fit_iwae_halves(vae, x, yy, q_star, iw_samples, seed)}
    if own is not None:
        halves["iwae_q_star_ffg"] = fit_iwae_halves(vae, x, yy, ffg, iw_samples, seed + 3)
    seconds["iwae"] = time.perf_counter() - t
    if ais_steps > 0:
        from pyro_vae.infer.ais import ais_log_likelihood

        if ais_chains < 2:
            raise ConfigError("--ais-chains must be ≥ 2 for the gap report (two independent "
                              "halves); e.g. 16")
        t = time.perf_counter()
        runs = [ais_log_likelihood(vae, x, yy, num_steps=ais_steps, num_chains=ais_chains // 2,
                                   leapfrog_steps=ais_leapfrog_steps) for _ in range(2)]
        halves["ais"] = tuple((r.log_px, r.stderr) for r in runs)
        seconds["ais"] = time.perf_counter() - t
    pilot_v = torch.stack([h[0][0] for h in halves.values()])
    pilot_e = torch.stack([torch.nan_to_num(h[0][1], nan=math.inf) for h in halves.values()])
    choice = (pilot_v - CONFIDENCE * pilot_e).argmax(0)
    final_v = torch.stack([h[1][0] for h in halves.values()])
    final_e = torch.stack([h[1][1] for h in halves.values()])
    log_px = final_v.gather(0, choice.unsqueeze(0)).squeeze(0)
    log_px_se = final_e.gather(0, choice.unsqueeze(0)).squeeze(0)
    chosen = {name: int((choice == i).sum()) for i, name in enumerate(halves)}
    steps = {"q_star": q_star.steps, "q_star_ffg": ffg.steps}
    estimates = {k: h[1][0] for k, h in halves.items()}
    stderrs = {k: h[1][1] for k, h in halves.items()}
    stderrs["log_px"] = log_px_se
    stderrs["elbo_q"] = e_q_se
    stderrs["elbo_q_star"] = e_star_se
    if e_sa_se is not None:
        stderrs["elbo_q_sa"] = e_sa_se
    return GapReport(family_name, log_px, e_q, e_star, e_ffg, estimates, curve, seconds,
                     stderrs, chosen, steps, prior_start, e_sa,
                     sa.steps if sa is not None else 0)


#: fixed draws per point of the refinement curve's ELBOs (one per step: the curve is a mean over
#: all points, whose noise these few draws per point keep far below a step's gain)
REFINE_SAMPLES = 32
#: points the prior-start probe fits (:func:`amortization_gap`, ``prior_start=None``)
PROBE_POINTS = 64
#: nats by which the prior start must beat the encoder start on a probe point to be run for all
PROBE_MARGIN = 0.1


def _guide_elbo(vae: Any, guide: Any, x: torch.Tensor, y: torch.Tensor | None,
                num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L[q] per point as the mean of ``num_samples`` log-weights, and its standard error."""
    size = _chunk(vae, num_samples)
    means, errors = [], []
    for i in range(0, x.shape[0], size):
        xb, yb = x[i:i + size], None if y is None else y[i:i + size]
        problem = problem_of(vae, xb, yb, guide)
        total = torch.zeros(xb.shape[0], dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        done = 0
        chunk = max(1, min(num_samples, CHUNK_ELEMENTS // max(1, xb.shape[0] * 1024)))
        while done < num_samples:
            k = min(chunk, num_samples - done)
            lw = problem.log_weights(xb, yb, k).double()
            total += lw.sum(0)
            total_sq += (lw * lw).sum(0)
            done += k
        mean = total / num_samples
        var = (total_sq / num_samples - mean * mean) * num_samples / max(1, num_samples - 1)
        means.append(mean.float())
        errors.append((var.clamp_min(0) / num_samples).sqrt().float())
    return torch.cat(means), torch.cat(errors)


Halves = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _guide_iwae_halves(vae: Any, guide: Any, x: torch.Tensor, y: torch.Tensor | None,
                       num_samples: int) -> Halves:
    """Two independent IWAE estimates (value, standard error) per point with the amortized
    guide as proposal, ``num_samples // 2`` draws each."""
    half = max(1, num_samples // 2)
    return tuple(iwae_log_likelihood(vae, x, y, num_samples=half, guide=guide,
                                     return_stderr=True) for _ in range(2))


def _prior_start_needed(vae: Any, x: torch.Tensor, y: torch.Tensor | None, from_encoder: LocalFit,
                        prior_start: bool | None, seed: int, fit_kwargs: dict[str, Any]) -> bool:
    """``prior_start`` if given, else a probe: the prior start is fitted on
    :data:`PROBE_POINTS` points and run for all only if it beats the encoder start by more than
    :data:`PROBE_MARGIN` nats on one of them — a sign that the encoder leaves some points in a
    poorer basin. (On 300 Fashion-MNIST points of the trained 784-400-20 model it never beat
    the encoder start by more than 0.012 nats and took 1.8× its time.)"""
    if prior_start is not None:
        return bool(prior_start)
    gen = torch.Generator().manual_seed(seed + 2)
    probe = torch.randperm(x.shape[0], generator=gen)[:PROBE_POINTS].to(x.device)
    yp = None if y is None else y[probe]
    fit = fit_local(vae, x[probe], yp, init="zero", seed=seed, **fit_kwargs)
    # scored on the draws the probe's fit was checked on (same seed, same shape)
    problem = model_problem(vae, x[probe], yp)
    draws = fixed_draws(problem, x[probe], seed, fit_kwargs.get("check_samples", CHECK_SAMPLES))
    encoder = chunked_local_elbo(vae, x[probe], yp, None,
                                 {k: v[probe] for k, v in from_encoder.params.items()}, draws,
                                 problem)
    return bool((fit.elbo - encoder > PROBE_MARGIN).any())


def better_of(a: LocalFit, b: LocalFit) -> LocalFit:
    """Per point, the parameters of whichever of two fits of one family scored higher on their
    common check draws (both fits use the same seed, so the same draws)."""
    pick = a.elbo >= b.elbo
    params = {k: torch.where(pick.view(-1, *[1] * (v.dim() - 1)), v, b.params[k])
              for k, v in a.params.items()}
    return LocalFit(params, torch.where(pick, a.elbo, b.elbo), a.start_elbo, a.curve,
                    a.steps + b.steps, a.family)


def fit_iwae(vae: Any, x: torch.Tensor, y: torch.Tensor | None, fit: LocalFit,
             num_samples: int = 5000, seed: int = 0, max_elements: int = 2**23
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The IWAE bound per point with the fitted per-point q* of ``fit`` as proposal (over the
    unconstrained vector of all local latents), and its standard error, in chunks of draws."""
    problem = model_problem(vae, x, y)
    chunk = max(1, min(num_samples, max_elements // max(1, x.shape[0] * 1024)))
    q = fit.posterior()
    gen = torch.Generator().manual_seed(seed + 2)
    running = LogMeanExp(x.shape[0], x.device)
    with evaluating(*_modules(vae, None)), torch.no_grad():
        while running.count < num_samples:
            k = min(chunk, num_samples - running.count)
            eps = torch.randn(k, x.shape[0], problem.dim, generator=gen,
                              dtype=real_dtype(x)).to(x.device)
            u, log_q = draw(q, eps)
            running.add(problem.log_joint(x, y, u) - log_q)
    return running.result()


def fit_iwae_halves(vae: Any, x: torch.Tensor, y: torch.Tensor | None, fit: LocalFit,
                    num_samples: int, seed: int) -> Halves:
    """:func:`fit_iwae` twice on independent draws, ``num_samples // 2`` each."""
    half = max(1, num_samples // 2)
    return (fit_iwae(vae, x, y, fit, half, seed), fit_iwae(vae, x, y, fit, half, seed + 7919))


def gap_table(summary: dict[str, Any]) -> str:
    """Markdown table of a :meth:`GapReport.summary`."""
    family = summary["family"]
    rows = [("log p̂(x) (best estimate per point)", summary["log_px"])]
    rows += [(f"  {ESTIMATE_LABELS[k]}", v) for k, v in summary["estimates"].items()]
    best = "factorized Gaussian (FFG) over all latents" if family == "ffg" else family
    rows += [(f"L[q*] (best {best} q per point)", summary["elbo_q_star"])]
    if family not in ("diag", "ffg"):
        rows += [("L[q*_FFG] (best factorized Gaussian per point)", summary["elbo_q_star_ffg"])]
    if "elbo_q_sa" in summary:
        rows += [(f"L[q_SA] (q refined by {summary['semi_amortized_steps']} SVI steps per "
                  "point)", summary["elbo_q_sa"])]
    rows += [("L[q] (the amortized guide)" if family == "ffg" else
              f"L[q] (amortized {family} guide)", summary["elbo_q"]),
             ("approximation gap log p(x) − L[q*]", summary["approximation_gap"]),
             ("amortization gap L[q*] − L[q]", summary["amortization_gap"])]
    lines = [f"{summary['num_points']} points; nats per point (± standard error)", "",
             "| quantity | value |", "| --- | ---: |"]
    lines += [f"| {label} | {v['mean']:.3f} ± {v['stderr']:.3f} |" for label, v in rows]
    chosen = summary.get("estimate_chosen_points") or {}
    if chosen:
        errors = summary["estimate_stderr_mean"]
        used = "; ".join(f"{ESTIMATE_LABELS[k]} at {n} point(s) (mean se {errors[k]:.3f})"
                         for k, n in chosen.items() if n)
        lines += ["", "log p̂(x) per point is the estimate with the highest value − 2 standard "
                  "errors on one half of its draws, reported from the other, independent half: "
                  + used + "."]
    if "elbo_q_sa" in summary:
        lines += ["", f"Semi-amortized inference closes "
                  f"{summary['semi_amortized_fraction_closed']:.1%} of the amortization gap "
                  f"(L[q_SA] − L[q] = {summary['semi_amortized_gain']['mean']:.3f} ± "
                  f"{summary['semi_amortized_gain']['stderr']:.3f} nats)."]
    flagged = summary.get("points_with_elbo_above_log_px", 0)
    if flagged:
        lines += ["", f"{flagged} point(s) have L[q*] above log p̂(x), which the truth cannot "
                  "have: their log p̂(x) is too low (raise --iw-samples or --ais-steps), and "
                  "their approximation gap reads negative."]
    curve = summary["refinement_curve"]
    if len(curve) > 1:
        lines += ["", f"Semi-amortized refinement from the encoder: {curve[0]:.3f} → "
                  f"{curve[-1]:.3f} nats after {len(curve) - 1} steps "
                  f"({(curve[-1] - curve[0]) / (len(curve) - 1):.4f} nats per step)."]
    return "\n".join(lines) + "\n"


def plot_gap(report: GapReport, path) -> None:
    """Histograms of both gaps per point, and the refinement curve."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, values, title in ((axes[0], report.approximation_gap, "approximation gap"),
                              (axes[1], report.amortization_gap, "amortization gap")):
        v = values.detach().cpu().numpy()
        ax.hist(v, bins=50)
        ax.axvline(v.mean(), color="k", ls="--", label=f"mean {v.mean():.2f}")
        ax.set_title(f"{title} per point (nats)")
        ax.legend()
    axes[2].plot(report.refinement_curve, "o-", ms=3)
    axes[2].axhline(float(report.elbo_q_star.mean()), color="k", ls="--", label="L[q*]")
    axes[2].set_xlabel("refinement steps from the encoder's output")
    axes[2].set_ylabel("mean ELBO")
    axes[2].set_title("semi-amortized inference")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
