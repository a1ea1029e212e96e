"""Test-set ELBO and importance-weighted log-likelihood, per data point, in nats, for any guide.

Every function takes the model's owner ``vae`` (anything with a Pyro ``model(x, y, indices,
beta)``, such as :class:`~pyro_vae.models.vae.VAE`) and an optional ``guide`` that follows the
same protocol (default ``vae.guide``): its latent sample sites are those of the model, inside
the ``"data"`` plate at dim -1. Log-densities are read off traces — the guide traced, the model
replayed on it — as each site's *unscaled* ``fn.log_prob(value)``, so the plate's N/B scale and
a KL weight β never enter a per-point number.

ELBO per point (:func:`elbo_terms`)::

    ELBO(x) = E_q[log p_θ(x | z)] - KL(q_φ(z | x) ‖ p(z))
              └── "recon", S samples ┘ └── "kl": closed form when torch has it for the
                                               site's pair of distributions, else the
                                               S-sample average of log q(z) - log p(z) ┘

IWAE estimate (:func:`iwae_log_likelihood`, Burda et al. 2016) with K samples z_k ~ q(z|x)::

    log p(x) ≥ L_K(x) = log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k | x)

``E[L_K]`` increases with K towards log p(x) (``L_1`` is the ELBO). The K samples are drawn in
vectorized chunks (a particle plate at dim -2), with a running log-sum-exp, so memory is bounded
by ``max_elements`` whatever K is; K = 5000 is the literature's protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from torch.distributions import Distribution, kl_divergence

from pyro_vae.data.datasets import DataSet, validate_arrays
from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.problem import Problem, describe, program_of
from pyro_vae.jobs import job, report
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.nn.module import module_of
from pyro_vae.resources import FLOAT_BYTES, check_memory, per_sample_elements, points_per_chunk


@dataclass(frozen=True)
class Estimate:
    """Mean over data points and its standard error (std / sqrt(n))."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, values: torch.Tensor) -> Estimate:
        v = values.detach().double()
        n = v.numel()
        se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        return cls(float(v.mean()), se, n)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.stderr:.3f}"

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "stderr": self.stderr, "n": self.n}


def _guide_of(vae: Any, guide: Callable[..., Any] | None) -> Callable[..., Any]:
    return vae.guide if guide is None else guide


def _owners(vae: Any, guide: Callable[..., Any] | None) -> tuple[Any, ...]:
    """The modules whose train/eval mode evaluation sets: the model's, and the guide's (a
    module, or a bound method of one)."""
    owner = module_of(guide)
    return (vae, owner) if owner is not None and owner is not vae else (vae,)


def problem_of(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
               guide: Callable[..., Any] | None = None) -> Problem:
    """The :class:`~pyro_vae.infer.problem.Problem` of ``vae``'s model and ``guide`` (default
    ``vae.guide``) on the batch ``x``."""
    model, guide = program_of(vae, guide)
    return describe(model, guide, x, y)


def _exact_kl(problem: Problem, guide_tr: poutine.Trace, model_tr: poutine.Trace
              ) -> torch.Tensor | None:
    """KL(q(z|x) ‖ p(z)) per point in closed form, or ``None``: only for a guide of one latent
    site and no auxiliary site, where the closed form is the whole guide's KL, and only where
    torch has it for the pair of distributions."""
    if len(problem.latents) != 1 or problem.auxiliary:
        return None
    name = problem.latents[0].name
    q, p = guide_tr.nodes[name]["fn"], model_tr.nodes[name]["fn"]
    if guide_tr.nodes[name]["mask"] is not None or model_tr.nodes[name]["mask"] is not None:
        return None
    try:
        if isinstance(q, Distribution) and isinstance(p, Distribution) \
                and q.batch_shape != p.batch_shape:
            # e.g. a prior broadcast by the particle plate: some closed forms (Bernoulli's)
            # index with masks and need equal shapes
            batch = torch.broadcast_shapes(q.batch_shape, p.batch_shape)
            q, p = q.expand(batch), p.expand(batch)
        kl = kl_divergence(q, p)
    except NotImplementedError:
        return None
    return problem.per_point(guide_tr.nodes[name], kl, kl.shape[0] if kl.dim() >
                             problem.max_plate_nesting else 1)[0]


