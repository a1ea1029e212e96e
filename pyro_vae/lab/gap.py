"""The amortization gap of an amortized guide, per data point.

log p̂(x) is the better per point of two IWAE estimates — with the amortized q as proposal, and
with the best per-point Gaussian q* as proposal — so that a poor encoder does not drag it below
L[q*] (which would show an impossible negative approximation gap); points where L[q*] still
exceeds it are counted and reported.

**The amortization gap** (:func:`amortization_gap`, Cremer, Li & Duvenaud 2018)::

    log p(x) - L[q] = (log p(x) - L[q*])  +  (L[q*] - L[q])
                      approximation gap      amortization gap

with log p(x) the IWAE estimate, L[q] the encoder's ELBO and L[q*] the ELBO of the best
Gaussian found by :func:`fit_local`. Semi-amortized refinement (Kim et al. 2018) is the
curve of the ELBO along the first k steps from the encoder's output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.infer.evaluation import elbo_terms, iwae_log_likelihood
from pyro_vae.infer.vem import fit_local, gaussian_elbo
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.nn.module import module_of


@dataclass
class GapReport:
    """Per point: log p̂(x) (the best available estimate), the ELBOs of q* and q, and the
    estimates log p̂(x) is the best of (IWAE with the amortized guide, IWAE with q*)."""

    log_px: torch.Tensor
    elbo_q_star: torch.Tensor
    elbo_q_star_from_encoder: torch.Tensor
    elbo_q_star_from_zero: torch.Tensor
    elbo_q: torch.Tensor
    refinement_curve: list[float]
    seconds: dict[str, float]
    log_px_guide: torch.Tensor | None = None
    log_px_q_star: torch.Tensor | None = None

    @property
    def flagged(self) -> torch.Tensor:
        """Points whose L[q*] exceeds log p̂(x): impossible for the truth, so their log p̂(x) is
        too low (more importance samples, or AIS, are needed there)."""
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
            return {"mean": float(t.mean()), "stderr": float(t.std() / math.sqrt(t.numel()))}

        return {
            "num_points": int(self.log_px.numel()),
            "log_px_iwae": stat(self.log_px),
            "elbo_q_star": stat(self.elbo_q_star),
            "elbo_q_star_from_encoder": stat(self.elbo_q_star_from_encoder),
            "elbo_q_star_from_zero": stat(self.elbo_q_star_from_zero),
            "elbo_q_amortized": stat(self.elbo_q),
            "approximation_gap": stat(self.approximation_gap),
            "amortization_gap": stat(self.amortization_gap),
            "fraction_q_star_above_q": float((self.elbo_q_star >= self.elbo_q).float().mean()),
            "log_px_iwae_guide": None if self.log_px_guide is None else stat(self.log_px_guide),
            "log_px_iwae_q_star": None if self.log_px_q_star is None
            else stat(self.log_px_q_star),
            "points_with_elbo_above_log_px": int(self.flagged.sum()),
            "refinement_curve": self.refinement_curve,
            "seconds": self.seconds,
        }


def amortization_gap(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, iw_samples: int = 5000,
    eval_samples: int = 1000, refine_steps: int = 50, seed: int = 0, guide: Any = None,
    **fit_kwargs: Any,
) -> GapReport:
    """log p(x), L[q*] (from the encoder and from zero; the better per point), L[q], and the
    semi-amortized curve, per point. All Gaussian ELBOs are re-estimated on one fresh set of
    ``eval_samples`` draws shared by q and q*, so their difference has little noise.

    With ``guide`` (any guide of the protocol, default ``vae.guide``): it is the amortized q
    and IWAE's proposal; L[q] is its ``eval_samples``-draw ELBO per point
    (:func:`~pyro_vae.infer.evaluation.elbo_terms`), the local fits start from its moments, and
    q* is the better per point of the best diagonal Gaussian and q itself (so that both gaps
    stay ≥ 0 for a guide family richer than the diagonal Gaussian).
    """
    yy = y if vae.conditional else None
    if guide is None and not vae.family.is_diagonal:
        guide = vae.guide  # a richer family: L[q] and the fits' start through the guide itself
    seconds = {}
    t = time.perf_counter()
    log_px = iwae_log_likelihood(vae, x, yy, num_samples=iw_samples, guide=guide)
    seconds["iwae"] = time.perf_counter() - t
    t = time.perf_counter()
    from_enc = fit_local(vae, x, yy, init="encoder", seed=seed, guide=guide, **fit_kwargs)
    from_zero = fit_local(vae, x, yy, init="zero", seed=seed, **fit_kwargs)
    seconds["fit"] = time.perf_counter() - t
    refine = fit_local(vae, x, yy, init="encoder", seed=seed, max_steps=refine_steps,
                       check_every=refine_steps, patience=1, record_steps=refine_steps,
                       guide=guide)
    gen = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(eval_samples, x.shape[0], vae.latent_dim, generator=gen).to(x.device)
    with evaluating(vae):
        loc, scale = vae.encode(x, yy)
        chunks = [(slice(i, i + 200)) for i in range(0, x.shape[0], 200)]

        def elbo_of(lc, sc):
            return torch.cat([gaussian_elbo(vae, x[c], None if yy is None else yy[c], lc[c],
                                            sc[c], eps[:, c]) for c in chunks])

        if guide is None:
            e_q = elbo_of(loc, scale)
        else:
            with evaluating(*filter(None, [module_of(guide)])):
                e_q = torch.cat([elbo_terms(vae, x[c], None if yy is None else yy[c],
                                            eval_samples, guide)["elbo"] for c in chunks])
        e_enc = elbo_of(from_enc.loc, from_enc.scale)
        e_zero = elbo_of(from_zero.loc, from_zero.scale)
    # q* is the best Gaussian found per point; the encoder's q is one of the candidates
    e_star = torch.maximum(torch.maximum(e_enc, e_zero), e_q)
    # log p̂(x): the better per point of IWAE with the amortized q and IWAE with q* as proposal
    # (a poor encoder makes the first far too low, and the gaps impossible)
    better = (e_enc >= e_zero).unsqueeze(-1)
    t = time.perf_counter()
    log_px_star = gaussian_iwae(vae, x, yy, torch.where(better, from_enc.loc, from_zero.loc),
                                torch.where(better, from_enc.scale, from_zero.scale),
                                num_samples=iw_samples)
    seconds["iwae_q_star"] = time.perf_counter() - t
    best = torch.maximum(log_px, log_px_star)
    return GapReport(best, e_star, e_enc, e_zero, e_q, refine.curve, seconds, log_px,
                     log_px_star)


def gaussian_iwae(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, loc: torch.Tensor,
                  scale: torch.Tensor, num_samples: int = 5000, max_elements: int = 2**23
                  ) -> torch.Tensor:
    """The IWAE bound per point with the per-point Gaussians N(loc_n, diag scale_n²) as
    proposals, in chunks of draws (memory bounded by ``max_elements``)."""
    dims = math.prod(vae.event_shape) * vae.likelihood.num_params
    chunk = max(1, min(num_samples, max_elements // max(1, x.shape[0] * dims)))
    q = torch.distributions.Normal(loc, scale)
    prior = vae.prior(x.shape[0], x.device)
    running = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    with evaluating(vae):
        while done < num_samples:
            k = min(chunk, num_samples - done)
            z = q.sample((k,))
            log_w = (vae.observation_distribution(z, y).log_prob(x) + prior.log_prob(z)
                     - q.log_prob(z).sum(-1))
            running = torch.logaddexp(running, torch.logsumexp(log_w.double(), 0))
            done += k
    return (running - math.log(num_samples)).float()


def gap_table(summary: dict[str, Any]) -> str:
    """Markdown table of a :meth:`GapReport.summary`."""
    rows = [("log p̂(x) (best IWAE per point)", "log_px_iwae"),
            ("  IWAE, amortized q as proposal", "log_px_iwae_guide"),
            ("  IWAE, q* as proposal", "log_px_iwae_q_star"),
            ("L[q*] (best Gaussian per point)", "elbo_q_star"),
            ("  from the encoder's output", "elbo_q_star_from_encoder"),
            ("  from zero", "elbo_q_star_from_zero"), ("L[q] (amortized encoder)",
                                                       "elbo_q_amortized"),
            ("approximation gap log p(x) - L[q*]", "approximation_gap"),
            ("amortization gap L[q*] - L[q]", "amortization_gap")]
    lines = [f"{summary['num_points']} points; nats per point (± standard error)", "",
             "| quantity | value |", "| --- | ---: |"]
    lines += [f"| {label} | {summary[key]['mean']:.3f} ± {summary[key]['stderr']:.3f} |"
              for label, key in rows if summary.get(key) is not None]
    flagged = summary.get("points_with_elbo_above_log_px", 0)
    if flagged:
        lines += ["", f"{flagged} point(s) have L[q*] above log p̂(x), which the truth cannot "
                  "have: their log p̂(x) is too low (raise --iw-samples, or use AIS), and their "
                  "approximation gap reads negative."]
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
