"""The signal-to-noise lab of importance-weighted objectives: gradient SNR against the number of
particles K, per parameter group and estimator, with confidence intervals and fitted slopes, on
any Pyro model and guide.

For R gradient draws ĝ at fixed parameters (the batch taken as the data set, as in
:mod:`pyro_vae.lab.variance`) and each parameter group — ``"encoder"``: the guide's parameters φ,
``"decoder"``: the model's other parameters θ, read off the traces — the lab reports the mean over
parameters of SNR_i = abs(E ĝ_i) / sd ĝ_i, with abs(E ĝ_i) estimated as sqrt(max(ḡ_i² − s_i²/R, 0)),
its jackknife standard error and 95 % interval, the total variance Σ_i Var ĝ_i, and the cost per
estimate (model evaluations and seconds).

**The floor.** Subtracting the sample mean's own noise s²/R does not take the statistic to zero
when there is no signal: at E ĝ_i = 0, √R ḡ_i/s_i is Student-t with R − 1 degrees of freedom and
the statistic reads E sqrt(max(T² − 1, 0))/√R ≈ 0.343/√R (0.381/√R at R = 20;
:func:`~pyro_vae.lab.variance.snr_floor`), whatever K is. An SNR near the floor says "no signal
resolved with R draws", not "SNR = 0.34/√R"; fitted, it flattens the slope and makes it depend
on R. So each (K, group) is marked **resolved** when the lower end of its 95 % interval lies above
the floor, and the slope of log SNR against log K, for each (estimator, group), is fitted by
weighted least squares (weights from the jackknife standard errors) **on the resolved points
only**; the points left out are listed, and fewer than two resolved points give no slope.
Raising R lowers the floor as 1/√R.

Rainforth et al. (2018): with the plain pathwise IWAE gradient the encoder's SNR falls like
O(1/√K) (slope −½) while the decoder's rises like O(√K) (slope +½); with DReG (Tucker et al.
2019) the encoder's SNR no longer falls.

**Estimators.** ``reparam``, ``stl`` and ``dreg`` of
:class:`~pyro_vae.infer.importance.ImportanceWeightedELBO` (reparameterized guide sites), ``vimco``
(:class:`~pyro_vae.infer.discrete.VIMCO_ELBO`, the IWAE bound with discrete sites, K ≥ 2) and,
for ``objective="elbo"``, every estimator of the variance lab with S = K samples
(:data:`~pyro_vae.lab.variance.LAB_ESTIMATORS`: the score family, ARM, DisARM, RLOO, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.discrete import VIMCO_ELBO
from pyro_vae.infer.importance import IW_ESTIMATORS, OBJECTIVES, ImportanceWeightedELBO
from pyro_vae.infer.problem import Problem
from pyro_vae.jobs import job
from pyro_vae.lab import reporting
from pyro_vae.lab.variance import (
    LAB_ESTIMATORS,
    Z95,
    GroupStats,
    check_applies,
    check_lab_estimator,
    eval_mode,
    lab_labels,
    lab_modules,
    lab_problem,
    problem_parameter_groups,
    pyro_setup,
    sample_gradients,
    snr_floor,
)
from pyro_vae.models.vae import VAE

#: Every estimator the SNR lab takes: the importance-weighted ones, VIMCO, and (objective
#: ``"elbo"``) those of the variance lab.
SNR_ESTIMATORS = tuple(dict.fromkeys((*IW_ESTIMATORS, "vimco", *LAB_ESTIMATORS)))


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
    """One (objective, estimator, K) setting: per-group statistics (SNR with its 95 % interval,
    floor and ``resolved`` flag: :class:`~pyro_vae.lab.variance.GroupStats`), and the cost per
    estimate: ``seconds`` (± ``seconds_se``) and ``evaluations`` of model and guide."""

    objective: str
    estimator: str
    num_particles: int
    num_groups: int
    repeats: int
    seconds: float
    groups: dict[str, GroupStats]
    evaluations: int = 1
    seconds_se: float = float("nan")


@dataclass
class Slope:
    """d log SNR / d log K for one (estimator, group), with its standard error, fitted on the
    ``num_points`` resolved settings; ``unresolved``: the K whose SNR was not resolved above the
    floor and was left out. ``nan`` with fewer than two resolved points."""

    estimator: str
    group: str
    slope: float
    stderr: float
    num_points: int = 0
    unresolved: list[int] = field(default_factory=list)


def snr_objective(problem: Problem, objective: str, estimator: str, num_particles: int,
                  num_groups: int = 1) -> Any:
    """The Pyro ELBO whose gradient the lab draws, or ``None`` for a variance-lab estimator of
    the ``"elbo"`` objective (built by :func:`~pyro_vae.lab.variance.pyro_setup` with S = K).
    A combination the model cannot honour is a one-line ConfigError."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of: "
                          f"{', '.join(OBJECTIVES)}")
    nesting = problem.max_plate_nesting
    if estimator in IW_ESTIMATORS:
        not_rsample = [s.name for s in problem.latents if not s.has_rsample]
        if not_rsample:
            raise ConfigError(f"the {estimator} gradient of {objective} needs reparameterized "
                              f"guide sites, but site {not_rsample[0]!r} is not: use "
                              "--objective iwae --estimators vimco, or --objective elbo with a "
                              "score-function or binary estimator")
        return ImportanceWeightedELBO(objective, num_particles, num_groups, estimator,
                                      max_plate_nesting=nesting)
    if estimator == "vimco":
        if objective != "iwae" or num_groups != 1:
            raise ConfigError("vimco is the gradient of the iwae objective (one group); use "
                              "--objective iwae")
        return VIMCO_ELBO(num_particles, max_plate_nesting=nesting)
    if estimator in LAB_ESTIMATORS and objective == "elbo" and num_groups == 1:
        check_lab_estimator(estimator, "mc")
        check_applies(problem, estimator, num_particles)
        return None
    raise ConfigError(f"unknown estimator {estimator!r} for --objective {objective}; choose "
                      f"from {', '.join(IW_ESTIMATORS)}" + (", vimco" if objective == "iwae"
                                                            else "")
                      + ("" if objective != "elbo" else
                         f" or, for elbo, {', '.join(LAB_ESTIMATORS)}"))