def elbo_terms(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int = 1,
    guide: Callable[..., Any] | None = None, max_elements: int = 2**23,
    problem: Problem | None = None,
) -> dict[str, torch.Tensor]:
    """Per-point ``recon`` (Monte Carlo over ``num_samples`` draws of every latent site), ``kl``
    and ``elbo`` = ``recon`` − ``kl``, each ``(B,)``.

    ``recon`` sums the model's observed sites; ``kl`` = E_q[log q(z|x) − log p(z)] over every
    latent (and auxiliary) site. The KL is taken in closed form only where that is the whole
    guide's KL — a guide with a single latent site whose (q, p) pair has a
    ``torch.distributions.kl_divergence`` — and by the same Monte Carlo draws otherwise (a
    closed form per site would be wrong for a hierarchy, whose prior of z1 depends on the draw
    of z2). The draws are vectorized over a particle plate, in chunks of at most
    ``max_elements`` / (points × data dims) particles. ``problem``: the model's
    :class:`~pyro_vae.infer.problem.Problem` described on an earlier batch (resized to this
    one; described afresh when the traces no longer fit it).
    """
    problem = problem.resized(x.shape[0]) if problem is not None \
        else problem_of(vae, x, y, guide)
    dims = math.prod(x.shape[1:])
    chunk = max(1, min(num_samples, max_elements // max(1, x.shape[0] * dims)))
    recon = torch.zeros(x.shape[0], device=x.device)
    kl_mc = torch.zeros(x.shape[0], device=x.device)
    exact = None
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        guide_tr, model_tr = problem.traces(x, y, k)
        if done == 0 and not problem.describes(guide_tr, model_tr):
            # a problem kept from earlier batches no longer fits (the model's sites changed)
            problem = problem_of(vae, x, y, guide)
            guide_tr, model_tr = problem.traces(x, y, k)
        terms = problem.log_weight_terms(guide_tr, model_tr, k)
        recon = recon + terms["log_lik"].sum(0) / num_samples
        if done == 0:
            exact = _exact_kl(problem, guide_tr, model_tr)
        if exact is None:
            kl_mc = kl_mc + (terms["log_q"] - terms["log_prior"]).sum(0) / num_samples
        done += k
        report(k * x.shape[0], "ELBO draw")
    kl = kl_mc if exact is None else exact
    return {"elbo": recon - kl, "recon": recon, "kl": kl}


def latent_means(vae: VAE, data: DataSet, max_points: int = 5000) -> torch.Tensor:
    """Posterior means E_q[z | x] of up to ``max_points`` test points, shape (n, L)."""
    x = data.x_test[:max_points]
    y = data.y_test[:max_points] if vae.conditional and data.y_test is not None else None
    with evaluating(vae):
        return torch.cat([vae.posterior_mean(x[i:i + 1000], None if y is None else y[i:i + 1000])
                          for i in range(0, x.shape[0], 1000)])


def active_units(vae: VAE, data: DataSet, threshold: float = 0.01) -> int:
    """Latent units in use (Burda et al. 2016): unit u is active when the variance over test
    points of its posterior mean, ``Cov_x(E_q[z_u | x])``, exceeds ``threshold``."""
    return int((latent_means(vae, data).var(0) > threshold).sum())


def check_inputs(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                 **counts: int) -> None:
    """Raise :class:`DataError` / :class:`ConfigError` for data the evaluation cannot score:
    empty, NaN/inf, wrong shape, outside the likelihood's support, labels that do not match, or
    a count (samples, batch size) below 1. Shape and support are checked where the model says
    what they are (``check_shape``, ``likelihood``)."""
    for name, value in counts.items():
        check_count(name, value)
    validate_arrays(x, y, "the data to evaluate")
    if hasattr(vae, "check_shape"):
        vae.check_shape(x)
    if hasattr(vae, "likelihood"):
        vae.likelihood.check_support(x, "the data to evaluate")


def _batched(
    fn: Callable[..., dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor | None,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        out = fn(x[sl], None if y is None else y[sl])
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach())
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate_elbo(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 1000,
    num_samples: int = 1, guide: Callable[..., Any] | None = None,
    problems: dict[str, Problem] | None = None, key: str = "",
) -> dict[str, Estimate]:
    """Mean ELBO, reconstruction and KL per data point over ``x``, with standard errors, for
    ``guide`` (default ``vae.guide``). The model is described once (:func:`problem_of`) and
    the description reused for every chunk; ``problems`` keeps it under ``key`` across calls
    (the trainer's per-epoch evaluation: describing costs a run of model and guide)."""
    check_inputs(vae, x, y, batch_size=batch_size, num_samples=num_samples)
    if isinstance(vae, torch.nn.Module):  # draws × points × the decoder's activations
        check_memory(f"{num_samples} ELBO samples per point",
                     num_samples * per_sample_elements(vae) * FLOAT_BYTES * 3,
                     "lower the ELBO samples")
        batch_size = min(batch_size, points_per_chunk(vae, num_samples))
    cache = problems if problems is not None else {}

    def chunk(xb, yb):
        if key not in cache:
            cache[key] = problem_of(vae, xb, yb, guide)
        return elbo_terms(vae, xb, yb, num_samples, guide, problem=cache[key])

    with evaluating(*_owners(vae, guide)), job(
            "ELBO evaluation", x.shape[0] * num_samples, "ELBO draw",
            "lower the ELBO samples (--elbo-samples) or the number of points"):
        terms = _batched(chunk, x, y, batch_size)
    return {k: Estimate.of(v) for k, v in terms.items()}


def log_importance_weights(
    vae: Any, x: torch.Tensor, y: torch.Tensor | None, num_particles: int,
    guide: Callable[..., Any] | None = None, problem: Problem | None = None,
) -> torch.Tensor:
    """log w_k = log p(x, z_k) - log q(z_k | x) for ``num_particles`` draws z_k ~ q per point,
    shape ``(K, B)``, over every latent site (:meth:`Problem.log_weights`)."""
    problem = problem or problem_of(vae, x, y, guide)
    return problem.log_weights(x, y, num_particles)


def iwae_log_likelihood(
    vae: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 2**23,
    progress: Callable[[int], None] | None = None,
    guide: Callable[..., Any] | None = None,
    return_stderr: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The IWAE bound ``L_K(x)`` per data point (shape ``(N,)``), in nats, with ``guide``
    (default ``vae.guide``) as the proposal; with ``return_stderr`` also its delta-method
    standard error per point (:class:`LogMeanExp`).

    :param num_samples: K, importance samples per data point.
    :param batch_size: data points per chunk.
    :param max_elements: bound on ``samples × points × per-draw elements`` held at once (the
        decoder's activations and the likelihood's parameters per draw,
        :func:`~pyro_vae.resources.per_sample_elements`); sets the samples drawn per chunk.
    :param progress: called with the number of data points finished after each chunk.
    """
    check_inputs(vae, x, y, num_samples=num_samples, batch_size=batch_size,
                 max_elements=max_elements)
    num_params = vae.likelihood.num_params if hasattr(vae, "likelihood") else 1
    # the decoder's hidden activations per draw, not only the data's dimensions
    dims = per_sample_elements(vae) if isinstance(vae, torch.nn.Module) \
        else math.prod(x.shape[1:]) * num_params
    out = []
    with evaluating(*_owners(vae, guide)), job(
            "IWAE log-likelihood", x.shape[0] * num_samples, "importance draw",
            "lower --iw-samples or the number of points") as work:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            yb = None if y is None else y[start:start + batch_size]
            k_chunk = max(1, min(num_samples, max_elements // (xb.shape[0] * dims)))
            running = LogMeanExp(xb.shape[0], x.device)
            problem = problem_of(vae, xb, yb, guide)
            while running.count < num_samples:
                k = min(k_chunk, num_samples - running.count)
                running.add(problem.log_weights(xb, yb, k))
                work.advance(k * xb.shape[0])
            out.append(running.result())
            if progress is not None:
                progress(xb.shape[0])
    values = torch.cat([v for v, _ in out])
    return (values, torch.cat([e for _, e in out])) if return_stderr else values


class LogMeanExp:
    """Streaming log (1/K) Σ_k w_k from chunks of log w (each (k, N)), in float64, with the
    delta-method standard error of that log mean: se ≈ sd(w) / (√K · mean(w)) =
    √(Σw² / (Σw)² − 1/K) = √(1/ESS − 1/K). The error only sees the weights drawn: a proposal
    that misses posterior mass looks precise and is low."""

    def __init__(self, num_points: int, device: torch.device | str = "cpu") -> None:
        self.log_sum = torch.full((num_points,), -math.inf, dtype=torch.float64, device=device)
        self.log_sum_sq = self.log_sum.clone()
        self.count = 0

    def add(self, log_w: torch.Tensor) -> None:
        log_w = log_w.detach().double()
        self.log_sum = torch.logaddexp(self.log_sum, torch.logsumexp(log_w, 0))
        self.log_sum_sq = torch.logaddexp(self.log_sum_sq, torch.logsumexp(2 * log_w, 0))
        self.count += log_w.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log mean, standard error), each (N,) float32."""
        inv_ess = torch.exp(self.log_sum_sq - 2 * self.log_sum)
        stderr = (inv_ess - 1.0 / self.count).clamp_min(0).sqrt()
        return (self.log_sum - math.log(self.count)).float(), stderr.float()


def quadrature_log_likelihood(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, num_nodes: int = 4001,
    z_max: float = 9.0, batch_size: int = 100,
) -> torch.Tensor:
    """The model's exact log p(x) = log ∫ p(x | z) p(z) dz per point, for a one-dimensional
    latent, by the trapezoidal rule on ``num_nodes`` nodes of [−z_max, z_max] in log space.

    Exact to many digits when p(x | z) varies smoothly on the node spacing (2·z_max /
    (num_nodes − 1) = 0.0045 by default; a decoder is a smooth function of z) and the prior's
    mass beyond ±z_max is negligible (N(9; 0, 1) ≈ 10⁻¹⁸): the ground truth against which AIS,
    IWAE and the ELBOs of a trained one-dimensional model (the circle's) are checked.
    """
    if vae.latent_dim != 1:
        raise ConfigError(f"quadrature needs a one-dimensional latent, not {vae.latent_dim}; "
                          "use iwae_log_likelihood or AIS")
    check_count("num_nodes", num_nodes)
    z = torch.linspace(-z_max, z_max, num_nodes, device=x.device).unsqueeze(-1)
    log_dz = torch.full((num_nodes,), math.log(2 * z_max / (num_nodes - 1)), device=x.device,
                        dtype=torch.float64)
    log_dz[0] = log_dz[-1] = log_dz[0] - math.log(2)
    y = y if vae.conditional else None
    out = []
    with evaluating(vae):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            yb = None if y is None else y[start:start + batch_size]
            zb = z.unsqueeze(1).expand(num_nodes, xb.shape[0], 1)
            log_joint = (vae.observation_distribution(zb, yb).log_prob(xb)
                         + vae.prior(xb.shape[0], x.device).log_prob(zb)).double()
            out.append(torch.logsumexp(log_joint + log_dz.unsqueeze(-1), 0))
    return torch.cat(out)
