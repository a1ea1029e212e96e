"""AIS, BDMC and NUTS on users' own models (the zoo of ``tests/zoo.py`` and a model with a
positive latent), against exact references: log p(x) in closed form, the exact posterior.

Every number is seeded. The tolerances are statistical and stated where they are set; each
assertion was checked to fail under a mutation of the code (dropping the log |det J| of the
unconstrained map, which the positive latent of :func:`scale_mixture` needs; annealing only the
first latent site; the delta-method standard error).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ModelGuide
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.ais import ais_log_likelihood, bdmc, log_mean_exp_stderr
from pyro_vae.infer.mcmc import nuts_posterior, nuts_samples
from tests.common import linear_gaussian_vae
from tests.zoo import make_case


def zoo(name: str, guide_init: str = "near"):
    case = make_case(name, guide_init=guide_init)
    return case, ModelGuide(case.model, case.guide)


# --------------------------------------------------------------------------- a positive latent
SHAPE, RATE, DIM = 3.0, 2.0, 4


def scale_mixture(num_points: int = 8, seed: int = 0):
    """x | λ ~ N(μ, I/λ), λ ~ Gamma(a, b) per point (a Student-t marginal): a positive latent,
    so its unconstrained map has a log |det J| ≠ 0. Exact: log p(x) and λ | x ~ Gamma(a + D/2,
    b + ‖x − μ‖²/2). Returns (ModelGuide, x, exact log p(x), posterior shape, posterior rate)."""
    mu = _mu(seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def model(x):
        with pyro.plate("points", x.shape[0]):
            lam = pyro.sample("precision", dist.Gamma(x.new_full((x.shape[0],), SHAPE), RATE))
            pyro.sample("x", dist.Normal(mu, lam.rsqrt().unsqueeze(-1)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("points", x.shape[0]):
            pyro.sample("precision", dist.LogNormal(x.new_zeros(x.shape[0]), 0.5))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lam = torch.distributions.Gamma(SHAPE, RATE).sample((num_points,))
    x = mu + torch.randn(num_points, DIM, generator=gen) * lam.rsqrt().unsqueeze(-1)
    post_shape, post_rate = _posterior(x, mu)
    return ModelGuide(model, guide), x, scale_mixture_log_px(x, mu), post_shape, post_rate


def _mu(seed: int = 0) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed))


def _posterior(x: torch.Tensor, mu: torch.Tensor) -> tuple[float, torch.Tensor]:
    return SHAPE + DIM / 2, RATE + 0.5 * ((x - mu) ** 2).sum(-1).double()


def scale_mixture_log_px(x: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) per point of :func:`scale_mixture` (seed 0), a multivariate Student t."""
    post_shape, post_rate = _posterior(x, _mu() if mu is None else mu)
    return (SHAPE * math.log(RATE) - math.lgamma(SHAPE) - DIM / 2 * math.log(2 * math.pi)
            + math.lgamma(post_shape) - post_shape * torch.log(post_rate))


# --------------------------------------------------------------------------- AIS
@pytest.mark.parametrize("name", ["hierarchy_topdown", "hierarchy_bottomup", "code_site",
                                  "pyro_example_vae", "labelled"])
def test_ais_from_the_prior_reaches_the_exact_log_likelihood_of_user_models(name):
    """Within 0.3 nats at every point (the issue's bar), annealing all latent sites at once
    from their joint prior: z2 and z1 of the hierarchies, a site named ``code`` with (2, 2)
    observations, Pyro's own example VAE (``model(x)``, sites ``latent``/``obs``), a model of
    ``(x, y)``. Seeds 0-3 gave at most 0.16 nats (0.26 at T = 400, 0.30 at T = 300); with
    chains that never move (plain importance sampling from the prior) up to 1.8 nats, and
    annealing only the first site of a hierarchy missed too."""
    case, vae = zoo(name)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, case.x, case.y, num_steps=500, num_chains=32)
    error = result.log_px.double() - case.exact_log_px(case.x, case.y)
    assert float(error.abs().max()) < 0.3, error
    assert 0.4 < result.acceptance < 0.95


