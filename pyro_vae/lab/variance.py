"""Measure gradient-estimator variance side by side (see :mod:`pyro_vae.infer.estimators`).

At fixed parameters and a fixed batch of B data points, each estimator is run R times with S
samples of z per point; every run gives one estimate of the gradient of the mean-per-point ELBO
(ascent direction) for the encoder (φ) and the decoder (θ). Per estimator and parameter group,
with g_r the r-th estimate of a P-vector:

=====================  ============================================================
``total_variance``     tr Cov[g] = Σ_p Var[g_p]  (unbiased over the R runs)
``mean_variance``      tr Cov[g] / P
``snr_mean``           mean over p of abs(E[g_p]) / sd[g_p]  (``snr_median`` likewise)
``mean_norm``          ‖E[g]‖, the size of the mean gradient
``seconds``            wall-clock seconds per estimate (forward, backward, baseline update)
``work_variance``      total_variance × seconds: variance at equal compute (lower is better)
=====================  ============================================================

Baselines learn while they are measured, as during training: the network b_ψ(x) first takes
``warmup`` updates (the decaying average min(warmup, 100)), then one per measured estimate.
On a fixed batch the decaying average is a per-data-point running mean of f, close to the
best constant baseline for each point; in mini-batch training the same slots see other points
and it degrades towards a global average.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import (
    BASELINE_KIND,
    KL_MODES,
    SCORE_FAMILY,
    BaselineState,
    NeuralBaseline,
    check_estimator,
    explicit_surrogate,
    mean_integrand,
    pyro_loss,
)
from pyro_vae.lab import reporting
from pyro_vae.models.vae import VAE
from pyro_vae.nn.module import module_of

IMPLEMENTATIONS = ("explicit", "pyro")
#: The decaying average (β = 0.9) forgets its zero start within ~50 updates.
AVG_WARMUP = 100



# --------------------------------------------------------------------------- bookkeeping
def parameter_groups(vae: VAE, guide: Callable[..., Any] | None = None
                     ) -> dict[str, list[torch.Tensor]]:
    """The parameters whose gradients the lab measures: φ (the encoder, or the module of a
    user's ``guide``) and θ (the decoder)."""
    owner = module_of(guide)
    phi = list(owner.parameters()) if owner is not None and owner is not vae \
        else list(vae.encoder.parameters())
    return {"encoder": phi, "decoder": list(vae.decoder.parameters())}


def flat_gradients(loss: torch.Tensor, groups: dict[str, list[torch.Tensor]]) -> dict[str,
                                                                                      torch.Tensor]:
    """∇ loss for each parameter group, flattened to one vector per group."""
    names = list(groups)
    params = [p for n in names for p in groups[n]]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    out, i = {}, 0
    for n in names:
        k = len(groups[n])
        out[n] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads[i:i + k], groups[n], strict=True)])
        i += k
    return out


def ascent_and_baseline_step(loss: torch.Tensor, groups: dict[str, list[torch.Tensor]],
                              net: torch.nn.Module, optim: torch.optim.Optimizer
                              ) -> dict[str, torch.Tensor]:
    """From a surrogate ``loss`` whose gradient includes a learned baseline's own loss: the
    ascent direction of each group (−∇ loss) and, as in training, one ``optim`` step of the
    baseline network ``net`` on its part of ∇ loss."""
    grads = flat_gradients(loss, {**groups, "baseline": list(net.parameters())})
    optim.zero_grad()
    start = 0
    for p in net.parameters():
        p.grad = grads["baseline"][start:start + p.numel()].view_as(p)
        start += p.numel()
    optim.step()
    return {g: -grads[g] for g in groups}


