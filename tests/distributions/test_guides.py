"""Posterior families: exact log-densities by the change of variables, normalization in 2-D,
a flow of length 0 is the diagonal Gaussian, and every family trains, evaluates and reports."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae import Config, evaluate_elbo, train_run
from pyro_vae.cli import main as cli_main
from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.errors import ConfigError
from pyro_vae.lab.gap import amortization_gap


def family_and_inputs(kind, latent=2, flow_length=2, batch=1, seed=0, perturbation=0.3):
    torch.manual_seed(seed)
    family = GuideFamily(kind, (3,), latent, flow_length)
    for p in family.parameters():  # away from the identity initialization
        p.data.add_(perturbation * torch.randn_like(p))
    loc, scale = torch.randn(batch, latent), torch.rand(batch, latent) + 0.5
    return family, loc, scale, torch.randn(batch, 3)


@pytest.mark.parametrize("kind", ["iaf", "planar"])
def test_flow_log_density_is_the_change_of_variables_formula(kind):
    family, loc, scale, x = family_and_inputs(kind)
    q = family(loc, scale, x)
    transforms = q.transforms
    z0 = torch.randn(1, 2) * scale + loc

    def forward(v):
        for t in transforms:
            v = t(v)
        return v

    jac = torch.autograd.functional.jacobian(lambda v: forward(v.unsqueeze(0)).squeeze(0), z0[0])
    z = forward(z0)  # after the Jacobian: each transform caches its last (input, output)
    expected = dist.Normal(loc, scale).to_event(1).log_prob(z0) - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(q.log_prob(z), expected, atol=1e-5, rtol=1e-5)


def test_full_covariance_log_density_is_the_gaussian_formula():
    family, loc, scale, x = family_and_inputs("full", latent=3)
    q = family(loc, scale, x)
    tril = q.scale_tril[0]
    assert torch.equal(tril.diagonal(), scale[0]) and torch.equal(tril.triu(1), torch.zeros(3, 3))
    cov = tril @ tril.T
    z = torch.randn(1, 3)
    d = (z - loc)[0]
    expected = -0.5 * (d @ torch.linalg.solve(cov, d)) - 0.5 * torch.logdet(2 * math.pi * cov)
    torch.testing.assert_close(q.log_prob(z)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["full", "iaf"])
def test_densities_integrate_to_one_in_two_dimensions(kind):
    family, loc, scale, x = family_and_inputs(kind, perturbation=0.1)
    grid = torch.linspace(-15, 15, 601)
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)
    with torch.no_grad():
        q = family(loc.expand(z.shape[0], 2), scale.expand(z.shape[0], 2),
                   x.expand(z.shape[0], 3))
        mass = q.log_prob(z).exp().sum() * (grid[1] - grid[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.01)


def test_a_flow_of_length_zero_is_the_diagonal_gaussian():
    family, loc, scale, x = family_and_inputs("iaf", flow_length=0)
    assert family.is_diagonal and not list(family.parameters())
    z = torch.randn(1, 2)
    torch.testing.assert_close(family(loc, scale, x).log_prob(z),
                               dist.Normal(loc, scale).to_event(1).log_prob(z))


@pytest.mark.parametrize("options,match", [(dict(kind="flow"), "unknown --guide"),
                                           (dict(kind="iaf", flow_length=-1), "flow-length")])
def test_bad_family_options_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        GuideFamily(options["kind"], (3,), 2, options.get("flow_length", 2))


@pytest.mark.parametrize("kind", ["full", "iaf", "planar"])
def test_every_family_trains_evaluates_and_reports_gaps(tmp_path, kind):
    config = Config(dataset="moons", epochs=2, batch_size=32, max_train=96, max_test=32,
                    hidden=(16,), guide=kind, flow_length=2)
    run = train_run(config, tmp_path / "run", progress=False)
    assert run.trainer.vae.family.kind == kind and not run.trainer.config.jit
    assert (tmp_path / "run" / "figures" / "overview.png").exists()
    vae, x = run.trainer.vae, run.trainer.data.x_test[:8]
    assert math.isfinite(evaluate_elbo(vae, x)["elbo"].mean)
    report = amortization_gap(vae, x, iw_samples=16, eval_samples=8, refine_steps=2,
                              max_steps=20)
    # every family reaches the report (its numbers are checked against closed forms in
    # tests/lab/test_gap.py; here 8 draws and 20 fit steps only show it runs end to end)
    assert report.family == kind and torch.isfinite(report.amortization_gap).all()
    assert cli_main(["evaluate", str(tmp_path / "run"), "--iw-samples", "8"]) == 0
