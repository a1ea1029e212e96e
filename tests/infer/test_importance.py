"""Importance-weighted objectives against ground truth: the ELBO at K = 1, Pyro's RenyiELBO where
it is right, the exact log p(x) of a linear-Gaussian model (and Pyro's RenyiELBO where it is not
a bound), and the estimators' bias and variance against each other."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

from pyro_vae import Config, Trainer
from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import OBJECTIVES, ImportanceWeightedELBO
from pyro_vae.models import kl_scale
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from tests.common import exact_posterior, linear_gaussian_vae, make_batch, small_vae


def grads(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("estimator", ["reparam", "stl", "dreg"])
def test_with_one_particle_every_objective_is_the_elbo(objective, estimator):
    vae, x = small_vae(likelihood="gaussian-learned"), make_batch(8)
    params = list(vae.parameters())
    pyro.set_rng_seed(1)
    ours = ImportanceWeightedELBO(objective, 1, estimator=estimator).differentiable_loss(
        vae.model, vae.guide, x, beta=0.7)
    pyro.set_rng_seed(1)
    if estimator == "reparam":
        pyro_loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, beta=0.7)
        torch.testing.assert_close(grads(ours, params), grads(pyro_loss, params))
    else:
        pyro_loss = Trace_ELBO().loss(vae.model, vae.guide, x, beta=0.7)
    assert float(ours.detach()) == pytest.approx(float(pyro_loss), rel=1e-5)


def test_without_subsampling_iwae_equals_pyros_renyi_elbo_at_alpha_zero():
    vae, x = small_vae(), make_batch(8)
    params = list(vae.parameters())
    pyro.set_rng_seed(2)
    ours = ImportanceWeightedELBO("iwae", 7).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    renyi = RenyiELBO(alpha=0, num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    pyro_value = renyi.loss(vae.model, vae.guide, x)
    assert float(ours.detach()) == pytest.approx(pyro_value, rel=1e-5)
    pyro.set_rng_seed(2)
    ours_grads = grads(ImportanceWeightedELBO("iwae", 7).differentiable_loss(
        vae.model, vae.guide, x), params)
    pyro.set_rng_seed(2)
    renyi.loss_and_grads(vae.model, vae.guide, x)
    torch.testing.assert_close(ours_grads, torch.cat([p.grad.reshape(-1) for p in params]))


def overdispersed_exact_guide(vae, inflate=2.0):
    """q(z | x) = N(E[z | x], inflate · Cov[z | x]): the exact posterior, wider."""

    def guide(x, y=None, indices=None, beta=1.0):
        mean, cov = exact_posterior(vae, x)
        with vae.data_plate(x.shape[0], indices), kl_scale(beta):
            return pyro.sample("z", dist.MultivariateNormal(mean, inflate * cov))

    return guide


def test_with_subsampling_iwae_stays_below_log_px_and_pyros_renyi_elbo_does_not():
    """Pyro issue #3104: RenyiELBO takes the log-sum-exp of densities already scaled by the
    plate's N/B, which is no longer a bound on log p(x)."""
    n = 1000
    vae = linear_gaussian_vae(num_data=n)
    torch.manual_seed(0)
    x, idx = torch.randn(20, 3) * 1.5, torch.arange(20)
    lin = vae.decoder.net[0]
    exact = float(gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(),
                                             0.5).mean())
    guide = overdispersed_exact_guide(vae)
    means = {}
    for k in (1, 5, 20):
        ours = torch.tensor([-ImportanceWeightedELBO("iwae", k).loss(vae.model, guide, x, None,
                                                                      idx) / n
                             for _ in range(40)])
        means[k] = float(ours.mean())
        assert means[k] <= exact + 3 * float(ours.std()) / 40**0.5
    assert means[1] < means[5] < means[20]  # E[IWAE_K] rises with K ...
    assert exact - means[20] < 0.1 * (exact - means[1])  # ... towards log p(x)
    renyi = RenyiELBO(alpha=0, num_particles=20, vectorize_particles=True, max_plate_nesting=1)
    pyro_estimate = torch.tensor([-renyi.loss(vae.model, guide, x, None, idx) / n
                                  for _ in range(20)]).mean()
    assert float(pyro_estimate) > exact + 0.3  # "bound" above the true log-likelihood


def encoder_gradients(vae, x, estimator, k, repeats=300, objective="iwae"):
    loss_fn = ImportanceWeightedELBO(objective, k, estimator=estimator)
    params = list(vae.encoder.parameters())
    return torch.stack([grads(loss_fn.differentiable_loss(vae.model, vae.guide, x), params)
                        for _ in range(repeats)])