def measure_snr(vae: Any, x: torch.Tensor, y: torch.Tensor | None, objective: str,
                estimator: str, num_particles: int, num_groups: int = 1, repeats: int = 100,
                guide: Any = None, warmup: int = 500) -> SNRPoint:
    """R draws of the gradient of ``objective`` with ``estimator`` at K = ``num_particles``,
    for ``vae``'s model and ``guide`` (default ``vae.guide``): any model and guide."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 20:
        raise ConfigError(f"--repeats must be an integer ≥ 20 for standard errors, got "
                          f"{repeats!r}; e.g. --repeats 100")
    y = lab_labels(vae, y)
    problem = lab_problem(vae, x, y, guide)
    elbo = snr_objective(problem, objective, estimator, num_particles, num_groups)
    groups = problem_parameter_groups(problem)
    samples = num_particles * num_groups if elbo is not None else num_particles
    with eval_mode(*lab_modules(vae, guide)):
        setup = pyro_setup(problem, x, y, estimator, "mc", samples, warmup, elbo=elbo)
        try:
            moments, seconds, seconds_se = sample_gradients(setup, groups, repeats, x.device)
        finally:
            setup.cleanup()
    return SNRPoint(objective, estimator, num_particles, num_groups, repeats, seconds,
                    {g: GroupStats.of_moments(m, debiased=True) for g, m in moments.items()},
                    setup.evaluations, seconds_se)


def fit_slope(points: list[SNRPoint], estimator: str, group: str) -> Slope:
    """Weighted least squares of log SNR on log K over the **resolved** points of (estimator,
    group) (weights 1 / Var[log SNR], Var[log SNR] ≈ (se / SNR)²); the slope's standard error
    from the fit's covariance. Points whose SNR is not resolved above the floor are left out
    and listed in :attr:`Slope.unresolved`."""
    rows, unresolved = [], []
    for p in points:
        if p.estimator != estimator or group not in p.groups:
            continue
        st = p.groups[group]
        ok = st.resolved if st.resolved is not None else st.snr_mean > 0
        if ok and st.snr_mean > 0:
            rows.append((math.log(p.num_particles), st.snr_mean, st.snr_mean_se))
        else:
            unresolved.append(p.num_particles)
    if len(rows) < 2:
        return Slope(estimator, group, float("nan"), float("nan"), len(rows), unresolved)
    xs = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    ys = torch.tensor([math.log(r[1]) for r in rows], dtype=torch.float64)
    var = torch.tensor([max((r[2] / r[1]) ** 2, 1e-12) if math.isfinite(r[2]) else 1.0
                        for r in rows], dtype=torch.float64)
    w = 1.0 / var
    xbar = float((w * xs).sum() / w.sum())
    sxx = float((w * (xs - xbar) ** 2).sum())
    if sxx <= 0:
        return Slope(estimator, group, float("nan"), float("nan"), len(rows), unresolved)
    slope = float((w * (xs - xbar) * ys).sum()) / sxx
    return Slope(estimator, group, slope, math.sqrt(1.0 / sxx), len(rows), unresolved)


def run_snr_lab(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                objective: str = "iwae", particles: tuple[int, ...] = (1, 4, 16, 64),
                estimators: tuple[str, ...] = ("reparam", "stl", "dreg"), repeats: int = 100,
                num_groups: int = 1, seed: int = 0, guide: Any = None, warmup: int = 500
                ) -> tuple[list[SNRPoint], list[Slope]]:
    """Every (estimator, K) setting, and the slope per (estimator, group) fitted on the resolved
    settings (module docstring)."""
    if not particles or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                            for k in particles):
        raise ConfigError("--particles takes positive integers; give e.g. --particles 1,4,16,64")
    points = []
    with job("SNR lab", len(estimators) * len(particles), "setting",
             "lower --repeats or --particles, or measure fewer estimators",
             units_are_jobs=True) as work:
        for estimator in estimators:
            for k in particles:
                pyro.set_rng_seed(seed)
                points.append(measure_snr(vae, x, y, objective, estimator, k, num_groups,
                                          repeats, guide, warmup))
                work.advance()
    groups = list(dict.fromkeys(g for p in points for g in p.groups))
    slopes = [fit_slope(points, e, g) for e in estimators for g in groups]
    return points, slopes


def floor_note(points: list[SNRPoint]) -> str:
    """One line that states the zero-signal floor of the reported SNR for the R used."""
    repeats = sorted({p.repeats for p in points})
    floors = ", ".join(f"{snr_floor(r):.3g} at R = {r}" for r in repeats)
    return (f"Floor: with no signal (E ĝ = 0) the SNR reads about 0.343/√R ({floors}), whatever K "
            "is. A setting is resolved when the lower end of its 95 % interval lies above the "
            "floor; slopes are fitted on resolved settings only. Raise --repeats to lower the "
            "floor.\n")


def snr_table(points: list[SNRPoint], slopes: list[Slope]) -> str:
    """Markdown: per setting the SNR with its 95 % interval and whether it is resolved above the
    floor, the total variance ± se and the cost per estimate; then the slopes (fitted on the
    resolved settings), and a line that states the floor."""
    rows = []
    for p in points:
        for g, s in p.groups.items():
            resolved = "yes" if s.resolved else (f"no (floor {s.snr_floor:.2g})"
                                                 if s.resolved is not None else "–")
            rows.append([p.estimator, p.num_particles, g,
                         reporting.interval(s.snr_mean, s.snr_low, s.snr_high), resolved,
                         reporting.pm(s.total_variance, s.total_variance_se), p.evaluations,
                         reporting.pm(p.seconds * 1e3, p.seconds_se * 1e3, " ms")])
    table = reporting.markdown_table(
        ["estimator", "K", "group", "SNR (mean over parameters) [95 % CI]", "resolved",
         "total variance ± se", "evals / estimate", "time / estimate ± se"], rows,
        align="lrlrlrrr")
    slope_rows = [[s.estimator, s.group,
                   f"{s.slope:+.3f} ± {s.stderr:.3f}" if math.isfinite(s.slope)
                   else "not fitted (< 2 resolved)", s.num_points,
                   ", ".join(map(str, s.unresolved)) or "–"] for s in slopes]
    return table + "\n" + reporting.markdown_table(
        ["estimator", "group", "slope of log SNR in log K", "resolved points",
         "left out (unresolved K)"], slope_rows, align="llrrl") + "\n" + floor_note(points)


def plot_snr(points: list[SNRPoint], path: Path) -> Path:
    """SNR against K (log-log) per group, one line per estimator, with 95 % intervals; unresolved
    settings hollow, the zero-signal floor dotted."""
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(g for p in points for g in p.groups))
    fig = Figure(figsize=(6 * len(groups), 4.5))
    axes = fig.subplots(1, len(groups))
    axes = axes if len(groups) > 1 else [axes]
    for ax, g in zip(axes, groups, strict=True):
        for estimator in dict.fromkeys(p.estimator for p in points):
            ps = sorted((p for p in points if p.estimator == estimator and g in p.groups),
                        key=lambda p: p.num_particles)
            if not ps:
                continue
            ks = [p.num_particles for p in ps]
            snr = [p.groups[g].snr_mean for p in ps]
            err = [Z95 * p.groups[g].snr_mean_se if math.isfinite(p.groups[g].snr_mean_se)
                   else 0.0 for p in ps]
            line = ax.errorbar(ks, snr, yerr=err, capsize=3, label=estimator)
            colour = line[0].get_color()
            ax.plot([k for k, p in zip(ks, ps, strict=True) if p.groups[g].resolved],
                    [v for v, p in zip(snr, ps, strict=True) if p.groups[g].resolved], "o",
                    color=colour)
            ax.plot([k for k, p in zip(ks, ps, strict=True) if not p.groups[g].resolved],
                    [v for v, p in zip(snr, ps, strict=True) if not p.groups[g].resolved], "o",
                    mfc="none", color=colour)
        floor = max(p.groups[g].snr_floor for p in points if g in p.groups)
        if math.isfinite(floor):
            ax.axhline(floor, ls=":", color="grey", label="floor (no signal)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel("mean |E ĝ| / sd ĝ per parameter")
        ax.set_title(f"{g} gradient SNR, {points[0].objective} (hollow: unresolved)")
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
    """Points, slopes, and the floor per R (``snr_floor``) with the note that states it."""
    floors = {str(r): snr_floor(r) for r in sorted({p.repeats for p in points})}
    return {"meta": meta or {}, "points": [asdict(p) for p in points],
            "slopes": [asdict(s) for s in slopes], "snr_floor": floors,
            "note": floor_note(points).strip()}
