"""Annealed importance sampling (AIS) estimates of log p(x), and bidirectional Monte Carlo (BDMC)
bounds that sandwich the true value on data simulated from the model.

**AIS** (Neal 2001), per data point: from z_0 ~ p_0 (the prior p(z), or the guide q(z | x)),
through the intermediate targets π_β(z) ∝ p_0(z)^{1−β} p(x, z)^{β} with 0 = β_0 < … < β_T = 1,

    log w = Σ_t (β_t − β_{t−1}) [log p(x, z_{t−1}) − log p_0(z_{t−1})],
    z_t ~ HMC step leaving π_{β_t} invariant,

and E[w] = p(x): log p̂(x) = log (1/C) Σ_c w_c over C chains is a stochastic *lower* bound
(Jensen), tight as T grows. The transitions are Hamiltonian Monte Carlo written in torch
(``leapfrog_steps`` leapfrog steps, a Metropolis correction), batched over chains and points,
with one step size per point adapted towards an acceptance rate of 0.65 from the acceptances
of a few *pilot* chains that move alongside but carry no weight (each transition leaves its
target invariant, and the kernels never depend on the weighted chains' own paths, which would
bias their weights). The schedule is the sigmoid of Grosse et al. (2015) (δ = 4), or linear.

**BDMC** (Grosse et al. 2015; Wu et al. 2017): for x simulated from the model together with its
latent z*, z* is an exact posterior sample, so AIS run in *reverse* (β from 1 to 0, starting at
z*) gives w_rev with E[w_rev] = 1 / p(x): −log (1/C) Σ_c w_rev,c is a stochastic *upper* bound.
The true log p(x) lies between the forward and the reverse estimates; the sandwich width bounds
the error of both.

References: Neal (2001) "Annealed importance sampling"; Grosse, Ghahramani & Adams (2015)
"Sandwiching the marginal likelihood using bidirectional Monte Carlo"; Wu, Burda, Salakhutdinov
& Grosse (2017) "On the quantitative analysis of decoder-based generative models".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae.errors import ConfigError, check_count
from pyro_vae.models.discrete_vae import require_gaussian
from pyro_vae.models.vae import VAE, evaluating, frozen
from pyro_vae.resources import check_draws, points_per_chunk

TARGET_ACCEPTANCE = 0.65


def schedule(num_steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1: ``sigmoid`` (Grosse et al. 2015) or ``linear``."""
    if kind == "linear":
        return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind != "sigmoid":
        raise ConfigError(f"unknown AIS schedule {kind!r}; use sigmoid or linear")
    s = torch.sigmoid(torch.linspace(-delta, delta, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISResult:
    """Per point: the log p(x) estimate, its standard error, and the effective sample size of
    the final weights; the mean acceptance rate of the HMC transitions.

    The standard error is the delta method over the C chains: with w_c the weights,
    se(log p̂) ≈ sd(w) / (√C · mean(w)). It measures the spread of the weights actually drawn,
    so it misses the mass no chain reached (a lower bound's bias): trust it when the ESS is a
    fair fraction of C, and check it with BDMC where the model can simulate its data."""

    log_px: torch.Tensor
    ess: torch.Tensor
    acceptance: float
    stderr: torch.Tensor | None = None


class _Annealer:
    """The pieces of one AIS run for a batch: log p(x, z), log p_0(z) and its sampler."""

    def __init__(self, vae: VAE, x: torch.Tensor, y: torch.Tensor | None, proposal: str,
                 chains: int) -> None:
        if proposal not in ("prior", "guide"):
            raise ConfigError(f"unknown AIS proposal {proposal!r}; use prior or guide")
        self.vae, self.x, self.y, self.chains = vae, x, y, chains
        b = x.shape[0]
        self.prior = vae.prior(b, x.device)
        self.start = self.prior if proposal == "prior" else vae.posterior(x, y)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(z) + self.vae.observation_distribution(z, self.y).log_prob(
            self.x)

    def log_start(self, z: torch.Tensor) -> torch.Tensor:
        return self.start.log_prob(z)

    def sample_start(self) -> torch.Tensor:
        return self.start.sample((self.chains,))

    def log_target(self, z: torch.Tensor, beta: float) -> torch.Tensor:
        return (1 - beta) * self.log_start(z) + beta * self.log_joint(z)


def _hmc_step(annealer: _Annealer, z: torch.Tensor, beta: float, step: torch.Tensor,
              leapfrog_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One HMC transition leaving π_β invariant, per chain and point; returns (z, accepted)."""

    def potential_and_grad(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.detach().requires_grad_(True)
        u = -annealer.log_target(v, beta)
        (g,) = torch.autograd.grad(u.sum(), v)
        return u.detach(), g

    eps = step.unsqueeze(-1)
    p0 = torch.randn_like(z)
    u0, g = potential_and_grad(z)
    q, p = z, p0 - 0.5 * eps * g
    for i in range(leapfrog_steps):
        q = q + eps * p
        u1, g = potential_and_grad(q)
        if i < leapfrog_steps - 1:
            p = p - eps * g
    p = p - 0.5 * eps * g
    log_accept = (u0 + 0.5 * (p0 ** 2).sum(-1)) - (u1 + 0.5 * (p ** 2).sum(-1))
    accept = torch.log(torch.rand_like(log_accept)) < torch.nan_to_num(log_accept, nan=-math.inf)
    return torch.where(accept.unsqueeze(-1), q, z).detach(), accept


def _anneal(annealer: _Annealer, z: torch.Tensor, betas: torch.Tensor, leapfrog_steps: int,
            step_size: float, pilot: torch.Tensor | None = None,
            steps: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """Run the chains ``z`` (C, B, L) through ``betas``; returns (log w, final z, acceptance
    rate, the step sizes used, (T, B)).

    Step sizes are either the fixed schedule ``steps`` or adapted per point towards
    :data:`TARGET_ACCEPTANCE` from the acceptances of the ``pilot`` chains (P, B, L), which move
    alongside with the same kernels but carry no weight: the kernels then never depend on the
    weighted chains' own paths, which would bias their weights (an adaptive kernel must be
    chosen independently of the chain it moves). Without either, the step stays ``step_size``.
    """
    chains = z.shape[0]
    if steps is None and pilot is not None:
        z = torch.cat([z, pilot])
    log_w = torch.zeros(chains, z.shape[1], dtype=torch.float64, device=z.device)
    step = torch.full(z.shape[1:-1], step_size, device=z.device)
    used, accepted = [], 0.0
    for t in range(1, len(betas)):
        b0, b1 = float(betas[t - 1]), float(betas[t])
        with torch.no_grad():
            log_w += (b1 - b0) * (annealer.log_joint(z[:chains])
                                  - annealer.log_start(z[:chains])).double()
        current = steps[t - 1] if steps is not None else step
        used.append(current)
        z, acc = _hmc_step(annealer, z, b1, current.expand(z.shape[:-1]), leapfrog_steps)
        if steps is None and pilot is not None:
            rate = acc[chains:].float().mean(0)
            step = step * torch.where(rate > TARGET_ACCEPTANCE, 1.02, 0.98)
        accepted += float(acc[:chains].float().mean())
    return log_w, z[:chains], accepted / max(1, len(betas) - 1), torch.stack(used)


def ais_log_likelihood(
    vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, num_steps: int = 2000,
    num_chains: int = 16, leapfrog_steps: int = 2, step_size: float = 0.1,
    proposal: str = "prior", schedule_kind: str = "sigmoid", batch_size: int = 100,
    pilot_chains: int = 4,
) -> AISResult:
    """AIS estimate of log p(x) per point of ``x`` (module docstring).

    The defaults spend the gradient evaluations on many intermediate distributions with short
    HMC trajectories: on a linear-Gaussian model (exact log p(x) known) T = 4000 with 3
    leapfrog steps was within 0.022 nats of the truth at every point, T = 1000 with 10 leapfrog
    steps (about the same cost) 0.10, and T = 6000 with 2 leapfrog steps and 32 chains 0.018.

    :param pilot_chains: unweighted chains per point whose acceptances adapt the step size
        (0: the step stays ``step_size``)."""
    require_gaussian(vae, "AIS (HMC on z)")
    for name, value in (("num_steps", num_steps), ("num_chains", num_chains),
                        ("leapfrog_steps", leapfrog_steps), ("batch_size", batch_size)):
        check_count(name, value)
    betas = schedule(num_steps, schedule_kind)
    y = y if vae.conditional else None
    if isinstance(pilot_chains, bool) or not isinstance(pilot_chains, int) or pilot_chains < 0:
        raise ConfigError(f"pilot_chains must be an integer ≥ 0, got {pilot_chains!r}; "
                          "0 keeps the step size fixed")
    draws = num_chains + pilot_chains
    check_draws(vae, draws, "--ais-chains")
    # points per batch: chains × points × the decoder's activations per draw within a chunk
    batch_size = min(batch_size, points_per_chunk(vae, draws))
    out, ess, acc, err = [], [], [], []
    with frozen(vae):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            yb = None if y is None else y[start:start + batch_size]
            annealer = _Annealer(vae, xb, yb, proposal, num_chains)
            with torch.no_grad():
                z0 = annealer.sample_start()
                pilot = annealer.start.sample((pilot_chains,)) if pilot_chains else None
            log_w, _, a, _ = _anneal(annealer, z0, betas, leapfrog_steps, step_size, pilot)
            out.append((torch.logsumexp(log_w, 0) - math.log(num_chains)).float())
            w = torch.softmax(log_w, 0)
            ess.append((1.0 / (w ** 2).sum(0)).float())
            # w_c / mean(w) = C · softmax: sd of that over √C is the delta-method error
            err.append(((num_chains * w).std(0) / math.sqrt(num_chains)).float()
                       if num_chains > 1 else torch.full_like(w[0], math.inf).float())
            acc.append(a)
    return AISResult(torch.cat(out), torch.cat(ess), sum(acc) / len(acc), torch.cat(err))


@dataclass
class Sandwich:
    """BDMC on simulated data: per point the forward (lower) and reverse (upper) estimates."""

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        return self.upper - self.lower


def bdmc(vae: VAE, num_points: int = 16, num_steps: int = 2000, num_chains: int = 16,
         leapfrog_steps: int = 2, step_size: float = 0.1, schedule_kind: str = "sigmoid",
         y: torch.Tensor | None = None, pilot_chains: int = 4) -> Sandwich:
    """Simulate (z*, x) from the model, then forward AIS (lower bound) and reverse AIS from z*
    (upper bound) on the same x. The reverse run uses the forward run's step sizes, reversed:
    adapting on chains that start at z* would make its kernels depend on z*."""
    require_gaussian(vae, "BDMC (HMC on z)")
    check_count("num_points", num_points)
    check_count("num_chains", num_chains)
    betas = schedule(num_steps, schedule_kind)
    with evaluating(vae):
        z_star = vae.prior(num_points, vae.device).sample()
        x = vae.observation_distribution(z_star, y).sample()
    yy = y if vae.conditional else None
    with frozen(vae):
        annealer = _Annealer(vae, x, yy, "prior", num_chains)
        with torch.no_grad():
            z0 = annealer.sample_start()
            pilot = annealer.start.sample((pilot_chains,)) if pilot_chains else None
        log_w, _, _, steps = _anneal(annealer, z0, betas, leapfrog_steps, step_size, pilot)
        lower = (torch.logsumexp(log_w, 0) - math.log(num_chains)).float()
        # the forward transition into β_t used steps[t − 1]; the reverse one into β_{T−t}
        # takes the forward step of that temperature (β_0 borrows β_1's)
        reverse = torch.cat([steps.flip(0)[1:], steps[:1]])
        z = z_star.expand(num_chains, *z_star.shape).clone()
        log_w, _, _, _ = _anneal(annealer, z, betas.flip(0), leapfrog_steps, step_size,
                                 steps=reverse)
    # reversed, the increments are (β_{t−1} − β_t) f(z) with f = log p(x, z) − log p_0(z)
    upper = -(torch.logsumexp(log_w, 0) - math.log(num_chains)).float()
    return Sandwich(lower, upper, x, z_star)