@pytest.mark.parametrize("k", [8, 32])
def test_dreg_is_unbiased_for_the_iwae_gradient_with_less_encoder_variance(k):
    """The DReG authors' check: per parameter, the means of the plain pathwise and the DReG
    estimates agree within Monte Carlo error (Welch z), and DReG's variance is lower; STL,
    biased for IWAE (Tucker et al. 2019), fails the same test."""
    vae = linear_gaussian_vae()
    torch.manual_seed(0)
    x = torch.randn(4, 3) * 1.5
    pyro.set_rng_seed(0)
    reparam, dreg, stl = (encoder_gradients(vae, x, e, k) for e in ("reparam", "dreg", "stl"))

    def max_z(a, b):
        return float(((a.mean(0) - b.mean(0)) / (a.var(0) / len(a) + b.var(0) / len(b)).sqrt())
                     .abs().max())

    assert max_z(reparam, dreg) < 4.0  # 8 parameters: |z| < 4 with probability > 0.999
    assert max_z(reparam, stl) > 8.0
    assert float(dreg.var(0).sum()) < 0.5 * float(reparam.var(0).sum())


def test_stl_and_dreg_are_unbiased_for_the_elbo():
    vae = linear_gaussian_vae()
    torch.manual_seed(0)
    x = torch.randn(4, 3) * 1.5
    pyro.set_rng_seed(0)
    reparam = encoder_gradients(vae, x, "reparam", 4, objective="elbo")
    stl = encoder_gradients(vae, x, "stl", 4, objective="elbo")
    z = (reparam.mean(0) - stl.mean(0)) / (reparam.var(0) / 300 + stl.var(0) / 300).sqrt()
    assert float(z.abs().max()) < 4.0


@pytest.mark.parametrize("objective,groups", [("iwae", 1), ("miwae", 2), ("ciwae", 1),
                                              ("piwae", 2)])
def test_every_objective_trains_under_pyro_svi_and_the_trainer(objective, groups):
    vae, x = small_vae(num_data=64), make_batch(16)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}),
              ImportanceWeightedELBO(objective, 3, groups, estimator="dreg"))
    first = [svi.step(x, indices=torch.arange(16)) for _ in range(30)]
    assert first[-1] < first[0]
    config = Config(dataset="moons", epochs=1, batch_size=32, max_train=64, max_test=16,
                    objective=objective, num_particles=3, num_groups=groups, estimator="dreg")
    trainer = Trainer.from_config(config, _moons(config))
    assert isinstance(trainer.elbo, ImportanceWeightedELBO) and not trainer.config.jit
    assert torch.isfinite(torch.tensor(trainer.train_epoch()["test_elbo"]))


def _moons(config):
    from pyro_vae.data import prepare_data

    return prepare_data(config.resolved())


@pytest.mark.parametrize("options,match", [
    (dict(objective="bound"), "unknown objective"),
    (dict(estimator="score"), "unknown estimator"),
    (dict(objective="iwae", num_groups=2), "num-groups"),
    (dict(objective="ciwae", ciwae_beta=2.0), "ciwae-beta"),
    (dict(num_particles=0), "num_particles"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        ImportanceWeightedELBO(**options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options,match", [
    (dict(objective="iwae", estimator="score"), "trains the ELBO only"),
    (dict(objective="iwae", elbo="meanfield"), "meanfield"),
    (dict(objective="iwae", jit=True), "drop --jit"),
    (dict(objective="elbo", num_groups=3), "num-groups"),
])
def test_bad_combinations_in_a_configuration_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        Config(dataset="moons", **options).resolved()


def test_a_non_reparameterizable_guide_site_is_refused_in_one_line():
    vae = small_vae()

    class NoRsample(dist.Normal):
        has_rsample = False

    def score_guide(x, y=None, indices=None, beta=1.0):
        with vae.data_plate(x.shape[0], indices):
            loc, scale = vae.encode(x)
            return pyro.sample("z", NoRsample(loc, scale).to_event(1))

    with pytest.raises(ConfigError, match="reparameterizable") as err:
        ImportanceWeightedELBO("iwae", 3).loss(vae.model, score_guide, make_batch(4))
    assert "\n" not in str(err.value)


def test_an_iwae_run_resumes_to_the_same_numbers_and_evaluates(tmp_path):
    from pyro_vae import load_run, train_run
    from pyro_vae.cli import main as cli_main

    options = dict(dataset="moons", batch_size=32, max_train=64, max_test=16, hidden=(8,),
                   objective="iwae", num_particles=4, estimator="dreg")
    full = train_run(Config(epochs=2, **options), tmp_path / "full", progress=False,
                     figures=False)
    train_run(Config(epochs=1, **options), tmp_path / "part", progress=False, figures=False)
    resumed = train_run(Config(epochs=2, **options), tmp_path / "part", resume=True,
                        progress=False, figures=False)
    assert resumed.history[-1]["test_elbo"] == full.history[-1]["test_elbo"]
    assert load_run(tmp_path / "part").config.objective == "iwae"
    assert cli_main(["evaluate", str(tmp_path / "part"), "--iw-samples", "8"]) == 0