@pytest.mark.parametrize("name", ["hierarchy_topdown", "hierarchy_bottomup", "flow_guide"])
def test_ais_from_the_users_guide_reaches_the_exact_log_likelihood(name):
    """The guide as p_0 needs its density at any u: of both sites, in the guide's own order
    (q(z1 | x) q(z2 | z1) for the bottom-up guide, the reverse of the model's), and of a flow
    guide, by inverting the flow. A short schedule is then within 0.3 nats at every point
    (seeds 0-3: at most 0.15); the same chains without moves (importance sampling from the
    guide) missed by 0.37 to 0.60, and p_0's density taken from the prior while drawing from
    the guide by up to 2.7."""
    case, vae = zoo(name)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, case.x, case.y, num_steps=100, num_chains=16,
                                proposal="guide")
    error = result.log_px.double() - case.exact_log_px(case.x, case.y)
    assert float(error.abs().max()) < 0.3, error


def test_ais_on_a_positive_latent_needs_the_log_jacobian():
    """λ > 0 is annealed as log λ: the target is p(x, e^u) e^u. Dropping the e^u (the log
    |det J|) from both the start and the target moved the estimates by up to 0.6 nats (the
    chains then sample the wrong targets); with it, the error is below 0.3."""
    vae, x, exact, _, _ = scale_mixture()
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=300, num_chains=16)
    error = result.log_px.double() - exact
    assert float(error.abs().max()) < 0.3, error


def test_guide_proposal_with_an_auxiliary_guide_is_refused_and_the_prior_works():
    """AutoNormal's guide samples an auxiliary site, so its density at a given z is not
    available: the guide proposal is refused in one line; from the prior, the model (one site
    ``z``, as Pyro examples name it) is within 0.3 nats."""
    case, vae = zoo("autonormal")
    with pytest.raises(ConfigError, match="auxiliary"):
        ais_log_likelihood(vae, case.x, num_steps=5, num_chains=2, proposal="guide")
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, case.x, num_steps=300, num_chains=32)
    assert float((result.log_px.double() - case.exact_log_px(case.x)).abs().max()) < 0.3


# --------------------------------------------------------------------------- standard error
@pytest.mark.parametrize("num_steps", [10, 150])
def test_the_reported_standard_error_matches_the_spread_of_repeated_runs(num_steps):
    """60 seeded repeats of AIS (16 chains) on the 10 points of the linear-Gaussian model of the
    issue: the spread of the estimates across the repeats is the true error. Where the
    reported standard error is finite in at least 3 repeats, its root mean square over them
    is within a factor 1.5 of that spread; elsewhere it is NaN (refused). At T = 150 it is
    reported in at least 90 % of the runs at every point; at T = 10 it is refused, and the
    former delta-method error is more than 1.5× too small at some point (the issue's 0.75 vs
    1.70), so this test fails on it.

    The repeats run as one call on the 10 points tiled 60 times (each point's chains, pilot
    chains and step sizes are its own, so the copies are independent runs), and the error of
    each repeat is computed from its 10 points' log-weights as a call on those 10 points
    computes it; the wiring of ``stderr`` is checked on the call itself."""
    vae = linear_gaussian_vae()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * 1.5
    repeats, chains = 60, 16
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x.repeat(repeats, 1), num_steps=num_steps,
                                num_chains=chains, batch_size=10 * repeats)
    assert torch.equal(result.stderr.isnan(), log_mean_exp_stderr(result.log_weights).isnan())
    log_w = result.log_weights.reshape(chains, repeats, 10)
    log_px = torch.logsumexp(log_w, 0) - math.log(chains)  # (repeats, 10)
    stderr = torch.stack([log_mean_exp_stderr(log_w[:, r]) for r in range(repeats)]).double()
    spread = log_px.std(0)
    reported = torch.isfinite(stderr)
    count = reported.sum(0)
    rms = torch.sqrt(torch.where(reported, stderr ** 2, 0.0).sum(0) / count.clamp(min=1))
    shown = count >= 3
    ratio = rms[shown] / spread[shown]
    # the spread of 60 repeats is itself known to about ±10 % (more with heavy tails)
    assert bool(((ratio > 1 / 1.5) & (ratio < 1.5)).all()), ratio
    if num_steps == 150:
        assert float(reported.float().mean(0).min()) > 0.9
    else:
        w = torch.softmax(log_w, 0)
        delta = (chains * w).std(0) / math.sqrt(chains)
        assert float((delta.pow(2).mean(0).sqrt() / spread).min()) < 1 / 1.5


