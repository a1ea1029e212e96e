"""The signal-to-noise lab of importance-weighted objectives: gradient SNR against the number of
particles K, per parameter group and estimator, with standard errors and fitted slopes.

For R gradient draws ĝ at fixed parameters (the batch taken as the data set) and each parameter
group (encoder φ, decoder θ), the lab reports the mean over parameters of
SNR_i = abs(E ĝ_i) / sd ĝ_i — with abs(E ĝ_i) estimated as sqrt(max(ḡ_i² − s_i²/R, 0)), so that the
sample mean's own noise does not set a floor of 1/√R under small SNRs — the total variance
Σ_i Var ĝ_i, the cost per estimate, and, for each
(estimator, group), the slope of log SNR against log K fitted by weighted least squares with the
jackknife standard errors of the SNRs (:class:`~pyro_vae.lab.variance.GradientMoments`).

Rainforth et al. (2018): with the plain pathwise IWAE gradient the encoder's SNR falls like
O(1/√K) (slope −½) while the decoder's rises like O(√K) (slope +½); with DReG (Tucker et al.
2019) the encoder's SNR no longer falls.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.lab import reporting
from pyro_vae.lab.variance import (
    GradientMoments,
    GroupStats,
    batch_as_data_set,
    flat_gradients,
    parameter_groups,
)
from pyro_vae.models.discrete_vae import require_gaussian
from pyro_vae.models.vae import VAE


def gaussian_toy(dim: int = 20, num_points: int = 64, perturbation: float = 0.01,
                 seed: int = 0) -> tuple[VAE, torch.Tensor]:
    """The Gaussian model of Rainforth et al. (2018, §4), as a :class:`VAE`, and data from it.

    z ~ N(0, I_D), x | z ~ N(z + b, I_D): a linear decoder (weight I, bias b) with a fixed unit
    Gaussian likelihood, whose posterior p(z | x) = N((x − b)/2, I/2) is diagonal, so a linear
    encoder represents it exactly. The encoder is set to the exact posterior and then every
    parameter of encoder and decoder is perturbed by N(0, p²), p = ``perturbation``: near the
    optimum, where the asymptotic SNR rates in K appear already at small K.
    """
    from pyro_vae.distributions.likelihoods import make_likelihood
    from pyro_vae.nn.networks import MLPDecoder, MLPEncoder

    gen = torch.Generator().manual_seed(seed)
    encoder, decoder = MLPEncoder((dim,), dim, ()), MLPDecoder((dim,), dim, (), num_params=1)
    bias = torch.randn(dim, generator=gen)
    with torch.no_grad():
        decoder.net[0].weight.copy_(torch.eye(dim))
        decoder.net[0].bias.copy_(bias)
        encoder.head.loc.weight.copy_(0.5 * torch.eye(dim))
        encoder.head.loc.bias.copy_(-0.5 * bias)
        encoder.head.log_var.weight.zero_()
        encoder.head.log_var.bias.fill_(math.log(0.5))
        for p in (*encoder.parameters(), *decoder.parameters()):
            p.add_(perturbation * torch.randn(p.shape, generator=gen))
    vae = VAE(encoder, decoder, make_likelihood("gaussian", 1.0), dim, (dim,))
    z = torch.randn(num_points, dim, generator=gen)
    x = z + bias + torch.randn(num_points, dim, generator=gen)
    return vae, x


@dataclass
class SNRPoint:
    """One (objective, estimator, K) setting: per-group statistics and seconds per estimate."""

    objective: str
    estimator: str
    num_particles: int
    num_groups: int
    repeats: int
    seconds: float
    groups: dict[str, GroupStats]


@dataclass
class Slope:
    """d log SNR / d log K for one (estimator, group), with its standard error."""

    estimator: str
    group: str
    slope: float
    stderr: float


def measure_snr(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, objective: str,
                estimator: str, num_particles: int, num_groups: int = 1, repeats: int = 100,
                guide: Any = None) -> SNRPoint:
    """R draws of the gradient of ``objective`` with ``estimator`` at K = ``num_particles``."""
    require_gaussian(vae, "the SNR lab of importance-weighted objectives")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 20:
        raise ConfigError(f"--repeats must be an integer ≥ 20 for standard errors, got "
                          f"{repeats!r}; e.g. --repeats 100")
    loss_fn = ImportanceWeightedELBO(objective, num_particles, num_groups, estimator)
    guide = vae.guide if guide is None else guide
    groups = parameter_groups(vae, guide)
    y = y if vae.conditional else None
    moments: dict[str, GradientMoments] = {}
    with batch_as_data_set(vae), pyro.validation_enabled(False):
        start = time.perf_counter()
        for _ in range(repeats):
            loss = loss_fn.differentiable_loss(vae.model, guide, x, y) / x.shape[0]
            for g, v in flat_gradients(-loss, groups).items():
                moments.setdefault(g, GradientMoments()).add(v)
        seconds = (time.perf_counter() - start) / repeats
    return SNRPoint(objective, estimator, num_particles, num_groups, repeats, seconds,
                    {g: GroupStats.of_moments(m, debiased=True) for g, m in moments.items()})


def fit_slope(points: list[SNRPoint], estimator: str, group: str) -> Slope:
    """Weighted least squares of log SNR on log K (weights 1 / Var[log SNR], Var[log SNR] ≈
    (se / SNR)²); the slope's standard error from the fit's covariance."""
    rows = [(math.log(p.num_particles), p.groups[group].snr_mean, p.groups[group].snr_mean_se)
            for p in points if p.estimator == estimator and p.groups[group].snr_mean > 0]
    if len(rows) < 2:
        return Slope(estimator, group, float("nan"), float("nan"))
    xs = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    ys = torch.tensor([math.log(r[1]) for r in rows], dtype=torch.float64)
    var = torch.tensor([max((r[2] / r[1]) ** 2, 1e-12) if math.isfinite(r[2]) else 1.0
                        for r in rows], dtype=torch.float64)
    w = 1.0 / var
    xbar = float((w * xs).sum() / w.sum())
    sxx = float((w * (xs - xbar) ** 2).sum())
    if sxx <= 0:
        return Slope(estimator, group, float("nan"), float("nan"))
    slope = float((w * (xs - xbar) * ys).sum()) / sxx
    return Slope(estimator, group, slope, math.sqrt(1.0 / sxx))


def run_snr_lab(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                objective: str = "iwae", particles: tuple[int, ...] = (1, 4, 16, 64),
                estimators: tuple[str, ...] = ("reparam", "stl", "dreg"), repeats: int = 100,
                num_groups: int = 1, seed: int = 0, guide: Any = None
                ) -> tuple[list[SNRPoint], list[Slope]]:
    """Every (estimator, K) setting, and the fitted slope per (estimator, group)."""
    if not particles or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                            for k in particles):
        raise ConfigError("--particles takes positive integers; give e.g. --particles 1,4,16,64")
    points = []
    for estimator in estimators:
        for k in particles:
            pyro.set_rng_seed(seed)
            points.append(measure_snr(vae, x, y, objective, estimator, k, num_groups, repeats,
                                      guide))
    groups = list(points[0].groups)
    slopes = [fit_slope(points, e, g) for e in estimators for g in groups]
    return points, slopes


def snr_table(points: list[SNRPoint], slopes: list[Slope]) -> str:
    """Markdown: SNR ± se and total variance per setting, then the slopes."""
    rows = [[p.estimator, p.num_particles, g, f"{s.snr_mean:.3g} ± {s.snr_mean_se:.2g}",
             f"{s.total_variance:.4g} ± {s.total_variance_se:.2g}", f"{p.seconds * 1e3:.2f} ms"]
            for p in points for g, s in p.groups.items()]
    table = reporting.markdown_table(
        ["estimator", "K", "group", "SNR (mean over parameters) ± se",
         "total variance ± se", "s / estimate"], rows, align="lrlrrr")
    slope_rows = [[s.estimator, s.group, f"{s.slope:+.3f} ± {s.stderr:.3f}"] for s in slopes]
    return table + "\n" + reporting.markdown_table(
        ["estimator", "group", "slope of log SNR in log K"], slope_rows, align="llr")


def plot_snr(points: list[SNRPoint], path: Path) -> Path:
    """SNR against K (log-log) per group, one line per estimator, with ± se bars."""
    from matplotlib.figure import Figure

    groups = list(points[0].groups)
    fig = Figure(figsize=(6 * len(groups), 4.5))
    axes = fig.subplots(1, len(groups))
    axes = axes if len(groups) > 1 else [axes]
    for ax, g in zip(axes, groups, strict=True):
        for estimator in dict.fromkeys(p.estimator for p in points):
            ps = sorted((p for p in points if p.estimator == estimator),
                        key=lambda p: p.num_particles)
            ax.errorbar([p.num_particles for p in ps], [p.groups[g].snr_mean for p in ps],
                        yerr=[p.groups[g].snr_mean_se for p in ps], marker="o", capsize=3,
                        label=estimator)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel("mean |E ĝ| / sd ĝ per parameter")
        ax.set_title(f"{g} gradient SNR, {points[0].objective}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_snr_report(points: list[SNRPoint], slopes: list[Slope], out: str | Path,
                     meta: dict | None = None) -> list[Path]:
    """``snr.md``, ``snr.json`` and ``snr_vs_k.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "snr.md"
    md.write_text(snr_table(points, slopes))
    js = out / "snr.json"
    js.write_text(json.dumps(snr_json(points, slopes, meta), indent=2) + "\n")
    return [md, js, plot_snr(points, out / "snr_vs_k.png")]


def snr_json(points: list[SNRPoint], slopes: list[Slope], meta: dict | None = None) -> dict:
    return {"meta": meta or {}, "points": [asdict(p) for p in points],
            "slopes": [asdict(s) for s in slopes]}
