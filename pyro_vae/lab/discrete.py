"""Bias and variance of the discrete-code estimators against the exact gradient.

For a code small enough to enumerate, the exact gradient of each estimator's target is known
(:func:`~pyro_vae.infer.discrete.exact_objective`): ∇ ELBO for the score-function family, the
relaxations and ``enum``; ∇ IWAE_K for ``vimco``. At fixed parameters and a fixed batch of B
points, each estimator gives R estimates g_r of the gradient of the mean-per-point objective
(ascent direction) for the encoder φ and the decoder θ; per group of P parameters:

====================  ================================================================
``bias_norm``         ‖ḡ − ∇‖, the norm of the mean error
``noise_norm``        sqrt(tr Cov[g] / R): what ``bias_norm`` is for an unbiased estimator
                      (the Monte Carlo standard error of the mean's norm, roughly)
``bias_debiased``     sqrt(max(‖ḡ − ∇‖² − tr Cov[g] / R, 0)): ‖E g − ∇‖ with the mean's own
                      noise removed (E‖ḡ − ∇‖² = ‖E g − ∇‖² + tr Cov[g] / R)
``max_abs_z``         max_p abs(ḡ_p − ∇_p) / se_p; under unbiasedness, each z_p is ≈ N(0, 1)
                      for large R, so max abs(z) beyond Φ⁻¹(1 − α / 2P) (Bonferroni) rejects it
``total_variance``    tr Cov[g], the variance of one estimate
``snr_mean``          mean over parameters of abs(E g_p) / sd g_p (the sample mean's noise removed,
                      as in :func:`~pyro_vae.lab.variance.snr_mean`): the measure that needs no
                      exact gradient, for codes too large to enumerate
``seconds``           wall-clock seconds per estimate
====================  ================================================================

Baselines learn while they are measured, as in training: the network b_ψ(x) takes ``warmup``
Adam steps on (f − b_ψ)² first, the decaying average ``min(warmup, 100)`` updates.

:func:`temperature_sweep` measures the relaxations across temperatures — their bias falls and
their variance rises as τ → 0 — and :func:`plot_discrete_lab` draws both against τ, with the
unbiased estimators' variance as reference lines.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.discrete import (
    DISCRETE_ESTIMATORS,
    MAX_TUPLE_ENTRIES,
    RELAXED,
    DiscreteObjective,
    exact_objective,
)
from pyro_vae.jobs import job
from pyro_vae.lab import reporting
from pyro_vae.lab.variance import (
    AVG_WARMUP,
    GradientMoments,
    ascent_and_baseline_step,
    batch_as_data_set,
    flat_gradients,
    parameter_groups,
    pyro_surrogate_needs_clean_store,
    snr_mean,
)


@dataclass
class DiscreteGroupStats:
    bias_norm: float | None
    bias_debiased: float | None
    noise_norm: float
    max_abs_z: float | None
    total_variance: float
    exact_norm: float | None
    num_params: int
    snr_mean: float = float("nan")


@dataclass
class DiscreteEstimatorResult:
    estimator: str
    num_particles: int
    temperature: float | None
    target: str
    repeats: int
    seconds: float
    groups: dict[str, DiscreteGroupStats] = field(default_factory=dict)

    @property
    def label(self) -> str:
        label = self.estimator + (f" (K={self.num_particles})" if self.num_particles > 1 else "")
        return label + (f" τ={self.temperature:g}" if self.temperature is not None else "")

    def to_dict(self) -> dict:
        return asdict(self)


def exact_gradient(vae: Any, x: torch.Tensor, num_particles: int,
                   groups: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """∇ of the mean-per-point exact objective (ELBO, or IWAE_K for K > 1), or ``None`` when the
    code (or its K-tuples) has too many states to enumerate."""
    states = vae.prior(1, x.device).num_states
    if states ** num_particles * num_particles * x.shape[0] > MAX_TUPLE_ENTRIES \
            or states > 2 ** 20:
        return None
    return flat_gradients(exact_objective(vae, x, num_particles=num_particles).mean(), groups)


def measure_discrete_estimator(
    vae: Any,
    x: torch.Tensor,
    estimator: str,
    num_particles: int = 1,
    temperature: float = 0.5,
    repeats: int = 200,
    warmup: int = 300,
    exact: dict[str, torch.Tensor] | None = None,
) -> DiscreteEstimatorResult:
    """R estimates of ``estimator``'s gradient at the current parameters; their bias against the
    exact gradient (computed here unless given as ``exact``) and their variance."""
    if estimator not in DISCRETE_ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r} for a discrete code; choose from "
                          f"{', '.join(DISCRETE_ESTIMATORS)}")
    if repeats < 2:
        raise ConfigError(f"--repeats must be ≥ 2 to estimate a variance, got {repeats}; e.g. 200")
    groups = parameter_groups(vae)
    target_k = num_particles if estimator == "vimco" else 1
    pyro_surrogate_needs_clean_store()
    with batch_as_data_set(vae):
        if exact is None:
            exact = exact_gradient(vae, x, target_k, groups)
        offset = 0.0
        if estimator == "score-nn":
            with torch.no_grad():
                offset = float(exact_objective(vae, x).mean()) if vae.prior(1).num_states \
                    <= 2 ** 16 else 0.0
        objective = DiscreteObjective(vae, estimator, num_particles, temperature,
                                      baseline_offset=offset)
        net = getattr(objective.guide, "baseline_net", None)
        optim = torch.optim.Adam(net.parameters(), lr=1e-2) if net is not None else None
        b = x.shape[0]

        def one() -> dict[str, torch.Tensor]:
            loss = objective.differentiable_loss(x) / b
            if net is None:
                return flat_gradients(-loss, groups)
            return ascent_and_baseline_step(loss, groups, net, optim)

        steps = {"score-nn": warmup, "score-avg": min(warmup, AVG_WARMUP)}.get(estimator, 0)
        with pyro.validation_enabled(False), job(
                "gradient estimates", steps + repeats, "gradient estimate",
                "lower --repeats (or --warmup)") as work:
            for _ in range(steps):
                if net is None:
                    with torch.no_grad():
                        objective.differentiable_loss(x)
                else:
                    one()
                work.advance()
            moments: dict[str, GradientMoments] = {}
            start = time.perf_counter()
            for _ in range(repeats):
                for g, v in one().items():
                    moments.setdefault(g, GradientMoments()).add(v)
                work.advance()
            seconds = (time.perf_counter() - start) / repeats
    result = DiscreteEstimatorResult(
        estimator, num_particles, temperature if estimator in RELAXED else None,
        f"IWAE_{num_particles}" if target_k > 1 else "ELBO", repeats, seconds)
    for g, m in moments.items():
        mean, var = m.mean_and_variance()
        mean, var = mean.float(), var.float()
        noise = math.sqrt(float(var.sum()) / repeats)
        if exact is None:
            bias = debiased = z = exact_norm = None
        else:
            err = mean - exact[g]
            se = (var / repeats).sqrt()
            ok = se > 0
            z = float((err[ok].abs() / se[ok]).max()) if bool(ok.any()) else 0.0
            bias, exact_norm = float(err.norm()), float(exact[g].norm())
            debiased = math.sqrt(max(bias ** 2 - noise ** 2, 0.0))
        result.groups[g] = DiscreteGroupStats(bias, debiased, noise, z, float(var.sum()),
                                              exact_norm, int(mean.numel()),
                                              float(snr_mean(mean, var, repeats)))
    return result


def run_discrete_lab(
    vae: Any,
    x: torch.Tensor,
    estimators: tuple[str, ...] = DISCRETE_ESTIMATORS,
    num_particles: int = 2,
    temperature: float = 0.5,
    repeats: int = 200,
    warmup: int = 300,
    seed: int = 0,
) -> list[DiscreteEstimatorResult]:
    """Every estimator once (``vimco`` and ``rloo`` with K = ``num_particles``, the others with
    one sample; ``enum`` once: it is exact), against one exact gradient per target (IWAE_K for
    vimco, the ELBO for the others)."""
    groups = parameter_groups(vae)
    exact_elbo = exact_gradient(vae, x, 1, groups)
    results = []
    with job("discrete variance lab", len(estimators), "setting",
             "lower --repeats or measure fewer estimators", units_are_jobs=True) as work:
        for estimator in estimators:
            pyro.set_rng_seed(seed)
            k = num_particles if estimator in ("vimco", "rloo") else 1
            exact = exact_elbo if k == 1 or estimator == "rloo" else \
                exact_gradient(vae, x, k, groups)  # rloo's K draws estimate the ELBO's gradient
            results.append(measure_discrete_estimator(
                vae, x, estimator, k, temperature, 2 if estimator == "enum" else repeats,
                warmup, exact))
            work.advance()
    return results


def temperature_sweep(vae: Any, x: torch.Tensor,
                      temperatures: tuple[float, ...] = (2.0, 1.0, 0.5, 0.25, 0.1),
                      repeats: int = 200, seed: int = 0) -> list[DiscreteEstimatorResult]:
    """``relaxed`` and ``relaxed-st`` at each temperature."""
    exact = exact_gradient(vae, x, 1, parameter_groups(vae))
    results = []
    with job("temperature sweep", len(RELAXED) * len(temperatures), "setting",
             "lower --repeats or give fewer --temperatures", units_are_jobs=True) as work:
        for estimator in RELAXED:
            for tau in temperatures:
                pyro.set_rng_seed(seed)
                results.append(measure_discrete_estimator(vae, x, estimator, 1, tau, repeats,
                                                          exact=exact))
                work.advance()
    return results


# --------------------------------------------------------------------------- reporting
def discrete_table(results: list[DiscreteEstimatorResult]) -> str:
    """Markdown: per estimator and group, bias ± noise floor, max abs(z), variance, SNR, cost."""
    header = ["estimator", "target", "group", "‖ḡ − ∇‖", "noise floor", "‖bias‖ debiased",
              "max |z|", "variance (tr Cov)", "SNR", "ms / estimate"]
    rows = []
    for r in results:
        for g, s in r.groups.items():
            rows.append([r.label, r.target, g,
                         "—" if s.bias_norm is None else f"{s.bias_norm:.4f}",
                         f"{s.noise_norm:.4f}",
                         "—" if s.bias_debiased is None else f"{s.bias_debiased:.4f}",
                         "—" if s.max_abs_z is None else f"{s.max_abs_z:.1f}",
                         f"{s.total_variance:.4g}", f"{s.snr_mean:.3f}",
                         f"{1000 * r.seconds:.2f}"])
    return reporting.markdown_table(header, rows, "lllrrrrrrr")


def plot_discrete_lab(sweep: list[DiscreteEstimatorResult],
                      reference: list[DiscreteEstimatorResult], path: Path,
                      group: str = "encoder") -> Path:
    """Bias and variance of the relaxations against τ (log-log), the unbiased estimators'
    variance as horizontal lines."""
    from pyro_vae.plots import _figure, _save

    fig, axes = _figure(1, 2, figsize=(10, 3.8))
    for estimator, marker in zip(RELAXED, "os", strict=True):
        rows = [r for r in sweep if r.estimator == estimator]
        taus = [r.temperature for r in rows]
        axes[0].plot(taus, [r.groups[group].bias_norm for r in rows], marker=marker,
                     label=f"{estimator}: ‖ḡ − ∇‖")
        axes[0].plot(taus, [r.groups[group].noise_norm for r in rows], ls=":",
                     color=axes[0].lines[-1].get_color(), label=f"{estimator}: noise floor")
        axes[1].plot(taus, [r.groups[group].total_variance for r in rows], marker=marker,
                     label=estimator)
    for r in reference:
        if r.estimator not in RELAXED and r.groups[group].total_variance > 0:
            axes[1].axhline(r.groups[group].total_variance, ls="--", lw=0.8, label=r.label,
                            color=f"C{2 + reference.index(r) % 7}")
    for ax, title in zip(axes, ("‖bias‖ against the exact gradient", "variance tr Cov"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("temperature τ")
        ax.set_title(f"{title} ({group})")
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_discrete_report(results: list[DiscreteEstimatorResult],
                          sweep: list[DiscreteEstimatorResult], out: str | Path,
                          meta: dict | None = None) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = discrete_table(results) + "\nTemperature sweep of the relaxations:\n\n" \
        + discrete_table(sweep)
    (out / "discrete.md").write_text(table)
    (out / "discrete.json").write_text(json.dumps(
        {"meta": meta or {}, "results": [r.to_dict() for r in results],
         "sweep": [r.to_dict() for r in sweep]}, indent=2) + "\n")
    paths = [out / "discrete.md", out / "discrete.json"]
    if sweep:
        paths.append(plot_discrete_lab(sweep, results, out / "bias_variance.png"))
    return paths


#: ``pyro-vae variance discrete-toy``: the lab's enumerable model
DISCRETE_TOY = "discrete-toy"


def discrete_toy(units: int = 8, num_points: int = 32, hidden: int = 64, train_steps: int = 300,
                 seed: int = 0) -> tuple[Any, torch.Tensor]:
    """An enumerable model to measure on: a :class:`~pyro_vae.models.discrete_vae.DiscreteVAE`
    with ``units`` binary units (2^units states) on binarized 8×8 digits, trained for
    ``train_steps`` exact (``enum``) Adam steps so that the gradients are those of a model in
    training, not at its initialization; returns it and a batch of ``num_points`` digits."""
    from sklearn.datasets import load_digits

    from pyro_vae.distributions.likelihoods import make_likelihood
    from pyro_vae.models.discrete_vae import DiscreteVAE
    from pyro_vae.nn.networks import MLPDecoder, MLPLogitsEncoder

    if units > 16:
        raise ConfigError(f"the discrete toy enumerates 2^units states; use at most 16 units, "
                          f"got {units}")
    pyro.set_rng_seed(seed)
    images = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    x_all = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    vae = DiscreteVAE(MLPLogitsEncoder((64,), (units,), (hidden,)),
                      MLPDecoder((64,), units, (hidden,)), make_likelihood("bernoulli"),
                      "bernoulli", units, (64,))
    objective = DiscreteObjective(vae, "enum")
    optim = torch.optim.Adam(vae.parameters(), lr=3e-3)
    with pyro.validation_enabled(False):
        for _ in range(train_steps):
            batch = x_all[torch.randint(0, x_all.shape[0], (128,))]
            optim.zero_grad()
            (objective.differentiable_loss(batch) / batch.shape[0]).backward()
            optim.step()
    return vae, x_all[:num_points]
