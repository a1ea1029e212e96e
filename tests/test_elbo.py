"""ELBO estimators against closed forms: analytic KL, Trace_ELBO vs TraceMeanField_ELBO, β."""

from __future__ import annotations

import pyro
import pytest
import torch
from conftest import make_batch, small_vae
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import elbo_terms, make_elbo
from pyro_vae.objectives import FixedJitTraceMeanField_ELBO


def closed_form_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² - 1 - log σ²)."""
    return 0.5 * (loc**2 + scale**2 - 1 - torch.log(scale**2)).sum(-1)


def test_analytic_kl_matches_closed_form_and_monte_carlo():
    vae = small_vae()
    x = make_batch(16)
    terms = elbo_terms(vae, x)
    loc, scale = vae.encode(x)
    torch.testing.assert_close(terms["kl"], closed_form_kl(loc, scale))
    # Monte Carlo: E_q[log q(z) - log p(z)] with many samples
    q, p = vae.posterior(x), vae.prior(16)
    z = q.sample((200000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(mc, terms["kl"].detach(), atol=0.02, rtol=0.01)


def test_meanfield_elbo_equals_recon_minus_closed_form_kl():
    """TraceMeanField_ELBO's loss = -(Σ E_q log p(x|z) - Σ KL) exactly when z is replayed."""
    vae = small_vae(num_data=None)
    x = make_batch(16)
    loc, scale = vae.encode(x)
    kl = closed_form_kl(loc, scale).sum()
    with torch.no_grad():
        # common random numbers: the same seed draws the same z in both computations
        pyro.set_rng_seed(3)
        loss = TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        terms = elbo_terms(vae, x)
    assert loss == pytest.approx(-(terms["recon"].sum() - kl).item(), rel=1e-5)


def test_trace_and_meanfield_agree_in_expectation():
    vae = small_vae(num_data=None)
    x = make_batch(16)
    n = 4000
    with torch.no_grad():
        mc = torch.tensor([Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
                           for _ in range(n)])
        mf = torch.tensor([TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
                           for _ in range(n)])
    se = (mc.var() / n + mf.var() / n).sqrt()
    assert abs(mc.mean() - mf.mean()) < 4 * se
    assert mf.var() < mc.var()  # the analytic KL removes the KL's Monte Carlo variance


def test_beta_weights_only_the_kl_term():
    vae = small_vae()
    x = make_batch(16)
    loc, scale = vae.encode(x)
    kl = closed_form_kl(loc, scale).sum().item()
    with torch.no_grad():
        pyro.set_rng_seed(5)
        l1 = TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(5)
        l2 = TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x, beta=0.3)
    assert l1 - l2 == pytest.approx(0.7 * kl, rel=1e-4)


@pytest.mark.parametrize("kind", ["trace", "meanfield"])
def test_jit_elbos_match_the_plain_ones(kind):
    vae = small_vae(num_data=64)
    x, idx = make_batch(8), torch.arange(8)
    beta = torch.tensor(0.5)
    plain, jit = make_elbo(kind), make_elbo(kind, jit=True)

    def model(x, idx, beta, batch_size=None):
        return vae.model(x, None, idx, beta)

    def guide(x, idx, beta, batch_size=None):
        return vae.guide(x, None, idx, beta)

    jit.differentiable_loss(model, guide, x, idx, beta, batch_size=8)  # compile (draws z)
    for _ in range(3):
        pyro.set_rng_seed(11)
        a = plain.differentiable_loss(model, guide, x, idx, beta)
        pyro.set_rng_seed(11)
        b = jit.differentiable_loss(model, guide, x, idx, beta, batch_size=8)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_fixed_jit_meanfield_compiles_once():
    vae = small_vae(num_data=64)
    x, idx = make_batch(8), torch.arange(8)
    elbo = make_elbo("meanfield", jit=True)
    assert isinstance(elbo, FixedJitTraceMeanField_ELBO)
    model, guide = vae.model, vae.guide  # bind once: Pyro keys the cache on id(model)
    for _ in range(4):
        elbo.differentiable_loss(model, guide, x, idx)
    assert len(elbo._differentiable_loss.compiled) == 1
