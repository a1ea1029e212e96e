"""Test-set ELBO and importance-weighted log-likelihood, per data point, in nats.

ELBO per point (:func:`elbo_terms`), read off a guide trace replayed through the model::

    ELBO(x) = E_q[log p_θ(x | z)] - KL(q_φ(z | x) ‖ p(z))
              └── "recon", S samples ┘ └── "kl", closed form ┘

IWAE estimate (:func:`iwae_log_likelihood`, Burda et al. 2016) with K samples z_k ~ q(z|x)::

    log p(x) ≥ L_K(x) = log (1/K) Σ_k p_θ(x | z_k) p(z_k) / q_φ(z_k | x)

``E[L_K]`` increases with K towards log p(x) (``L_1`` is the ELBO). It is computed in chunks of
data points and of samples, with a running log-sum-exp, so memory is bounded by ``max_elements``
whatever K is; K = 5000 is the literature's protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae.data import DataSet, validate_arrays
from pyro_vae.errors import ConfigError
from pyro_vae.sites import LATENT_SITE, OBS_SITE
from pyro_vae.vae import VAE


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


@contextmanager
def evaluating(vae: VAE):
    """Eval mode (batch norm uses running statistics) and no autograd, restored afterwards."""
    modes = {name: m.training for name, m in vae.modules().items()}
    vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for name, m in vae.modules().items():
            m.train(modes[name])


def elbo_terms(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int = 1
) -> dict[str, torch.Tensor]:
    """Per-point ``recon`` (MC over ``num_samples`` draws of z), ``kl`` (exact) and ``elbo``.

    Uses ``poutine.trace`` of the guide and ``poutine.replay`` of the model, reading each site's
    unscaled ``fn.log_prob``: any model with sites ``"z"`` and ``"x"`` is evaluated the same way.
    """
    recon = torch.zeros(x.shape[0], device=x.device)
    kl = None
    for _ in range(num_samples):
        guide_tr = poutine.trace(vae.guide).get_trace(x, y)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
        obs = model_tr.nodes[OBS_SITE]
        recon = recon + obs["fn"].log_prob(obs["value"]) / num_samples
        if kl is None:
            kl = kl_divergence(guide_tr.nodes[LATENT_SITE]["fn"], model_tr.nodes[LATENT_SITE]["fn"])
    assert kl is not None
    return {"elbo": recon - kl, "recon": recon, "kl": kl}


def latent_means(vae: VAE, data: DataSet, max_points: int = 5000) -> torch.Tensor:
    """Posterior means μ(x) of up to ``max_points`` test points, shape (n, L)."""
    x = data.x_test[:max_points]
    y = data.y_test[:max_points] if vae.conditional and data.y_test is not None else None
    with evaluating(vae):
        return torch.cat([vae.encode(x[i:i + 1000], None if y is None else y[i:i + 1000])[0]
                          for i in range(0, x.shape[0], 1000)])


def active_units(vae: VAE, data: DataSet, threshold: float = 0.01) -> int:
    """Latent units in use (Burda et al. 2016): unit u is active when the variance over test
    points of its posterior mean, ``Cov_x(E_q[z_u | x])``, exceeds ``threshold``."""
    return int((latent_means(vae, data).var(0) > threshold).sum())


def check_inputs(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                 **counts: int) -> None:
    """Raise :class:`DataError` / :class:`ConfigError` for data the evaluation cannot score:
    empty, NaN/inf, wrong shape, outside the likelihood's support, labels that do not match, or
    a count (samples, batch size) below 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
    validate_arrays(x, y, "the data to evaluate")
    vae.check_shape(x)
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
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 1000,
    num_samples: int = 1,
) -> dict[str, Estimate]:
    """Mean ELBO, reconstruction and KL per data point over ``x``, with standard errors."""
    check_inputs(vae, x, y, batch_size=batch_size, num_samples=num_samples)
    with evaluating(vae):
        terms = _batched(lambda xb, yb: elbo_terms(vae, xb, yb, num_samples), x, y, batch_size)
    return {k: Estimate.of(v) for k, v in terms.items()}


def iwae_log_likelihood(
    vae: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 5000,
    batch_size: int = 100,
    max_elements: int = 2**23,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The IWAE bound ``L_K(x)`` per data point (shape ``(N,)``), in nats.

    :param num_samples: K, importance samples per data point.
    :param batch_size: data points per chunk.
    :param max_elements: bound on ``samples × points × data dims`` held at once; sets the
        number of samples drawn per chunk.
    :param progress: called with the number of data points finished after each chunk.
    """
    check_inputs(vae, x, y, num_samples=num_samples, batch_size=batch_size,
                 max_elements=max_elements)
    dims = math.prod(vae.event_shape) * vae.likelihood.num_params
    out = []
    with evaluating(vae):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            yb = None if y is None else y[start:start + batch_size]
            q = vae.posterior(xb, yb)
            prior = vae.prior(xb.shape[0], xb.device)
            k_chunk = max(1, min(num_samples, max_elements // (xb.shape[0] * dims)))
            running = torch.full((xb.shape[0],), -math.inf, device=x.device,
                                 dtype=torch.float64)
            done = 0
            while done < num_samples:
                k = min(k_chunk, num_samples - done)
                z = q.sample((k,))  # (k, B, L)
                log_w = (vae.observation_distribution(z, yb).log_prob(xb)
                         + prior.log_prob(z) - q.log_prob(z))
                running = torch.logaddexp(running, torch.logsumexp(log_w.double(), dim=0))
                done += k
            out.append((running - math.log(num_samples)).float())
            if progress is not None:
                progress(xb.shape[0])
    return torch.cat(out)
