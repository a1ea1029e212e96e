"""Tests written to kill the mutants of ``pyro_vae/infer/evaluation.py`` (docs/testing.md): the
ELBO's terms against the closed-form ELBO of a linear-Gaussian model (exact KL and Monte Carlo
KL, chunked and not), the streaming log-mean-exp and its standard error against the direct
formulas, the trapezoidal quadrature against ``torch.trapezoid``, and the summaries (mean,
standard error, active units) against their definitions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae import VAE, make_likelihood
from pyro_vae.infer.evaluation import (
    Estimate,
    LogMeanExp,
    active_units,
    elbo_terms,
    evaluate_elbo,
    iwae_log_likelihood,
    latent_means,
    log_importance_weights,
    quadrature_log_likelihood,
)
from pyro_vae.nn.networks import MLPEncoder
from pyro_vae.sites import LATENT_SITE
from tests.common import ppca_vae

SIGMA = 0.5


def perturbed_ppca(scale=None):
    """pPCA with an encoder that is not the exact posterior (shrunk mean; wider, or of the given
    scale: at 10⁻⁴ the reconstruction term varies by under 10⁻³ nats from draw to draw)."""
    vae, marginal = ppca_vae(sigma=SIGMA)
    if scale is None:
        vae.encoder.log_s.data += 0.5
    else:
        vae.encoder.log_s.data.fill_(math.log(scale))
    vae.encoder.A.data *= 0.7
    return vae, marginal


def closed_form_elbo_terms(vae, x):
    """E_q log N(x; Wz + b, σ²I) = log N(x; Wμ + b, σ²I) − Σ_j s_j² ‖W_j‖² / (2σ²), and
    KL(N(μ, s²) ‖ N(0, I)) = ½ Σ (μ² + s² − 1 − log s²), per point."""
    W, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    with torch.no_grad():
        loc, scale = vae.encode(x)
        recon = (dist.Normal(loc @ W.T + b, SIGMA).log_prob(x).sum(-1)
                 - (scale**2 * (W**2).sum(0)).sum(-1) / (2 * SIGMA**2))
        kl = 0.5 * (loc**2 + scale**2 - 1 - torch.log(scale**2)).sum(-1)
    return recon, kl


@pytest.mark.parametrize("max_elements", [2**23, 60, 1])
def test_elbo_terms_are_the_closed_form_elbo_of_a_linear_gaussian(max_elements):
    """recon is Monte Carlo (with q's scale 10⁻⁴, within 10⁻³ nats of its mean); the KL is the
    closed form; chunked draws (60 elements: 2 draws a chunk; 1: one) change nothing."""
    vae, marginal = perturbed_ppca(scale=1e-4)
    torch.manual_seed(0)
    x = marginal.sample((6,))
    recon, kl = closed_form_elbo_terms(vae, x)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        terms = elbo_terms(vae, x, num_samples=7, max_elements=max_elements)
    torch.testing.assert_close(terms["kl"], kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["recon"], recon, atol=2e-3, rtol=0)
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])


def masked_guide(vae):
    """vae's own q(z | x), with a mask on z: the closed-form KL no longer applies."""

    def guide(x, y=None, indices=None, beta=1.0):
        with vae.data_plate(x.shape[0], indices), \
                poutine.mask(mask=torch.ones(x.shape[0], dtype=torch.bool)):
            loc, scale = vae.encode(x)
            return pyro.sample(LATENT_SITE, dist.Normal(loc, scale).to_event(1))

    return guide


def test_the_monte_carlo_kl_is_log_q_minus_log_p_averaged():
    vae, marginal = perturbed_ppca(scale=1e-4)
    torch.manual_seed(0)
    x = marginal.sample((6,))
    recon, kl = closed_form_elbo_terms(vae, x)
    pyro.set_rng_seed(2)
    with torch.no_grad():
        terms = elbo_terms(vae, x, num_samples=6000, guide=masked_guide(vae), max_elements=3000)
    # log q(z) − log p(z) varies by ε²/2 per dimension: a standard error of 0.013 nats per
    # point at 6000 draws
    torch.testing.assert_close(terms["kl"], kl, atol=0.06, rtol=0)
    torch.testing.assert_close(terms["recon"], recon, atol=2e-3, rtol=0)


def test_evaluate_elbo_summarizes_every_point_in_chunks():
    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((7,))
    _, kl = closed_form_elbo_terms(vae, x)
    out = evaluate_elbo(vae, x, batch_size=3, num_samples=2)
    assert out["kl"].n == 7
    assert out["kl"].mean == pytest.approx(float(kl.mean()), abs=1e-5)
    assert out["kl"].stderr == pytest.approx(float(kl.double().std() / math.sqrt(7)), rel=1e-4)
    assert set(out) == {"elbo", "recon", "kl"}


def test_estimate_is_the_mean_and_the_standard_error_of_the_mean():
    e = Estimate.of(torch.tensor([1.0, 2.0, 4.0, 9.0]))
    assert e.mean == 4.0 and e.n == 4
    assert e.stderr == pytest.approx(math.sqrt(((9 + 4 + 0 + 25) / 3) / 4))
    assert str(e) == f"4.000 ± {e.stderr:.3f}"
    assert e.to_dict() == {"mean": 4.0, "stderr": e.stderr, "n": 4}
    one = Estimate.of(torch.tensor([3.0]))
    assert one.mean == 3.0 and math.isnan(one.stderr) and one.n == 1
    assert Estimate.of(torch.tensor([2.0, 4.0])).stderr == pytest.approx(1.0)


def test_log_mean_exp_streams_the_log_mean_and_its_delta_method_error():
    torch.manual_seed(0)
    log_w = torch.randn(10, 3) * 2 - 50
    running = LogMeanExp(3)
    for part in (log_w[:3], log_w[3:6], log_w[6:]):
        running.add(part)
    assert running.count == 10
    value, stderr = running.result()
    torch.testing.assert_close(value, torch.logsumexp(log_w, 0) - math.log(10))
    w = (log_w.double() - log_w.double().max(0).values).exp()
    want = (w.pow(2).sum(0) / w.sum(0) ** 2 - 0.1).sqrt()
    torch.testing.assert_close(stderr, want.float())
    equal = LogMeanExp(2)
    equal.add(torch.full((4, 2), -3.0))
    value, stderr = equal.result()
    torch.testing.assert_close(value, torch.full((2,), -3.0))
    assert float(stderr.max()) < 1e-6  # 1/ESS − 1/K is 0 up to rounding, clamped at 0


def test_iwae_chunked_in_points_and_draws_is_the_exact_likelihood_at_the_exact_posterior():
    vae, marginal = ppca_vae(sigma=SIGMA)
    torch.manual_seed(0)
    x = marginal.sample((7,))
    exact = marginal.log_prob(x)
    bound, stderr = iwae_log_likelihood(vae, x, num_samples=9, batch_size=3, max_elements=30,
                                        return_stderr=True)
    torch.testing.assert_close(bound, exact, atol=1e-4, rtol=1e-5)
    assert bound.shape == stderr.shape == (7,)
    assert float(stderr.max()) < 1e-3
    seen = []
    iwae_log_likelihood(vae, x, num_samples=4, batch_size=3, progress=seen.append)
    assert seen == [3, 3, 1]
    log_w = log_importance_weights(vae, x, None, 5)
    assert log_w.shape == (5, 7)
    torch.testing.assert_close(log_w, exact.expand(5, 7), atol=1e-4, rtol=1e-5)


def test_iwae_with_a_poor_proposal_reports_its_spread():
    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    bound, stderr = iwae_log_likelihood(vae, x, num_samples=64, return_stderr=True)
    assert bool((stderr > 1e-3).all()) and bool((stderr < 1).all())
    torch.testing.assert_close(bound, marginal.log_prob(x), atol=float(6 * stderr.max()), rtol=0)


def linear_1d_vae(d=2):
    """x = w z + b + σ ε with a scalar z: p(x) = N(b, w wᵀ + σ² I)."""
    decoder = nn.Linear(1, d)
    decoder.weight.data = torch.tensor([[1.3], [-0.6]])
    decoder.bias.data = torch.tensor([0.2, 0.4])
    vae = VAE(MLPEncoder((d,), 1, ()), decoder, make_likelihood("gaussian", SIGMA), 1, (d,))
    cov = decoder.weight.data @ decoder.weight.data.T + SIGMA**2 * torch.eye(d)
    return vae, dist.MultivariateNormal(decoder.bias.data, cov)


def test_quadrature_is_the_exact_marginal_of_a_linear_gaussian():
    vae, marginal = linear_1d_vae()
    torch.manual_seed(0)
    x = marginal.sample((5,))
    got = quadrature_log_likelihood(vae, x, batch_size=2)
    assert got.dtype == torch.float64 and got.shape == (5,)
    torch.testing.assert_close(got.float(), marginal.log_prob(x), atol=2e-6, rtol=0)


def test_quadrature_is_the_trapezoidal_rule_on_its_nodes():
    """On [−1.5, 1.5] with 7 nodes the truncation and the end weights are visible: the value is
    log of torch.trapezoid of p(x | z) p(z) on those nodes."""
    vae, _ = linear_1d_vae()
    x = torch.tensor([[0.5, 0.1], [-1.0, 1.2]])
    got = quadrature_log_likelihood(vae, x, num_nodes=7, z_max=1.5)
    z = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)
    W, b = vae.decoder.weight.data.double(), vae.decoder.bias.data.double()
    mean = z[:, None, None] * W[:, 0] + b  # (7, 1, 2)
    joint = (dist.Normal(mean, SIGMA).log_prob(x.double()).sum(-1)
             + dist.Normal(0.0, 1.0).log_prob(z)[:, None]).exp()  # (7, 2)
    want = torch.trapezoid(joint, z, dim=0).log()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_latent_means_and_active_units_follow_their_definitions():
    vae, marginal = ppca_vae(sigma=SIGMA)
    torch.manual_seed(0)
    x = marginal.sample((1200,))
    data = SimpleNamespace(x_test=x, y_test=None)
    with torch.no_grad():
        means = vae.posterior_mean(x)
    torch.testing.assert_close(latent_means(vae, data), means)
    assert latent_means(vae, data, max_points=1001).shape == (1001, 2)
    var = means.var(0)
    lo, hi = sorted(var.tolist())
    assert active_units(vae, data, threshold=lo / 2) == 2
    assert active_units(vae, data, threshold=(lo + hi) / 2) == 1
    assert active_units(vae, data, threshold=hi * 2) == 0
    assert active_units(vae, data) == int((var > 0.01).sum())


