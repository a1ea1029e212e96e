"""The gap report against the closed form of a linear-Gaussian model with a poor encoder."""

from __future__ import annotations

import pyro
import torch

from pyro_vae.lab.gap import amortization_gap, gap_table
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from tests.common import exact_posterior, linear_gaussian_vae


def test_a_poor_encoder_no_longer_yields_a_negative_approximation_gap():
    """The untrained encoder's IWAE estimate is far below log p(x); log p̂(x) takes IWAE with
    q* as proposal too, so the approximation gap is the closed-form KL(q* ‖ p(z | x)) of the
    best diagonal Gaussian, ½ (log det Σ + Σ_i log (Σ⁻¹)_ii), not a negative number."""
    vae = linear_gaussian_vae(num_data=100)
    with torch.no_grad():  # an encoder far from the posterior
        vae.encoder.head.loc.bias.fill_(3.0)
        vae.encoder.head.log_var.bias.fill_(-4.0)
    torch.manual_seed(0)
    x = torch.randn(12, 3) * 1.5
    pyro.set_rng_seed(0)
    report = amortization_gap(vae, x, iw_samples=500, eval_samples=500, refine_steps=5)
    lin = vae.decoder.net[0]
    exact = gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(), 0.5).float()
    _, cov = exact_posterior(vae, x)
    kl_best_diagonal = 0.5 * (torch.logdet(cov) + torch.linalg.inv(cov).diagonal().log().sum())
    assert float((report.log_px_guide - exact).mean()) < -1.0  # the encoder's IWAE: far off
    error = report.log_px - exact  # IWAE with q* (500 draws): close to the truth
    assert float(error.abs().mean()) < 0.03 and float(error.abs().max()) < 0.1
    gap = report.approximation_gap
    # only Monte Carlo noise can put L[q*] above log p̂(x) now, and the report counts it
    assert bool((gap > -0.08).all()) and int(report.flagged.sum()) <= 2
    assert abs(float(gap.mean()) - float(kl_best_diagonal)) < 0.05
    table = gap_table(report.summary())
    assert "q* as proposal" in table and "amortized q as proposal" in table
