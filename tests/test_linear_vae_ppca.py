"""A linear VAE with a learned σ reaches the closed-form pPCA maximum likelihood (Tipping &
Bishop 1999) on the 8×8 digits, and its decoder spans the principal subspace."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_vae import VAE, MLPDecoder, MLPEncoder, elbo_terms, load_dataset, make_likelihood


def ppca_mle(x: torch.Tensor, q: int):
    """σ²_ML = mean of the discarded eigenvalues of the sample covariance,
    W_ML = U_q (Λ_q - σ² I)^{1/2}; returns (mean log-likelihood per point, σ_ML, U_q)."""
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / x.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[q:].mean()
    W = evecs[:, :q] * (evals[:q] - sigma2).sqrt()
    C = W @ W.T + sigma2 * torch.eye(x.shape[1], dtype=torch.float64)
    ll = torch.distributions.MultivariateNormal(mean, C).log_prob(x).mean()
    return float(ll), float(sigma2.sqrt()), evecs[:, :q]


def test_linear_vae_elbo_optimum_is_the_exact_ppca_likelihood():
    d = load_dataset("digits")
    x = torch.cat([d.x_train, d.x_test]).reshape(-1, 64)
    q = 2
    exact, sigma_ml, U = ppca_mle(x, q)
    vae = VAE(MLPEncoder((64,), q, hidden=()), MLPDecoder((64,), q, hidden=()),
              make_likelihood("gaussian-learned", obs_scale=0.3), q, (64,))
    svi = SVI(vae.model, vae.guide, pyro.optim.ClippedAdam({"lr": 1e-2, "lrd": 0.999}),
              TraceMeanField_ELBO(num_particles=4, vectorize_particles=True,
                                  max_plate_nesting=1))
    for _ in range(1000):
        svi.step(x)
    with torch.no_grad():
        elbo = float(elbo_terms(vae, x, num_samples=200)["elbo"].mean())
    print(f"linear VAE ELBO {elbo:.4f} vs pPCA log-likelihood {exact:.4f} nats per point")
    assert elbo <= exact + 0.01  # a bound, up to Monte Carlo noise
    assert elbo == pytest.approx(exact, abs=0.05)
    assert float(pyro.param("obs_scale").detach()) == pytest.approx(sigma_ml, rel=0.01)
    # the decoder's columns span the principal subspace: principal-angle cosines ≈ 1
    Q = torch.linalg.qr(vae.decoder.net[0].weight.detach().double())[0]
    cosines = torch.linalg.svdvals(U.T @ Q)
    assert float(cosines.min()) > 0.99