# --------------------------------------------------------------------------- BDMC
@pytest.mark.parametrize("name", ["hierarchy_topdown", "pyro_example_vae"])
def test_bdmc_sandwiches_the_exact_log_likelihood_of_simulated_data(name):
    """(z*, x) simulated from the model (all latent sites; the observed site unconditioned on
    a template batch); forward AIS from the prior is a lower bound, reverse AIS from z* an
    upper bound, each in expectation: the mean over the points of each lies on its side of the
    exact mean log p(x) up to 0.1 nats of Monte Carlo noise, and at T = 300 the sandwich is
    narrow. The short run (T = 10) is the check that z* is the posterior draw that goes with
    x: its upper bound was 0.2 to 1.0 nats above the exact mean over seeds 0-2, and 0.3 to
    1.8 nats *below* it when z* was shuffled across the points."""
    case, vae = zoo(name)
    pyro.set_rng_seed(0)
    sandwich = bdmc(vae, x=case.x, num_steps=300, num_chains=8)
    exact = case.exact_log_px(sandwich.x).float()
    assert sandwich.x.shape == case.x.shape and not torch.equal(sandwich.x, case.x)
    assert set(sandwich.latents) == set(case.latent_sites)
    assert float(sandwich.lower.mean()) <= float(exact.mean()) + 0.1
    assert float(sandwich.upper.mean()) >= float(exact.mean()) - 0.1
    assert -0.1 < float(sandwich.width.mean()) < 0.3
    assert float((sandwich.lower - exact).abs().max()) < 0.3
    short = bdmc(vae, x=case.x, num_steps=10, num_chains=8)
    exact = case.exact_log_px(short.x).float()
    assert float(short.upper.mean()) >= float(exact.mean()) - 0.1
    assert float(short.lower.mean()) <= float(exact.mean()) + 0.3


def test_bdmc_on_a_positive_latent():
    """The same sandwich for λ > 0 (annealed as log λ), against the exact Student-t log p(x)."""
    vae, x, _, _, _ = scale_mixture()
    pyro.set_rng_seed(0)
    sandwich = bdmc(vae, x=x, num_steps=300, num_chains=8)
    assert sandwich.z.shape == (8,) and bool((sandwich.z > 0).all())
    exact = scale_mixture_log_px(sandwich.x)
    assert float(sandwich.lower.mean()) <= float(exact.mean()) + 0.1
    assert float(sandwich.upper.mean()) >= float(exact.mean()) - 0.1
    assert -0.1 < float(sandwich.width.mean()) < 0.3


def test_bdmc_of_a_user_model_needs_a_template_batch():
    _, vae = zoo("pyro_example_vae")
    with pytest.raises(ConfigError, match="template"):
        bdmc(vae, num_points=4, num_steps=5, num_chains=2)


# --------------------------------------------------------------------------- NUTS
def _whitened(samples: dict[str, torch.Tensor], posterior, sites) -> torch.Tensor:
    """Draws of the concatenated sites mapped by the exact posterior to N(0, I): (S, B, d)."""
    flat = torch.cat([samples[k].reshape(*samples[k].shape[:2], -1).double() for k in sites],
                     -1)
    chol = torch.linalg.cholesky(posterior.cov)
    return torch.linalg.solve_triangular(chol, (flat - posterior.mean).unsqueeze(-1),
                                         upper=False).squeeze(-1)


