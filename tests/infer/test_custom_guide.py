"""Any guide of the protocol in every tool: training, ELBO and IWAE evaluation, the gap report
and the variance lab — checked against the closed form where one exists."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae import Config, Trainer, evaluate_elbo, iwae_log_likelihood
from pyro_vae.data import DataSet
from pyro_vae.infer.evaluation import elbo_terms
from pyro_vae.lab.gap import amortization_gap
from pyro_vae.lab.variance import measure_estimator
from pyro_vae.models import kl_scale
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from pyro_vae.sites import LATENT_SITE
from tests.common import (
    FullCovarianceGuide,
    changed,
    exact_posterior,
    linear_gaussian_vae,
    small_vae,
    snapshot,
)


def exact_guide_for(vae):
    """q(z | x) = p(z | x) exactly: a full-covariance Gaussian from the decoder's weights."""

    def guide(x, y=None, indices=None, beta=1.0, num_points=None):
        mean, cov = exact_posterior(vae, x)
        with vae.data_plate(x.shape[0], indices), kl_scale(beta):
            return pyro.sample(LATENT_SITE, dist.MultivariateNormal(mean, cov))

    return guide


def test_elbo_and_iwae_of_an_exact_full_covariance_guide_equal_log_px():
    vae = linear_gaussian_vae(num_data=100)
    x = torch.randn(20, 3) * 1.5
    lin = vae.decoder.net[0]
    exact = gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(), 0.5).float()
    guide = exact_guide_for(vae)
    # with q = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z: no Monte Carlo error
    terms = elbo_terms(vae, x, num_samples=3, guide=guide)
    assert torch.allclose(terms["elbo"], exact, atol=1e-4)
    assert torch.allclose(iwae_log_likelihood(vae, x, num_samples=50, guide=guide), exact,
                          atol=1e-4)
    # the diagonal encoder's bound is below it
    assert float(evaluate_elbo(vae, x)["elbo"].mean) < float(exact.mean())


def moons_data(n=96) -> DataSet:
    torch.manual_seed(0)
    config = Config(dataset="moons", max_train=n, max_test=48, batch_size=32).resolved()
    return pyro_vae.prepare_data(config)


def test_a_user_guide_trains_evaluates_and_checkpoints_through_the_trainer(tmp_path):
    data = moons_data()
    vae = small_vae(event_shape=(2,), likelihood="gaussian-learned")
    guide = FullCovarianceGuide(vae)
    config = Config(dataset="moons", epochs=3, batch_size=32, lr=1e-2, eval_samples=2)
    trainer = Trainer(vae, data, config, guide=guide.guide)
    assert vae.num_data == data.x_train.shape[0]
    assert any(n.startswith("full_guide$$$") for n in trainer.params)
    before_guide, before_vae = snapshot(guide), snapshot(vae)
    history = trainer.fit()
    assert len(history) == 3 and all(math.isfinite(h["test_elbo"]) for h in history)
    assert set(changed(before_guide, guide)) == {n for n, _ in guide.named_parameters()}
    assert changed(before_vae, vae)  # decoder and σ train; the unused encoder does not matter
    # evaluation and IWAE with the user's guide as proposal
    x = data.x_test
    elbo = evaluate_elbo(vae, x, guide=guide.guide)["elbo"].mean
    iwae = iwae_log_likelihood(vae, x, num_samples=64, guide=guide.guide)
    assert float(iwae.mean()) >= elbo - 0.05
    # the trainer's checkpoint carries the guide's weights; a fresh trainer resumes from it
    state = trainer.state_dict()
    assert state["guide"] is not None and state["config"] is None
    pyro.clear_param_store()
    vae2 = small_vae(event_shape=(2,), likelihood="gaussian-learned")
    guide2 = FullCovarianceGuide(vae2)
    resumed = Trainer(vae2, data, config, guide=guide2.guide)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(guide.parameters(), guide2.parameters(),
                                                 strict=True))
    before = snapshot(guide2)
    resumed.fit(4)
    assert resumed.epoch == 4 and changed(before, guide2)


def test_gap_report_and_variance_lab_take_a_user_guide():
    data = moons_data(64)
    vae = small_vae(event_shape=(2,), likelihood="gaussian-learned", num_data=64)
    guide = FullCovarianceGuide(vae)
    x = data.x_test[:12]
    report = amortization_gap(vae, x, iw_samples=32, eval_samples=16, refine_steps=3,
                              max_steps=40, guide=guide.guide)
    assert report.family == "ffg"  # a user guide's own family cannot be fitted per point
    assert torch.isfinite(report.amortization_gap).all() and torch.isfinite(report.log_px).all()
    for estimator in ("reparam", "stl", "score"):
        result = measure_estimator(vae, x, None, estimator, repeats=4, implementation="pyro",
                                   guide=guide.guide, warmup=0)
        enc = result.groups["encoder"]
        assert enc.mean_norm > 0 and math.isfinite(enc.total_variance)
    with pytest.raises(pyro_vae.ConfigError, match="explicit"):  # written for the VAE's own q
        measure_estimator(vae, x, None, "reparam", repeats=2, guide=guide.guide,
                          implementation="explicit")


def test_the_trainer_takes_a_hand_built_vae_and_a_pair_of_functions():
    data = moons_data(64)
    config = Config(dataset="moons", epochs=1, batch_size=32, eval_samples=1)
    vae = small_vae(event_shape=(2,), likelihood="gaussian-learned")  # num_data set by Trainer
    before = snapshot(vae)
    Trainer(vae, data, config).fit()
    assert set(changed(before, vae)) == {n for n, _ in vae.named_parameters()}
    pyro.clear_param_store()
    other = small_vae(event_shape=(2,), likelihood="gaussian-learned", num_data=64)
    before = snapshot(other)
    trainer = Trainer(other.model, data, config, guide=other.guide)  # plain functions
    history = trainer.fit()
    assert math.isfinite(history[-1]["test_elbo"]) and changed(before, other)
    with pytest.raises(pyro_vae.ConfigError, match="num_data=64"):
        Trainer(small_vae(event_shape=(2,), num_data=10), data, config)
    with pytest.raises(pyro_vae.ConfigError, match="from_config"):
        Trainer(config, data)
