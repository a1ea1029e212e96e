"""Evaluation against ground truth: exact pPCA likelihood, IWAE ordering, circle quadrature."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyro_vae import (
    ConfigError,
    DataError,
    circle_log_density,
    elbo_terms,
    evaluate_elbo,
    iwae_log_likelihood,
)
from pyro_vae.data.datasets import CIRCLE_NOISE, circle_points
from tests.common import make_batch, ppca_vae, small_vae


def test_elbo_and_iwae_equal_the_exact_ppca_likelihood_at_the_exact_posterior():
    vae, marginal = ppca_vae()
    x = marginal.sample((50,))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        # log w = log p(x|z) + log p(z) - log q(z|x) is constant = log p(x) when q is exact
        torch.testing.assert_close(iwae_log_likelihood(vae, x, num_samples=64), exact,
                                   atol=1e-4, rtol=1e-5)
        # the ELBO's recon term is Monte Carlo, its KL exact: equal in expectation
        elbo = elbo_terms(vae, x, num_samples=4000)["elbo"]
    assert float((elbo - exact).abs().max()) < 0.1
    assert float(elbo.mean()) == pytest.approx(float(exact.mean()), abs=0.01)


def test_iwae_converges_to_exact_ppca_likelihood_from_a_poor_encoder():
    vae, marginal = ppca_vae()
    vae.encoder.log_s.data += 0.7  # too wide a q: ELBO is a strict bound
    x = marginal.sample((40,))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        elbo = elbo_terms(vae, x, num_samples=200)["elbo"]
        k1 = iwae_log_likelihood(vae, x, num_samples=1).mean()
        k10 = iwae_log_likelihood(vae, x, num_samples=10).mean()
        k5000 = iwae_log_likelihood(vae, x, num_samples=5000)
    assert elbo.mean() < exact.mean() - 0.3
    assert float(k1) < float(k10) < float(k5000.mean())
    torch.testing.assert_close(k5000, exact, atol=0.05, rtol=0)


def test_iwae_is_above_the_elbo_and_increases_with_k():
    vae = small_vae(likelihood="bernoulli", event_shape=(20,), latent_dim=3)
    vae.encoder.head.log_var.bias.data.fill_(1.5)  # a q much wider than the posterior
    x = make_batch(64, (20,), binary=True)
    with torch.no_grad():
        elbo = elbo_terms(vae, x, num_samples=500)["elbo"].mean()
        bounds = [iwae_log_likelihood(vae, x, num_samples=k).mean() for k in (1, 10, 100, 2000)]
    assert abs(float(bounds[0] - elbo)) < 0.5  # L_1 is an unbiased ELBO estimate
    assert all(a < b for a, b in itertools.pairwise(bounds))
    assert float(bounds[-1]) > float(elbo)


def test_iwae_chunking_does_not_change_the_estimate():
    vae = small_vae()
    x = make_batch(30)
    with torch.no_grad():
        torch.manual_seed(1)
        a = iwae_log_likelihood(vae, x, num_samples=300, batch_size=30, max_elements=10**9)
        torch.manual_seed(1)
        b = iwae_log_likelihood(vae, x, num_samples=300, batch_size=7, max_elements=500)
    torch.testing.assert_close(a, b, atol=0.15, rtol=0)  # same estimator, other draws
    assert a.shape == (30,)


#: Quadrature nodes over z ∈ [−9, 9] for the tests that evaluate the circle density at 10⁴–10⁵
#: points: spacing 0.045 = 0.45 σ. The integrand is a Gaussian bump in z of width about σ, for
#: which the trapezoidal rule's error falls like exp(−2π² (σ/h)²) ≈ 10⁻⁴²; measured, it agrees
#: with the default 4001 nodes to 4·10⁻¹⁴ on 10⁵ circle points and on the whole grid below
#: (each test also checks that agreement on a subset), at a tenth of the cost.
NODES = 401


def test_circle_density_integrates_to_one_and_matches_monte_carlo():
    # ∫∫ p(x) dx over a grid covering the circle ± 1
    g = torch.linspace(-2.2, 2.2, 221, dtype=torch.float64)  # spacing 0.02 = σ / 5
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    log_dens = circle_log_density(pts, num_nodes=NODES)
    near = pts[::25]  # ~2000 grid points, from the circle's centre to its corners
    torch.testing.assert_close(log_dens[::25], circle_log_density(near), atol=1e-10, rtol=0)
    dens = log_dens.exp().reshape(221, 221)
    total = torch.trapezoid(torch.trapezoid(dens, g, dim=1), g)
    assert float(total) == pytest.approx(1.0, abs=1e-3)
    # Monte Carlo over z for a few points agrees with the quadrature
    x, _ = circle_points(5, seed=3)
    z = torch.randn(400000, dtype=torch.float64)
    mean = torch.stack([torch.cos(z), torch.sin(z)], -1)
    lik = torch.distributions.Normal(mean[:, None], CIRCLE_NOISE).log_prob(x.double()).sum(-1)
    mc = torch.logsumexp(lik, 0) - math.log(len(z))
    torch.testing.assert_close(mc, circle_log_density(x), atol=0.01, rtol=0)


class CircleDecoder(torch.nn.Module):
    """The circle's true decoder, z ↦ (cos z, sin z)."""

    def forward(self, z):
        return torch.cat([torch.cos(z), torch.sin(z)], -1)


def test_quadrature_of_the_true_circle_decoder_is_the_circle_density():
    from pyro_vae import VAE, make_likelihood, quadrature_log_likelihood
    from pyro_vae.nn.networks import MLPEncoder

    vae = VAE(MLPEncoder((2,), 1, ()), CircleDecoder(),
              make_likelihood("gaussian", CIRCLE_NOISE), 1, (2,))
    x, _ = circle_points(50, seed=5)
    torch.testing.assert_close(quadrature_log_likelihood(vae, x, batch_size=16),
                               circle_log_density(x), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="one-dimensional latent"):
        quadrature_log_likelihood(small_vae(), make_batch(4))


def test_circle_mean_log_density_is_the_known_entropy():
    x, _ = circle_points(100000, seed=7)
    log_dens = circle_log_density(x, num_nodes=NODES)
    torch.testing.assert_close(log_dens[:2000], circle_log_density(x[:2000]), atol=1e-10, rtol=0)
    value = log_dens.mean()
    assert float(value) == pytest.approx(-0.535, abs=0.01)  # -H[p(x)] ≈ -0.53 to -0.54 nats


@pytest.mark.parametrize("bad, match", [
    (lambda x: x.new_full(x.shape, float("nan")), "NaN"),
    (lambda x: x[:, :3], "shape"),
    (lambda x: x[:0], "empty"),
    (lambda x: x * 3.0, r"\[0, 1\]"),
])
def test_evaluation_refuses_data_it_cannot_score(bad, match):
    vae = small_vae(likelihood="bernoulli")
    x = make_batch(8, binary=True)
    for fn in (evaluate_elbo, iwae_log_likelihood):
        with pytest.raises(DataError, match=match):
            fn(vae, bad(x))


def test_evaluation_refuses_counts_below_one():
    vae, x = small_vae(), make_batch(8)
    with pytest.raises(ConfigError, match="num_samples"):
        iwae_log_likelihood(vae, x, num_samples=0)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_elbo(vae, x, batch_size=0)
