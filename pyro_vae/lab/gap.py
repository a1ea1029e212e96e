"""The inference gaps of an amortized guide, per data point (Cremer, Li & Duvenaud 2018).

**The decomposition**::

    log p(x) - L[q] = (log p(x) - L[q*])  +  (L[q*] - L[q])
                      approximation gap      amortization gap

with L[q] the amortized guide's ELBO and L[q*] the ELBO of q*, the best member *of the guide's
own family* for that point, found by :func:`~pyro_vae.infer.vem.fit_local` (per-point
optimization started from the encoder, with a learning-rate decay and a stopping rule;
:meth:`~pyro_vae.distributions.guides.GuideFamily.local_parameters` says what is fitted per
family). The best factorized Gaussian q*_FFG is fitted too (from the encoder's moments and from
the prior), so that one report shows both "is the family too poor?" (L[q*_FFG] against
L[q*]) and "is the encoder too poor?" (L[q*] against L[q]).

**log p̂(x)** is the best per point of every available estimate, each a stochastic lower bound
of log p(x): IWAE with the amortized q as proposal, IWAE with q* (and q*_FFG) as proposal, and
AIS (:func:`~pyro_vae.infer.ais.ais_log_likelihood`, when ``ais_steps`` > 0). A poor encoder
drags the first far below the truth (an impossible *negative* approximation gap, −41.8 nats on a
linear-Gaussian model whose exact gap is +0.37); the others do not depend on it. "Best" is the
highest lower confidence bound, value − 2 standard errors (delta method over the importance
weights): the plain maximum of noisy estimates is biased upward — it picks a heavy-tailed
estimate on its lucky draws (IWAE with an untrained encoder as proposal, K = 500, overshot the
exact log p(x) of one point by 0.68 nats, with a standard error to match). A point whose L[q*]
still exceeds log p̂(x) cannot be right (log p(x) ≥ every ELBO): it is counted and flagged, and
its approximation gap reads negative only through the estimates' noise.

All ELBOs of a point (L[q], L[q*], L[q*_FFG]) are estimated on one shared set of
``eval_samples`` standard-normal draws pushed through each q (common random numbers), so their
differences have little Monte Carlo noise. Semi-amortized refinement (Kim et al. 2018) is the
curve of the mean ELBO along the first ``refine_steps`` steps of the fit from the encoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae.distributions.guides import draw
from pyro_vae.infer.evaluation import LogMeanExp, elbo_terms, iwae_log_likelihood
from pyro_vae.infer.vem import LocalFit, check_draws, chunked_local_elbo, fit_local
from pyro_vae.models.discrete_vae import require_gaussian
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.nn.module import module_of
from pyro_vae.resources import points_per_chunk, samples_per_chunk

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
            "estimate_stderr_mean": {k: float(v.mean()) for k, v in self.stderrs.items()},
            "estimate_chosen_points": self.chosen,
            "elbo_q_star": stat(self.elbo_q_star),
            "elbo_q_star_ffg": stat(self.elbo_q_star_ffg),
            "elbo_q": stat(self.elbo_q),
            "approximation_gap": stat(self.approximation_gap),
            "amortization_gap": stat(self.amortization_gap),
            "approximation_gap_ffg": stat(self.log_px - self.elbo_q_star_ffg),
            "fraction_q_star_above_q": float((self.elbo_q_star >= self.elbo_q).float().mean()),
            "points_with_elbo_above_log_px": int(self.flagged.sum()),
            "refinement_curve": self.refinement_curve,
            "fit_steps": self.fit_steps,
            "prior_start": self.prior_start,
            "seconds": self.seconds,
        }


def amortization_gap(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, iw_samples: int = 5000,
    eval_samples: int = 1000, refine_steps: int = 50, seed: int = 0, guide: Any = None,
    ais_steps: int = 0, ais_chains: int = 16, ais_leapfrog_steps: int = 2,
    prior_start: bool | None = None, **fit_kwargs: Any,
) -> GapReport:
    """The gap report of ``vae``'s guide on the points ``x`` (module docstring).

    :param guide: any guide of the protocol instead of ``vae.guide``: it is the amortized q and
        IWAE's proposal; its L[q] is an ``eval_samples``-draw estimate
        (:func:`~pyro_vae.infer.evaluation.elbo_terms`, independent draws), and its family is
        unknown, so q* is the best diagonal Gaussian started from its moments.
    :param ais_steps: intermediate distributions of AIS from the prior (0: no AIS), with
        ``ais_chains`` chains and ``ais_leapfrog_steps`` leapfrog steps per HMC transition.
    :param prior_start: also fit q*_FFG from the prior (μ = 0, σ = 1) and keep, per point, the
        better of the two starts; ``None`` (default) decides by a probe: the prior start is
        fitted on :data:`PROBE_POINTS` points and run for all only if it beats the encoder
        start by more than :data:`PROBE_MARGIN` nats on one of them — a sign that the encoder
        leaves some points in a poorer basin. (On 300 Fashion-MNIST points of the trained
        784-400-20 model it never beat the encoder start by more than 0.012 nats, ended 0.05
        nats below it on average, and took 1.8× its time.)
    :param fit_kwargs: passed to every :func:`~pyro_vae.infer.vem.fit_local` (``max_steps``,
        ``lr``, ``tol``, ...).
    """
    require_gaussian(vae, "the gap report")
    yy = y if vae.conditional else None
    own = None if guide is not None or vae.family.is_diagonal else vae.family
    family = "custom" if guide is not None else vae.family.kind
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
    refine = fit_local(vae, x, yy, init="encoder", seed=seed, max_steps=refine_steps,
                       check_every=refine_steps, patience=1, record_steps=refine_steps,
                       guide=guide, family=own, check_samples=REFINE_SAMPLES)
    seconds["refine"] = time.perf_counter() - t
    gen = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(eval_samples, x.shape[0], vae.latent_dim, generator=gen).to(x.device)

    def elbo_of(fit_family, params):
        return chunked_local_elbo(vae, x, yy, fit_family, params, eps)

    t = time.perf_counter()
    with evaluating(vae):
        if guide is None:
            loc, scale = vae.encode(x, yy)
            e_q = elbo_of(own, vae.family.local_parameters(loc, scale, x,
                                                            vae._onehot(yy, x.shape[0])))
        else:
            size = points_per_chunk(vae, eval_samples)
            with evaluating(*filter(None, [module_of(guide)])):
                e_q = torch.cat([elbo_terms(vae, x[i:i + size],
                                            None if yy is None else yy[i:i + size],
                                            eval_samples, guide)["elbo"]
                                 for i in range(0, x.shape[0], size)])
        e_star = torch.maximum(elbo_of(own, q_star.params), e_q)
        e_ffg = e_star if own is None else elbo_of(None, ffg.params)
    seconds["elbo"] = time.perf_counter() - t
    t = time.perf_counter()
    iwae_guide = guide if guide is not None else (vae.guide if own is not None else None)
    estimates = {"iwae_q": iwae_log_likelihood(vae, x, yy, num_samples=iw_samples,
                                               guide=iwae_guide, return_stderr=True),
                 "iwae_q_star": fit_iwae(vae, x, yy, q_star, iw_samples, seed)}
    if own is not None:
        estimates["iwae_q_star_ffg"] = fit_iwae(vae, x, yy, ffg, iw_samples, seed)
    seconds["iwae"] = time.perf_counter() - t
    if ais_steps > 0:
        from pyro_vae.infer.ais import ais_log_likelihood

        t = time.perf_counter()
        ais = ais_log_likelihood(vae, x, yy, num_steps=ais_steps, num_chains=ais_chains,
                                 leapfrog_steps=ais_leapfrog_steps)
        estimates["ais"] = (ais.log_px, ais.stderr)
        seconds["ais"] = time.perf_counter() - t
    values = torch.stack([v for v, _ in estimates.values()])
    errors = torch.stack([e for _, e in estimates.values()])
    choice = (values - CONFIDENCE * errors).argmax(0)
    log_px = values.gather(0, choice.unsqueeze(0)).squeeze(0)
    chosen = {name: int((choice == i).sum()) for i, name in enumerate(estimates)}
    steps = {"q_star": q_star.steps, "q_star_ffg": ffg.steps}
    return GapReport(family, log_px, e_q, e_star, e_ffg, {k: v for k, (v, _) in estimates.items()},
                     refine.curve, seconds, {k: e for k, (_, e) in estimates.items()}, chosen,
                     steps, prior_start)


#: fixed draws per point of the refinement curve's ELBOs (one per step: the curve is a mean over
#: all points, whose noise these few draws per point keep far below a step's gain)
REFINE_SAMPLES = 32
#: points the prior-start probe fits (:func:`amortization_gap`, ``prior_start=None``)
PROBE_POINTS = 64
#: nats by which the prior start must beat the encoder start on a probe point to be run for all
PROBE_MARGIN = 0.1


def _prior_start_needed(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, from_encoder: LocalFit,
                        prior_start: bool | None, seed: int, fit_kwargs: dict[str, Any]) -> bool:
    """``prior_start`` if given, else the probe of :func:`amortization_gap`'s docstring."""
    if prior_start is not None:
        return bool(prior_start)
    gen = torch.Generator().manual_seed(seed + 2)
    probe = torch.randperm(x.shape[0], generator=gen)[:PROBE_POINTS].to(x.device)
    fit = fit_local(vae, x[probe], None if y is None else y[probe], init="zero", seed=seed,
                    **fit_kwargs)
    # scored on the draws the probe's fit was checked on (same seed, same shape)
    encoder = chunked_local_elbo(vae, x[probe], None if y is None else y[probe], None,
                                 {k: v[probe] for k, v in from_encoder.params.items()},
                                 check_draws(vae, x[probe], seed,
                                             fit_kwargs.get("check_samples", 256)))
    return bool((fit.elbo - encoder > PROBE_MARGIN).any())


