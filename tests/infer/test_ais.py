"""AIS and BDMC against the exact log p(x) of a linear-Gaussian model."""

from __future__ import annotations

import json

import pyro
import pytest
import torch

from pyro_vae import Config, train_run
from pyro_vae.cli import main as cli_main
from pyro_vae.errors import ConfigError
from pyro_vae.infer.ais import ais_log_likelihood, bdmc, schedule
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from tests.common import linear_gaussian_vae


def exact_log_px(vae, x):
    lin = vae.decoder.net[0]
    return gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(), 0.5).float()


def test_ais_reaches_the_exact_log_likelihood_within_002_nats_at_every_point():
    """The issue's 0.02 nats per point; each error is also within 3 reported standard errors.

    T = 1000 intermediate distributions with 2 leapfrog steps and 1024 chains (about 3.5 s
    here). The cost of a step is Pyro's per-call overhead, nearly independent of the number of
    chains, and on this model the error is Monte Carlo noise, not bias (mean error over the
    points ≈ 0.001 at both settings): T = 6000 with 32 chains (15.6 s) left a per-point standard
    error of 0.007 and a largest error of 0.018, 0.019 and 0.023 with seeds 0, 1, 2 (the last
    fails); T = 1000 with 1024 chains has a standard error of 0.0035 and a largest error of
    0.007, 0.006 and 0.010 — the same bound checked with twice the margin."""
    vae = linear_gaussian_vae()
    torch.manual_seed(0)
    x = torch.randn(10, 3) * 1.5
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(vae, x, num_steps=1000, num_chains=1024, leapfrog_steps=2)
    error = result.log_px - exact_log_px(vae, x)
    assert float(error.abs().max()) < 0.02
    assert bool((error.abs() < 3 * result.stderr + 0.005).all())
    assert 0.4 < result.acceptance < 0.95 and bool((result.ess > 4).all())
    assert all(p.requires_grad for p in vae.parameters())  # unfrozen afterwards


def test_pilot_chains_adapt_the_step_and_carry_no_weight():
    """With pilot chains the step sizes adapt (acceptance near 0.65 from a poor start of 2.0);
    without them the step stays fixed and the acceptance shows it."""
    vae = linear_gaussian_vae()
    x = torch.randn(4, 3)
    pyro.set_rng_seed(1)
    adapted = ais_log_likelihood(vae, x, num_steps=300, num_chains=8, step_size=2.0)
    fixed = ais_log_likelihood(vae, x, num_steps=300, num_chains=8, step_size=2.0,
                               pilot_chains=0)
    assert 0.5 < adapted.acceptance < 0.8 and fixed.acceptance < 0.3
    with pytest.raises(ConfigError, match="pilot_chains"):
        ais_log_likelihood(vae, x, pilot_chains=-1)


def test_bdmc_sandwiches_the_exact_log_likelihood():
    """T = 500 with 256 chains (3.7 s) rather than T = 2000 with 16 (9.9 s): on this model
    both bounds' errors are Monte Carlo noise more than annealing bias, and the many chains
    shrink it. The mean width over the 12 points, measured with seeds 0–3: −0.001, −0.004,
    0.002, 0.000 (T = 2000 with 16 chains: −0.001 and −0.009, near the −0.01 floor)."""
    vae = linear_gaussian_vae()
    pyro.set_rng_seed(0)
    sandwich = bdmc(vae, num_points=12, num_steps=500, num_chains=256)
    exact = exact_log_px(vae, sandwich.x)
    # stochastic bounds: each holds in expectation, so a run may cross by its Monte Carlo noise
    assert float(sandwich.lower.mean()) <= float(exact.mean()) + 0.05
    assert float(sandwich.upper.mean()) >= float(exact.mean()) - 0.05
    assert -0.01 <= float(sandwich.width.mean()) < 0.05


def test_schedules_run_from_zero_to_one():
    for kind in ("sigmoid", "linear"):
        b = schedule(50, kind)
        assert float(b[0]) == 0.0 and float(b[-1]) == 1.0 and bool((b.diff() > 0).all())
    with pytest.raises(ConfigError, match="schedule"):
        schedule(10, "cosine")
    with pytest.raises(ConfigError, match="num_steps"):
        ais_log_likelihood(linear_gaussian_vae(), torch.zeros(2, 3), num_steps=0)


def test_evaluate_by_ais_from_the_command_line(tmp_path, capsys):
    train_run(Config(dataset="moons", epochs=1, batch_size=32, max_train=64, max_test=16,
                     hidden=(8,)), tmp_path / "run", progress=False, figures=False)
    code = cli_main(["evaluate", str(tmp_path / "run"), "--method", "ais", "--ais-steps", "20",
                     "--ais-chains", "4", "--max-points", "8", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "ais" and result["seconds_per_point"] > 0
    assert result["test_log_likelihood"] > result["test_elbo"] - 1.0
    assert cli_main(["evaluate", str(tmp_path / "run"), "--method", "ais", "--ais-steps", "10",
                     "--ais-chains", "2", "--max-points", "4", "--ais-proposal", "guide"]) == 0
