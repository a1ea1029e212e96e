"""The gap report's semi-amortized row, against the closed form of a linear-Gaussian model.

With a poor encoder, refining its output per point by SVI steps moves L[q_SA] from L[q]
towards L[q*] (the best diagonal Gaussian, whose ELBO is log p(x) − KL(q* ‖ p(z|x)) in closed
form): the fraction of the amortization gap closed lies in (0, 1] up to noise and grows with
the number of steps.
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae.infer.semi_amortized import SemiAmortizedGuide
from pyro_vae.lab.gap import amortization_gap, gap_table
from pyro_vae.models.ppca import gaussian_marginal_log_prob
from tests.common import exact_posterior, linear_gaussian_vae


def poor_case():
    vae = linear_gaussian_vae(num_data=100)
    with torch.no_grad():
        vae.encoder.head.loc.bias.fill_(1.5)
        vae.encoder.head.log_var.bias.fill_(-2.0)
    torch.manual_seed(0)
    return vae, torch.randn(12, 3) * 1.5


def test_refinement_closes_a_growing_fraction_of_the_amortization_gap():
    vae, x = poor_case()
    fractions = []
    for steps in (3, 60):
        pyro.set_rng_seed(0)
        report = amortization_gap(vae, x, iw_samples=200, eval_samples=400, refine_steps=2,
                                  semi_amortized=steps)
        summary = report.summary()
        fractions.append(summary["semi_amortized_fraction_closed"])
        assert summary["semi_amortized_steps"] == steps
    assert 0.05 < fractions[0] < fractions[1]
    assert fractions[1] == pytest.approx(1.0, abs=0.1)
    # the refined ELBO reaches the best diagonal Gaussian's closed-form ELBO
    lin = vae.decoder.net[0]
    exact = gaussian_marginal_log_prob(x, lin.bias.detach(), lin.weight.detach(), 0.5).float()
    _, cov = exact_posterior(vae, x)
    kl_best_diagonal = 0.5 * (torch.logdet(cov) + torch.linalg.inv(cov).diagonal().log().sum())
    best = float(exact.mean() - kl_best_diagonal.mean())
    assert float(report.elbo_q_sa.mean()) == pytest.approx(best, abs=0.1)
    table = gap_table(summary)
    assert "L[q_SA] (q refined by 60 SVI steps per point)" in table
    assert "Semi-amortized inference closes" in table


def test_a_trained_semi_amortized_guide_is_reported_against_its_own_encoder():
    vae, x = poor_case()
    sa = SemiAmortizedGuide(vae.model, vae.guide, steps=20)
    pyro.set_rng_seed(0)
    report = amortization_gap(vae, x, iw_samples=200, eval_samples=200, refine_steps=2,
                              guide=sa)
    assert report.semi_amortized_steps == 20
    assert float((report.elbo_q_sa - report.elbo_q).mean()) > 0.2  # q is the inner encoder


def test_bad_semi_amortized_argument_is_refused_in_one_line():
    vae, x = poor_case()
    with pytest.raises(Exception, match="semi_amortized must be a number of refinement steps"):
        amortization_gap(vae, x, iw_samples=20, eval_samples=20, semi_amortized=-1)