def test_elbo_terms_defaults_are_one_draw_in_one_chunk():
    """The defaults by what they draw: one sample per point, and up to 2²³ elements a chunk
    (here every draw in one chunk, not one draw at a time, which uses the random numbers
    differently)."""
    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((6,))
    with torch.no_grad():
        pyro.set_rng_seed(4)
        default = elbo_terms(vae, x)
        pyro.set_rng_seed(4)
        one = elbo_terms(vae, x, num_samples=1, max_elements=2**23)
        torch.testing.assert_close(default["recon"], one["recon"])
        pyro.set_rng_seed(4)
        many = elbo_terms(vae, x, num_samples=50)
        pyro.set_rng_seed(4)
        big = elbo_terms(vae, x, num_samples=50, max_elements=2**23)
        pyro.set_rng_seed(4)
        small = elbo_terms(vae, x, num_samples=50, max_elements=30)
    torch.testing.assert_close(many["recon"], big["recon"])
    assert not torch.allclose(many["recon"], small["recon"])


def test_elbo_terms_chunks_are_consecutive_draws():
    """max_elements / (points × dims) draws a chunk: 60 / (6 × 5) = 2, 30 / 30 = 1 and
    50 / 30 = 1. The chunks are the calls one would make in a row, averaged."""
    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((6,))
    with torch.no_grad():
        for max_elements, per_chunk in ((60, 2), (30, 1), (50, 1)):
            pyro.set_rng_seed(5)
            chunked = elbo_terms(vae, x, num_samples=4, max_elements=max_elements)["recon"]
            pyro.set_rng_seed(5)
            parts = [elbo_terms(vae, x, num_samples=per_chunk)["recon"]
                     for _ in range(4 // per_chunk)]
            torch.testing.assert_close(chunked, torch.stack(parts).mean(0))


def test_a_kept_description_that_no_longer_fits_is_made_afresh():
    """elbo_terms(problem=...) reuses a description only while the traces still have its
    sites; a model whose latent site was renamed is described again."""
    from pyro_vae.infer.evaluation import problem_of

    class Renaming:
        site = "z"

        def model(self, x, y=None, indices=None, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample(self.site, dist.Normal(torch.zeros(x.shape[0], 2), 1.0)
                                .to_event(1))
                pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

        def guide(self, x, y=None, indices=None, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                pyro.sample(self.site, dist.Normal(torch.zeros(x.shape[0], 2), 0.5).to_event(1))

    owner = Renaming()
    x = torch.randn(4, 1)
    kept = problem_of(owner, x)
    owner.site = "w"
    with torch.no_grad():
        terms = elbo_terms(owner, x, num_samples=3, problem=kept)
    kl = 2 * (0.5 * (0.25 - 1 - math.log(0.25)))  # KL(N(0, 0.5²) ‖ N(0, 1)) in 2 dims
    torch.testing.assert_close(terms["kl"], torch.full((4,), kl))


def test_a_unit_at_exactly_the_threshold_is_not_active():
    vae, marginal = ppca_vae(sigma=SIGMA)
    torch.manual_seed(0)
    data = SimpleNamespace(x_test=marginal.sample((50,)), y_test=None)
    var = latent_means(vae, data).var(0)
    assert active_units(vae, data, threshold=float(var.min())) == 1


def test_evaluate_elbo_defaults_and_its_memory_estimate(monkeypatch):
    """One draw per point in chunks of 1000 points; the memory asked for is draws × the
    decoder's elements per draw × 4 bytes × 3."""
    import pyro_vae.infer.evaluation as evaluation
    from pyro_vae.resources import per_sample_elements

    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((1001,))
    asked = []
    monkeypatch.setattr(evaluation, "check_memory", lambda what, n, fix: asked.append(n))
    pyro.set_rng_seed(6)
    default = evaluate_elbo(vae, x)
    assert asked == [1 * per_sample_elements(vae) * 4 * 3]
    pyro.set_rng_seed(6)
    explicit = evaluate_elbo(vae, x, batch_size=1000, num_samples=1)
    assert default["recon"].mean == explicit["recon"].mean
    evaluate_elbo(vae, x[:10], num_samples=7)
    assert asked[-1] == 7 * per_sample_elements(vae) * 4 * 3
    pyro.set_rng_seed(6)
    other = evaluate_elbo(vae, x, batch_size=1001, num_samples=1)
    pyro.set_rng_seed(6)
    two = evaluate_elbo(vae, x, batch_size=1000, num_samples=2)
    assert other["recon"].mean != default["recon"].mean
    assert two["recon"].mean != default["recon"].mean


def test_iwae_chunks_are_consecutive_draws_pooled():
    """max_elements / (points × elements per draw) draws a chunk; the chunks' log-weights are
    the ones log_importance_weights would draw in a row, pooled into one log-mean-exp."""
    from pyro_vae.resources import per_sample_elements

    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    per_draw = 4 * per_sample_elements(vae)
    with torch.no_grad():
        for draws, chunks in ((1, (1,) * 5), (2, (2, 2, 1))):
            pyro.set_rng_seed(7)
            got = iwae_log_likelihood(vae, x, num_samples=5, max_elements=draws * per_draw)
            pyro.set_rng_seed(7)
            lw = torch.cat([log_importance_weights(vae, x, None, k) for k in chunks])
            torch.testing.assert_close(got, torch.logsumexp(lw.double(), 0).float()
                                       - math.log(5))


class PlainOwner:
    """A user's model that is no nn.Module: x = z₁ + z₂ + noise per dimension, with a
    likelihood attribute that says how many parameters a draw decodes to."""

    def __init__(self, num_params=None):
        if num_params is not None:
            self.likelihood = SimpleNamespace(num_params=num_params,
                                              check_support=lambda x, what: None)

    def model(self, x, y=None, indices=None, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(*z.shape[:-1], x.shape[-1])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None, indices=None, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 0.7).to_event(1))


@pytest.mark.parametrize("num_params,draws", [(None, 2), (2, 1)])
def test_iwae_of_a_plain_model_chunks_by_data_elements_times_parameters(num_params, draws):
    """Without a decoder to measure, a draw costs the data's elements × the likelihood's
    parameters (1 without a likelihood): 24 elements for 4 points of 3 dims is 2 draws a
    chunk, 1 with two parameters per dimension."""
    owner = PlainOwner(num_params)
    x = torch.randn(4, 3)
    pyro.set_rng_seed(11)
    got = iwae_log_likelihood(owner, x, num_samples=4, max_elements=24)
    pyro.set_rng_seed(11)
    lw = torch.cat([log_importance_weights(owner, x, None, draws) for _ in range(4 // draws)])
    torch.testing.assert_close(got, torch.logsumexp(lw.double(), 0).float() - math.log(4))


def test_iwae_of_a_conditional_model_takes_each_batch_with_its_labels():
    from tests.common import small_vae

    vae = small_vae(num_classes=3)
    torch.manual_seed(0)
    x, y = torch.rand(5, 6), torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        pyro.set_rng_seed(8)
        got = iwae_log_likelihood(vae, x, y, num_samples=3, batch_size=2)
        pyro.set_rng_seed(8)
        want = torch.cat([iwae_log_likelihood(vae, x[i:i + 2], y[i:i + 2], num_samples=3)
                          for i in (0, 2, 4)])
    torch.testing.assert_close(got, want)


def test_iwae_defaults_are_5000_draws_in_batches_of_100_points():
    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((101,))
    with torch.no_grad():
        pyro.set_rng_seed(9)
        default = iwae_log_likelihood(vae, x)
        pyro.set_rng_seed(9)
        explicit = iwae_log_likelihood(vae, x, num_samples=5000, batch_size=100,
                                       max_elements=2**23)
        pyro.set_rng_seed(9)
        other = iwae_log_likelihood(vae, x, num_samples=5000, batch_size=101)
    torch.testing.assert_close(default, explicit)
    assert not torch.equal(default, other)


def test_evaluate_elbo_chunks_no_more_points_than_fit(monkeypatch):
    import pyro_vae.infer.evaluation as evaluation

    vae, marginal = perturbed_ppca()
    torch.manual_seed(0)
    x = marginal.sample((7,))
    pyro.set_rng_seed(10)
    small = evaluate_elbo(vae, x, batch_size=3)
    monkeypatch.setattr(evaluation, "points_per_chunk", lambda vae, draws: 3)
    pyro.set_rng_seed(10)
    capped = evaluate_elbo(vae, x, batch_size=1000)
    assert capped["recon"].mean == small["recon"].mean


def test_quadrature_of_a_conditional_model_takes_each_batch_with_its_labels():
    from tests.common import small_vae

    vae = small_vae(latent_dim=1, num_classes=3)
    torch.manual_seed(0)
    x, y = torch.rand(5, 6), torch.tensor([0, 2, 1, 1, 0])
    got = quadrature_log_likelihood(vae, x, y, num_nodes=101, batch_size=2)
    want = torch.cat([quadrature_log_likelihood(vae, x[i:i + 1], y[i:i + 1], num_nodes=101)
                      for i in range(5)])
    torch.testing.assert_close(got, want)


def test_latent_means_take_at_most_5000_points_each_with_its_label():
    from tests.common import small_vae

    vae, marginal = ppca_vae(sigma=SIGMA)
    torch.manual_seed(0)
    data = SimpleNamespace(x_test=marginal.sample((5001,)), y_test=None)
    assert latent_means(vae, data).shape == (5000, 2)
    conditional = small_vae(num_classes=3)
    x, y = torch.rand(1200, 6), torch.randint(0, 3, (1200,))
    with torch.no_grad():
        want = conditional.posterior_mean(x, y)
    got = latent_means(conditional, SimpleNamespace(x_test=x, y_test=y))
    torch.testing.assert_close(got, want)


def test_quadrature_defaults_are_4001_nodes_on_plus_minus_9():
    """The documented rule, bit for bit: other nodes give the same integral only to rounding."""
    vae, marginal = linear_1d_vae()
    torch.manual_seed(0)
    x = marginal.sample((3,))
    default = quadrature_log_likelihood(vae, x)
    assert torch.equal(default, quadrature_log_likelihood(vae, x, num_nodes=4001, z_max=9.0))
    assert not torch.equal(default, quadrature_log_likelihood(vae, x, num_nodes=4002))
    assert not torch.equal(default, quadrature_log_likelihood(vae, x, z_max=10.0))