def test_nuts_returns_every_site_of_a_hierarchy_with_the_exact_posterior_moments():
    """NUTS over (z2, z1) of 2 points (10 unconstrained numbers): the draws whitened by the
    exact joint posterior are N(0, I). With 150 draws and an effective sample size of 54 to
    190 per coordinate (seeds 0-4), a whitened mean has a standard error of 0.07 to 0.14:
    each is within 0.4 of 0, their average over the 2 points within 0.3; the whitened
    covariance averaged over the points is within 0.4 of the identity entrywise (3-4 standard
    errors), and the mean squared norm per coordinate within 0.25 of 1. Seeds 0-4 gave at
    most 0.24, 0.13, 0.26; a potential without the likelihood (NUTS on the prior) fails it, as
    would a site left out or a wrong z1-z2 covariance."""
    case, vae = zoo("hierarchy_topdown")
    x = case.x[:2]
    samples = nuts_samples(vae, x, num_samples=150, warmup_steps=100, seed=0)
    assert set(samples) == {"z1", "z2"}
    assert samples["z2"].shape == (150, 2, 2) and samples["z1"].shape == (150, 2, 3)
    e = _whitened(samples, case.exact_posterior(x), ("z2", "z1"))
    assert float(e.mean(0).abs().max()) < 0.4
    assert float(e.mean((0, 1)).abs().max()) < 0.3
    cov = torch.einsum("sbi,sbj->bij", e - e.mean(0), e - e.mean(0)).mean(0) / (e.shape[0] - 1)
    assert float((cov - torch.eye(5, dtype=cov.dtype)).abs().max()) < 0.4, cov
    assert abs(float((e ** 2).mean()) - 1.0) < 0.25
    multi = nuts_posterior(vae, x, num_samples=3, warmup_steps=3, seed=0)
    assert isinstance(multi, dict) and set(multi) == {"z1", "z2"}


def test_nuts_on_a_positive_latent_samples_its_exact_gamma_posterior():
    """λ | x ~ Gamma(a + D/2, b + ‖x − μ‖²/2): the draws stay positive and their mean over the
    draws, standardized by the exact posterior's sd, averages to 0 within 0.15 over 8 points
    (effective sample sizes 110 to 260 per point: a standard error of about 0.03; seeds 0-4
    gave at most 0.03; the mutation without log |det J| samples Gamma(a + D/2 − 1, ·), 0.45
    sd lower); their variance is within 30 % of the exact one, pooled (seeds 0-4: 0.90 to
    1.08). The single site comes back as a tensor (S, B), as nuts_posterior always returned
    it."""
    vae, x, _, shape, rate = scale_mixture()
    draws = nuts_posterior(vae, x, num_samples=150, warmup_steps=80, seed=0)
    assert isinstance(draws, torch.Tensor) and draws.shape == (150, 8)
    assert bool((draws > 0).all())
    mean, sd = shape / rate, math.sqrt(shape) / rate
    z = (draws.double() - mean) / sd
    assert abs(float(z.mean())) < 0.15, z.mean(0)
    assert 0.7 < float(z.var(0).mean()) < 1.3


def test_nuts_leaves_the_parameters_trainable_and_the_rng_untouched():
    case, vae = zoo("code_site")
    state = torch.get_rng_state()
    draws = nuts_posterior(vae, case.x[:2], num_samples=5, warmup_steps=5, seed=0)
    assert draws.shape == (5, 2, 3)
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.requires_grad for m in case.modules.values() for p in m.parameters())
    assert all(p.requires_grad for _, p in pyro.get_param_store().named_parameters())


def test_an_autodiagonalnormal_guide_is_not_needed_by_nuts_or_ais_from_the_prior():
    """AutoDiagonalNormal draws one joint vector outside the data plate: it can be neither a
    per-point proposal nor NUTS's start (both refused in one line), but NUTS started from the
    prior and AIS from the prior need no guide."""
    case, vae = zoo("autodiagonalnormal")
    for call in (lambda: ais_log_likelihood(vae, case.x, num_steps=3, num_chains=2,
                                            proposal="guide"),
                 lambda: nuts_samples(vae, case.x, num_samples=3, warmup_steps=3)):
        with pytest.raises(PyroVAEError, match="outside the data plate") as info:
            call()
        assert "\n" not in str(info.value)
    draws = nuts_samples(vae, case.x, num_samples=3, warmup_steps=3, seed=0, init="prior")
    assert set(draws) == {"z"} and draws["z"].shape == (3, 8, 2)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, case.x, num_steps=20, num_chains=4)
    assert bool(torch.isfinite(result.log_px).all())


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name,match", [("mixture_discrete_continuous", "discrete"),
                                        ("global_latent", "global"),
                                        ("no_plate", "plate")])
def test_models_the_tools_cannot_take_are_refused_in_one_line(name, match):
    case, vae = zoo(name)
    for call in (lambda: ais_log_likelihood(vae, case.x, case.y, num_steps=3, num_chains=2),
                 lambda: bdmc(vae, x=case.x, y=case.y, num_steps=3, num_chains=2),
                 lambda: nuts_samples(vae, case.x, case.y, num_samples=2, warmup_steps=2)):
        with pytest.raises(PyroVAEError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
