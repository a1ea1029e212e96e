"""Burda et al.'s two-stochastic-layer VAE through the inference core.

Reference: a linear-Gaussian instance with scalar z1, z2 whose guide is set to the exact
posterior. Then q(z1, z2 | x) = p(z1 | x) p(z2 | z1) = p(z1, z2 | x) (x is independent of z2
given z1, and scalar Gaussians are exactly diagonal), so every importance weight equals p(x):
the ELBO, the IWAE bound and every log w are log p(x), which is Gaussian in closed form:
x ~ N(β a + b, (α² + s²) ββᵀ + σ² I).
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae import Config, describe
from pyro_vae.data.datasets import DataSet
from pyro_vae.infer.evaluation import evaluate_elbo, iwae_log_likelihood
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.infer.trainer import Trainer
from pyro_vae.models.two_layer import TwoLayerVAE

D, SIGMA = 3, 0.5


def _inv_softplus(v: float) -> float:
    return math.log(math.expm1(v))


def exact_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vae = TwoLayerVAE((D,), latent_dims=(1, 1), hidden=((), ()), likelihood="gaussian",
                      obs_scale=SIGMA)
    alpha, a, s = 1.3, 0.4, 0.7
    beta, b = torch.randn(D, generator=g), torch.randn(D, generator=g) * 0.3
    with torch.no_grad():
        lin = vae.prior_z1.net[0]  # z2 → (loc, raw scale) of z1
        lin.weight.copy_(torch.tensor([[alpha], [0.0]]))
        lin.bias.copy_(torch.tensor([a, _inv_softplus(s - 1e-4)]))
        dec = vae.decoder[0]
        dec.weight.copy_(beta[:, None])
        dec.bias.copy_(b)
        v1 = alpha ** 2 + s ** 2
        var1 = 1.0 / (1.0 / v1 + float(beta @ beta) / SIGMA ** 2)
        enc1 = vae.encoder_z1.net[0]
        enc1.weight.copy_(torch.stack([var1 * beta / SIGMA ** 2, torch.zeros(D)]))
        enc1.bias.copy_(torch.tensor([var1 * (a / v1 - float(beta @ b) / SIGMA ** 2),
                                      _inv_softplus(math.sqrt(var1) - 1e-4)]))
        var2 = 1.0 / (1.0 + alpha ** 2 / s ** 2)
        enc2 = vae.encoder_z2.net[0]
        enc2.weight.copy_(torch.tensor([[var2 * alpha / s ** 2], [0.0]]))
        enc2.bias.copy_(torch.tensor([-var2 * alpha * a / s ** 2,
                                      _inv_softplus(math.sqrt(var2) - 1e-4)]))
    mean = beta * a + b
    cov = (alpha ** 2 + s ** 2) * torch.outer(beta, beta) + SIGMA ** 2 * torch.eye(D)
    marginal = torch.distributions.MultivariateNormal(mean, cov)
    x = marginal.sample(torch.Size([64]))
    return vae, x, marginal


def test_the_core_reads_both_layers_in_model_order():
    vae, x, _ = exact_case()
    problem = describe(vae.model, vae.guide, x)
    assert problem.latent_names == ("z2", "z1")
    assert problem.plate.size == 64 and problem.observed == ("x",)


def test_elbo_and_iwae_equal_the_closed_form_marginal_at_the_exact_posterior():
    torch.manual_seed(0)
    vae, x, marginal = exact_case()
    exact = marginal.log_prob(x)
    elbo = evaluate_elbo(vae, x, num_samples=4)["elbo"]
    assert elbo.mean == pytest.approx(float(exact.mean()), abs=1e-4)
    assert elbo.stderr == pytest.approx(float(exact.std() / 8), rel=1e-3)
    iwae = iwae_log_likelihood(vae, x, num_samples=16)
    assert torch.allclose(iwae.double(), exact.double(), atol=1e-4)
    problem = describe(vae.model, vae.guide, x)
    log_w = problem.log_weights(x, None, 8)  # every weight is p(x): no spread over draws
    assert float((log_w - exact).abs().max()) < 1e-4


def test_a_perturbed_guide_is_strictly_below_and_iwae_closes_part_of_the_gap():
    torch.manual_seed(1)
    vae, x, marginal = exact_case()
    with torch.no_grad():
        vae.encoder_z1.net[0].bias[0] += 0.8
    exact = float(marginal.log_prob(x).mean())
    elbo = evaluate_elbo(vae, x, num_samples=200)["elbo"].mean
    iwae = float(iwae_log_likelihood(vae, x, num_samples=200).mean())
    assert elbo < iwae - 0.05 and iwae < exact + 1e-3 and elbo < exact - 0.1


@pytest.mark.parametrize("loss", [None, "iwae"])
def test_trains_with_the_elbo_and_the_iwae_objective(loss):
    pyro.clear_param_store()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(320, 16, generator=g) < torch.linspace(0.1, 0.9, 16)).float()
    data = DataSet("bits", x[:256], x[256:], None, None, "vector")
    vae = TwoLayerVAE((16,), latent_dims=(8, 4), hidden=((32,), (16,)), num_data=256)
    objective = ImportanceWeightedELBO("iwae", num_particles=4) if loss else None
    trainer = Trainer(vae, data, Config(epochs=6, batch_size=64, lr=1e-2),
                      **({"loss": objective} if objective else {}))
    history = trainer.fit()
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 0.5
    assert trainer.step_path == "eager"


def test_bad_shapes_are_refused_in_one_line():
    vae = TwoLayerVAE((4,), latent_dims=(2, 1), hidden=((), ()))
    with pytest.raises(Exception, match=r"built for points of shape \(4,\)"):
        vae.model(torch.zeros(3, 5))
    with pytest.raises(Exception, match="two latent sizes"):
        TwoLayerVAE((4,), latent_dims=(2,))