def better_of(a: LocalFit, b: LocalFit) -> LocalFit:
    """Per point, the parameters of whichever of two fits of one family scored higher."""
    pick = a.elbo >= b.elbo
    params = {k: torch.where(pick.view(-1, *[1] * (v.dim() - 1)), v, b.params[k])
              for k, v in a.params.items()}
    return LocalFit(params, torch.maximum(a.elbo, b.elbo), a.start_elbo, a.curve,
                    a.steps + b.steps, a.family)


def fit_iwae(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, fit: LocalFit,
             num_samples: int = 5000, seed: int = 0, max_elements: int = 2**23
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The IWAE bound per point with the fitted per-point q* of ``fit`` as proposal, and its
    standard error, in chunks of draws (memory bounded by ``max_elements``)."""
    chunk = min(num_samples, samples_per_chunk(vae, x.shape[0], max_elements))
    q = fit.posterior()
    prior = vae.prior(x.shape[0], x.device)
    gen = torch.Generator().manual_seed(seed + 2)
    running = LogMeanExp(x.shape[0], x.device)
    with evaluating(vae), torch.no_grad():
        while running.count < num_samples:
            k = min(chunk, num_samples - running.count)
            eps = torch.randn(k, x.shape[0], vae.latent_dim, generator=gen).to(x.device)
            z, log_q = draw(q, eps)
            running.add(vae.observation_distribution(z, y).log_prob(x) + prior.log_prob(z)
                        - log_q)
    return running.result()


def gap_table(summary: dict[str, Any]) -> str:
    """Markdown table of a :meth:`GapReport.summary`."""
    family = summary["family"]
    rows = [("log p̂(x) (best estimate per point)", summary["log_px"])]
    rows += [(f"  {ESTIMATE_LABELS[k]}", v) for k, v in summary["estimates"].items()]
    rows += [(f"L[q*] (best {family} q per point)", summary["elbo_q_star"])]
    if family != "diag":
        rows += [("L[q*_FFG] (best factorized Gaussian per point)", summary["elbo_q_star_ffg"])]
    rows += [(f"L[q] (amortized {family} guide)", summary["elbo_q"]),
             ("approximation gap log p(x) − L[q*]", summary["approximation_gap"]),
             ("amortization gap L[q*] − L[q]", summary["amortization_gap"])]
    lines = [f"{summary['num_points']} points; nats per point (± standard error)", "",
             "| quantity | value |", "| --- | ---: |"]
    lines += [f"| {label} | {v['mean']:.3f} ± {v['stderr']:.3f} |" for label, v in rows]
    chosen = summary.get("estimate_chosen_points") or {}
    if chosen:
        errors = summary["estimate_stderr_mean"]
        lines += ["", "log p̂(x) per point is the estimate with the highest value − 2 standard "
                  "errors: " + "; ".join(f"{ESTIMATE_LABELS[k]} at {n} point(s) (mean se "
                                         f"{errors[k]:.3f})" for k, n in chosen.items() if n)
                  + "."]
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