@contextlib.contextmanager
def batch_as_data_set(vae: Any):
    """Inside: ``vae.num_data`` is ``None`` (the measured batch is the whole data set, so the
    plate does not scale it) and the model is in eval mode; both restored after, however the
    block ends."""
    num_data, vae.num_data = vae.num_data, None
    was_training = vae.training
    vae.eval()
    try:
        yield
    finally:
        vae.num_data = num_data
        vae.train(was_training)


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
    noise s²/R is subtracted, which otherwise sets a floor of about 1/√R under every SNR.
    """
    sd = var.sqrt()
    ok = sd > 0
    if not bool(ok.any()):
        return torch.zeros(())
    signal = mean.abs()[ok] if draws is None else \
        (mean[ok] ** 2 - var[ok] / draws).clamp_min(0).sqrt()
    return (signal / sd[ok]).mean()


@dataclass
class GroupStats:
    """Gradient statistics of one parameter group; ``*_se``: jackknife standard errors."""

    total_variance: float
    mean_variance: float
    snr_mean: float
    snr_median: float
    mean_norm: float
    num_params: int
    total_variance_se: float = float("nan")
    snr_mean_se: float = float("nan")

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
        """With the jackknife standard errors of the total variance and the mean SNR;
        ``debiased``: the mean SNR corrected for the noise of the sample mean (:func:`snr_mean`
        with ``draws``), as the SNR lab reports it for small SNRs."""
        mean, var = moments.mean_and_variance()
        stats = cls.of(mean, var)
        stats.total_variance_se = moments.statistic(lambda m, v: v.sum())[1]
        if not debiased:
            stats.snr_mean_se = moments.statistic(snr_mean)[1]
            return stats
        stats.snr_mean = float(snr_mean(mean, var, moments.draws))
        kept = round(moments.draws * (1 - 1 / moments.num_batches))  # draws of a leave-out
        stats.snr_mean_se = moments.statistic(lambda m, v: snr_mean(m, v, kept))[1]
        return stats


@dataclass
class EstimatorResult:
    estimator: str
    kl: str
    implementation: str
    num_samples: int
    repeats: int
    seconds: float
    groups: dict[str, GroupStats]
    mean_gradient: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    stderr_gradient: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.estimator} ({self.kl} KL)"

    def work_variance(self, group: str) -> float:
        return self.groups[group].total_variance * self.seconds

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("mean_gradient",
                                                                "stderr_gradient")}
        d["work_variance"] = {g: self.work_variance(g) for g in self.groups}
        return d


def measure_estimator(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    estimator: str,
    kl: str = "mc",
    num_samples: int = 1,
    repeats: int = 100,
    implementation: str = "explicit",
    warmup: int = 500,
    guide: Any = None,
) -> EstimatorResult:
    """R gradient estimates of ``estimator`` at the current parameters; their statistics.

    ``guide``: a user's guide of the protocol (default ``vae.guide``); it is measured through
    Pyro's ELBOs (``implementation="pyro"``), the explicit forms being written for the built-in
    diagonal Gaussian. Its module's parameters are the "encoder" group.
    """
    check_estimator(estimator, kl)
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown implementation {implementation!r}; use explicit or pyro")
    if implementation == "explicit" and getattr(vae, "family", None) is not None \
            and not vae.family.is_diagonal:
        raise ConfigError(f"the explicit estimators are written for the diagonal Gaussian; "
                          f"this model's guide is {vae.family.kind!r}: use "
                          "--implementation pyro")
    if guide is not None and implementation != "pyro":
        raise ConfigError("the explicit estimators are written for the built-in diagonal "
                          "Gaussian guide; measure your own guide with implementation='pyro'")
    if repeats < 2:
        raise ConfigError(f"--repeats must be ≥ 2 to estimate a variance, got {repeats}; e.g. 100")
    groups = parameter_groups(vae, guide)
    with batch_as_data_set(vae):
        y = y if vae.conditional else None
        kind = BASELINE_KIND.get(estimator)
        offset = mean_integrand(vae, x, y, kl) if kind == "nn" else 0.0
        state = BaselineState(kind, x, offset=offset) if implementation == "explicit" else None
        nn_baseline, nn_optim = None, None
        if implementation == "pyro":
            pyro_surrogate_needs_clean_store()
            if kind == "nn":
                nn_baseline = NeuralBaseline(tuple(x.shape[1:]), offset=offset).to(x.device)
                nn_optim = torch.optim.Adam(nn_baseline.parameters(), lr=1e-2)

        def warm_up() -> None:
            """Update the baseline only: no gradient for the VAE is needed. The network learns
            E_q[f | x], which one sample per point also targets; the average keeps S slots."""
            s = num_samples if kind == "avg" else 1
            if implementation == "explicit":
                with torch.no_grad():
                    explicit_surrogate(vae, x, y, estimator, kl, s, state)
            elif nn_baseline is None:
                with torch.no_grad():
                    pyro_loss(vae, x, y, estimator, kl, s, guide=guide)
            else:
                loss = pyro_loss(vae, x, y, estimator, kl, s, nn_baseline, guide)
                params = list(nn_baseline.parameters())
                nn_optim.zero_grad()
                for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                    p.grad = g
                nn_optim.step()

        def one() -> dict[str, torch.Tensor]:
            """One estimate of ∇ ELBO (the gradient of minus the surrogate loss)."""
            if implementation == "explicit":
                return flat_gradients(-explicit_surrogate(vae, x, y, estimator, kl, num_samples,
                                                          state), groups)
            loss = pyro_loss(vae, x, y, estimator, kl, num_samples, nn_baseline, guide)
            if nn_baseline is None:
                return flat_gradients(-loss, groups)
            return ascent_and_baseline_step(loss, groups, nn_baseline, nn_optim)

        with pyro.validation_enabled(False):  # argument checks cost more than the nets
            steps = {"nn": warmup, "avg": min(warmup, AVG_WARMUP)}.get(kind or "", 0)
            for _ in range(steps):
                warm_up()
            moments: dict[str, GradientMoments] = {}
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                for g, v in one().items():
                    moments.setdefault(g, GradientMoments()).add(v)
            if x.is_cuda:
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / repeats
    means_vars = {g: m.mean_and_variance() for g, m in moments.items()}
    return EstimatorResult(
        estimator, kl, implementation, num_samples, repeats, seconds,
        {g: GroupStats.of_moments(m) for g, m in moments.items()},
        {g: mv[0] for g, mv in means_vars.items()},
        {g: (mv[1] / repeats).sqrt() for g, mv in means_vars.items()},
    )


def run_lab(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    estimators: tuple[str, ...] = ("reparam", "score", "score-avg", "score-nn", "stl"),
    kls: tuple[str, ...] = KL_MODES,
    samples: tuple[int, ...] = (1, 4, 16),
    repeats: int = 100,
    implementation: str = "explicit",
    seed: int = 0,
    warmup: int = 500,
) -> list[EstimatorResult]:
    """Every (estimator, KL mode, S) combination; pyro-only gaps are skipped (see estimators)."""
    results = []
    for estimator in estimators:
        for kl in kls:
            if implementation == "pyro" and estimator in SCORE_FAMILY and kl == "analytic":
                continue
            for s in samples:
                pyro.set_rng_seed(seed)
                results.append(measure_estimator(vae, x, y, estimator, kl, s, repeats,
                                                 implementation, warmup))
    return results


# --------------------------------------------------------------------------- reporting
def markdown_table(results: list[EstimatorResult], reference: str = "reparam") -> str:
    """One row per (estimator, KL, S, group) with the variance ratio to ``reference`` at the
    same KL mode and S."""
    ref = {(r.kl, r.num_samples): r for r in results if r.estimator == reference}
    rows = []
    for r in results:
        for g, st in r.groups.items():
            base = ref.get((r.kl, r.num_samples))
            ratio = st.total_variance / base.groups[g].total_variance if base and \
                base.groups[g].total_variance > 0 else float("nan")
            rows.append([r.estimator, r.kl, r.num_samples, g,
                         f"{st.total_variance:.4g} ± {st.total_variance_se:.2g}",
                         f"{ratio:.3g}", f"{st.snr_mean:.3g} ± {st.snr_mean_se:.2g}",
                         f"{r.seconds * 1e3:.2f} ms",
                         f"{r.work_variance(g):.3g}"])
    return reporting.markdown_table(
        ["estimator", "KL", "S", "group", "total variance ± se", "ratio to reparam",
         "SNR (mean) ± se",
         "s / estimate", "variance × cost"], rows, align="llrlrrrrr")


def plot_lab(results: list[EstimatorResult], out: Path) -> list[Path]:
    """variance_vs_samples.png (log-log, per group) and snr.png (per estimator and group)."""
    from matplotlib.figure import Figure

    groups = list(results[0].groups)
    fig = Figure(figsize=(6 * len(groups), 4.5))
    axes = fig.subplots(1, len(groups))
    labels = list(dict.fromkeys(r.label for r in results))
    for ax, g in zip(axes, groups, strict=True):
        for label in labels:
            rs = sorted((r for r in results if r.label == label), key=lambda r: r.num_samples)
            ax.loglog([r.num_samples for r in rs], [r.groups[g].total_variance for r in rs],
                      "o-" if "mc" in label else "s--", label=label)
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
        ax.bar([k + i * width for k in range(len(rows))], [r.groups[g].snr_mean for r in rows],
               width, label=g)
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
