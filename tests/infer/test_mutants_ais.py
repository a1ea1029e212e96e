"""Tests written to kill the mutants of ``pyro_vae/infer/ais.py`` (docs/testing.md): the
schedules and the standard errors against their formulas, AIS from the exact posterior (every
weight is exactly log p(x), whatever the HMC moves do), and short AIS and BDMC runs from the
prior against the exact log p(x) of a linear-Gaussian model."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.ais import (
    MAX_UNEVEN_FRACTION,
    MIN_CHAINS_FOR_STDERR,
    MIN_ESS_FOR_STDERR,
    TARGET_ACCEPTANCE,
    Sandwich,
    _State,
    ais_log_likelihood,
    bdmc,
    jackknife_stderr,
    log_mean_exp_stderr,
    schedule,
)
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from tests.common import linear_gaussian_vae, ppca_vae


def test_schedules_run_from_zero_to_one_as_documented():
    torch.testing.assert_close(schedule(4, "linear"),
                               torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    s = torch.sigmoid(torch.linspace(-4.0, 4.0, 5, dtype=torch.float64))
    torch.testing.assert_close(schedule(4), (s - s[0]) / (s[-1] - s[0]))
    s = torch.sigmoid(torch.linspace(-2.0, 2.0, 7, dtype=torch.float64))
    torch.testing.assert_close(schedule(6, delta=2.0), (s - s[0]) / (s[-1] - s[0]))
    with pytest.raises(ConfigError, match="unknown AIS schedule"):
        schedule(4, "cosine")


def test_jackknife_is_the_spread_of_the_leave_one_out_log_means():
    torch.manual_seed(0)
    log_w = torch.randn(5, 3, dtype=torch.float64) * 2
    loo = torch.stack([torch.logsumexp(torch.cat([log_w[:c], log_w[c + 1:]]), 0) - math.log(4)
                       for c in range(5)])
    want = torch.sqrt(4 / 5 * ((loo - loo.mean(0)) ** 2).sum(0))
    torch.testing.assert_close(jackknife_stderr(log_w), want.float())
    one = jackknife_stderr(log_w[:1])
    assert one.shape == (3,) and one.isnan().all()
    # two chains: each left out in turn, √(½ Σ (ℓ_(−c) − ℓ̄)²) = |ℓ_1 − ℓ_2| / 2
    torch.testing.assert_close(jackknife_stderr(log_w[:2]),
                               ((log_w[0] - log_w[1]).abs() / 2).float())


def test_the_reported_error_needs_eight_chains_and_even_weights():
    assert (MIN_CHAINS_FOR_STDERR, MIN_ESS_FOR_STDERR, MAX_UNEVEN_FRACTION) == (8, 3.0, 0.1)
    assert TARGET_ACCEPTANCE == 0.65
    torch.manual_seed(1)
    even = torch.randn(8, 20, dtype=torch.float64) * 0.1
    torch.testing.assert_close(log_mean_exp_stderr(even), jackknife_stderr(even))
    assert log_mean_exp_stderr(even[:7]).isnan().all()
    assert log_mean_exp_stderr(even[:, :0]).shape == (0,)
    # one chain dominates at one point of 20 (5 % ≤ 10 %): NaN there only
    uneven = even.clone()
    uneven[0, 0] = 50.0
    se = log_mean_exp_stderr(uneven)
    assert se[0].isnan() and not se[1:].isnan().any()
    # at three points of 20 (15 %): NaN everywhere
    uneven[0, :3] = 50.0
    assert log_mean_exp_stderr(uneven).isnan().all()
    # an effective sample size of exactly 3 is enough: weights 1, 1, 1 and 13 of weight 0
    exact3 = torch.full((16, 10), -math.inf, dtype=torch.float64)
    exact3[:3] = 0.0
    assert not log_mean_exp_stderr(exact3).isnan().any()


def test_the_annealing_target_is_the_geometric_path():
    state = _State(torch.zeros(2, 1, 1), torch.tensor([[1.0], [2.0]]),
                   torch.tensor([[5.0], [7.0]]), torch.ones(2, 1, 1), 3 * torch.ones(2, 1, 1))
    torch.testing.assert_close(state.log_target(0.25), torch.tensor([[2.0], [3.25]]))
    torch.testing.assert_close(state.grad_target(0.25), 1.5 * torch.ones(2, 1, 1))
    other = _State(torch.ones(2, 1, 1), torch.zeros(2, 1), torch.zeros(2, 1),
                   torch.zeros(2, 1, 1), torch.zeros(2, 1, 1))
    mixed = state.where(torch.tensor([[True], [False]]), other)
    assert mixed.u[:, 0, 0].tolist() == [1.0, 0.0] and mixed.f1[:, 0].tolist() == [0.0, 7.0]
    assert mixed.f0[:, 0].tolist() == [0.0, 2.0] and mixed.g0[:, 0, 0].tolist() == [0.0, 1.0]
    assert mixed.g1[:, 0, 0].tolist() == [0.0, 3.0]


def test_ais_from_the_exact_posterior_is_exactly_log_px():
    """p_0 = p(z | x) makes every intermediate distribution the posterior: each increment is
    (β_t − β_{t−1}) log p(x), the weights sum to log p(x) whatever the chains do, and the
    schedule must run from exactly 0 to exactly 1."""
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((5,))
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=7, num_chains=8, proposal="guide",
                                schedule_kind="linear", batch_size=2)
    exact = marginal.log_prob(x)
    torch.testing.assert_close(result.log_px, exact, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(result.log_weights, exact.double().expand(8, 5), atol=1e-4,
                               rtol=1e-5)
    torch.testing.assert_close(result.ess, torch.full((5,), 8.0), atol=1e-3, rtol=0)
    assert result.log_px.shape == result.stderr.shape == (5,)
    assert float(result.stderr_delta.max()) < 1e-3
    assert 0.0 < result.acceptance <= 1.0


def exact_log_px(vae, x):
    lin = vae.decoder.net[0]
    return gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(), 0.5).float()


def test_short_ais_from_the_prior_is_close_to_log_px_and_below_it_on_average():
    vae = linear_gaussian_vae()
    torch.manual_seed(0)
    x = torch.randn(6, 3) * 1.5
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=400, num_chains=256, leapfrog_steps=2)
    error = result.log_px - exact_log_px(vae, x)
    assert float(error.abs().max()) < 0.1, error
    assert float(error.mean()) < 0.02
    assert 0.4 < result.acceptance < 0.95
    w = torch.softmax(result.log_weights, 0)
    torch.testing.assert_close(result.ess, (1 / (w**2).sum(0)).float())
    torch.testing.assert_close(result.stderr_delta,
                               ((256 * w).std(0) / 16).float())


def test_bdmc_brackets_log_px():
    vae = linear_gaussian_vae()
    pyro.set_rng_seed(0)
    sandwich = bdmc(vae, num_points=6, num_steps=150, num_chains=16)
    assert isinstance(sandwich, Sandwich) and sandwich.x.shape == (6, 3)
    exact = exact_log_px(vae, sandwich.x)
    assert float((sandwich.lower - exact).max()) < 0.1
    assert float((sandwich.upper - exact).min()) > -0.1
    assert float(sandwich.width.mean()) > 0.0 and float(sandwich.width.max()) < 0.5
    torch.testing.assert_close(sandwich.width, sandwich.upper - sandwich.lower)


@pytest.mark.parametrize("proposal", ["prior", "guide"])
def test_the_annealer_returns_both_densities_and_their_gradients(proposal):
    """f0 = log p_0(u) (the prior, or the guide with its Jacobian), f1 = log p(x, u), and
    their gradients per chain, as autograd gives them."""
    from pyro_vae.infer.ais import _Annealer, _problem

    vae = linear_gaussian_vae()
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    problem, q = _problem(vae, x, None, proposal, None, "AIS")
    annealer = _Annealer(problem, x, None, proposal, q)
    pyro.set_rng_seed(1)
    u = annealer.sample_start(3)
    assert u.shape == (3, 4, problem.dim) and not u.requires_grad
    f0, f1, g0, g1 = annealer.evaluate(u)
    v = u.clone().requires_grad_(True)
    log_prior, log_lik = problem.log_joint(x, None, v, split=True)
    start = log_prior if proposal == "prior" else annealer._log_guide(v)
    torch.testing.assert_close(f1, (log_prior + log_lik).detach())
    torch.testing.assert_close(f0, start.detach())
    torch.testing.assert_close(g0, torch.autograd.grad(start.sum(), v, retain_graph=True)[0])
    torch.testing.assert_close(g1, torch.autograd.grad((log_prior + log_lik).sum(), v)[0])


def test_tiny_steps_are_always_accepted_and_the_rate_is_per_transition():
    vae, marginal = ppca_vae()
    x = marginal.sample((3,))
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=5, num_chains=4, step_size=1e-5,
                                pilot_chains=0)
    assert result.acceptance == pytest.approx(1.0, abs=1e-6)


def test_two_chains_have_a_delta_method_error():
    vae, marginal = ppca_vae()
    x = marginal.sample((3,))
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=3, num_chains=2)
    w = torch.softmax(result.log_weights, 0)
    torch.testing.assert_close(result.stderr_delta, ((2 * w).std(0) / math.sqrt(2)).float())
    one = ais_log_likelihood(vae, x, num_steps=3, num_chains=1)
    assert torch.isinf(one.stderr_delta).all()


def test_chains_and_pilots_both_count_against_memory(monkeypatch):
    import pyro_vae.infer.ais as ais

    seen = []
    real = ais.points_per_chunk
    monkeypatch.setattr(ais, "points_per_chunk",
                        lambda vae, draws: seen.append(draws) or real(vae, draws))
    vae, marginal = ppca_vae()
    ais_log_likelihood(vae, marginal.sample((2,)), num_steps=2, num_chains=5, pilot_chains=3)
    assert seen == [8]


def test_a_conditional_model_is_annealed_batch_by_batch_with_its_labels():
    from tests.common import small_vae

    vae = small_vae(num_classes=3)
    torch.manual_seed(0)
    x, y = torch.rand(3, 6), torch.tensor([0, 2, 1])
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, y, num_steps=3, num_chains=4, batch_size=2)
    assert result.log_px.shape == (3,) and torch.isfinite(result.log_px).all()
    assert result.log_weights.shape == (4, 3)


def test_the_prior_proposal_ignores_a_guide_with_auxiliary_sites():
    """From the prior, the guide is not needed: one with an auxiliary site is fine; as the
    proposal it is refused."""
    import pyro.distributions as dist

    class Owner:
        def model(self, x, y=None, indices=None, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

        def guide(self, x, y=None, indices=None, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                a = pyro.sample("aux", dist.Normal(torch.zeros(x.shape[0], 2), 1.0)
                                .to_event(1), infer={"is_auxiliary": True})
                pyro.sample("z", dist.Normal(a, 1.0).to_event(1))

    x = torch.randn(3, 1)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(Owner(), x, num_steps=3, num_chains=4)
    assert torch.isfinite(result.log_px).all()
    with pytest.raises(ConfigError, match="auxiliary"):
        ais_log_likelihood(Owner(), x, num_steps=3, num_chains=4, proposal="guide")


def test_bdmc_simulates_16_points_over_2000_steps_by_default(monkeypatch):
    import pyro_vae.infer.ais as ais

    steps = []
    real = ais.schedule
    monkeypatch.setattr(ais, "schedule",
                        lambda n, kind="sigmoid": steps.append(n) or real(3, kind))
    vae = linear_gaussian_vae()
    sandwich = bdmc(vae, num_chains=2)
    assert steps == [2000] and sandwich.x.shape == (16, 3)
    ais_log_likelihood(vae, sandwich.x[:2], num_chains=2)
    assert steps == [2000, 2000]


def test_simulate_draws_16_points_by_default():
    from pyro_vae.infer.ais import simulate

    x, latents, _ = simulate(linear_gaussian_vae())
    assert x.shape == (16, 3) and latents["z"].shape == (16, 2)
