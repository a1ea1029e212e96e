"""Every likelihood is a normalized density equal to its torch.distributions counterpart."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.distributions as td

from pyro_vae import DataError, make_likelihood
from pyro_vae.distributions.likelihoods import LIKELIHOODS, MIN_PREDICTED_SCALE
from pyro_vae.errors import ConfigError
from pyro_vae.sites import OBS_SCALE_PARAM


def test_bernoulli_matches_torch_with_logits():
    logits = torch.randn(5, 7)
    x = torch.bernoulli(torch.rand(5, 7))
    got = make_likelihood("bernoulli").distribution(logits).log_prob(x)
    want = td.Bernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(got, want)
    # mean is sigmoid(logits), computed without a probs round trip
    torch.testing.assert_close(make_likelihood("bernoulli").mean(logits), torch.sigmoid(logits))


def test_bernoulli_logits_stay_finite_for_saturated_outputs():
    logits = torch.tensor([-200.0, 200.0])
    lp = make_likelihood("bernoulli").distribution(logits).log_prob(torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(lp, torch.tensor([-200.0, -200.0]))


def test_continuous_bernoulli_matches_torch_and_integrates_to_one():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.01, 2.0])
    lik = make_likelihood("continuous-bernoulli")
    x = torch.rand(5)
    torch.testing.assert_close(lik.distribution(logits).log_prob(x),
                               td.ContinuousBernoulli(logits=logits).log_prob(x))
    grid = torch.linspace(0, 1, 20001)[:, None]
    dens = lik.distribution(logits).log_prob(grid).exp()
    integral = torch.trapezoid(dens, grid[:, 0], dim=0)
    torch.testing.assert_close(integral, torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,family", [("gaussian", td.Normal), ("laplace", td.Laplace)])
def test_fixed_scale_location_families(name, family):
    loc = torch.randn(4, 3)
    x = torch.randn(4, 3)
    got = make_likelihood(name, obs_scale=0.3).distribution(loc).log_prob(x)
    torch.testing.assert_close(got, family(loc, 0.3).log_prob(x))


def test_laplace_is_l1_loss_plus_constant():
    loc, x, b = torch.randn(10), torch.randn(10), 0.1
    lp = make_likelihood("laplace", obs_scale=b).distribution(loc).log_prob(x)
    torch.testing.assert_close(-lp, (x - loc).abs() / b + math.log(2 * b))


@pytest.mark.parametrize("name,family", [("gaussian-learned", td.Normal),
                                         ("laplace-learned", td.Laplace)])
def test_learned_scale_is_a_positive_pyro_param(name, family):
    loc, x = torch.randn(4, 3), torch.randn(4, 3)
    lik = make_likelihood(name, obs_scale=0.7)
    got = lik.distribution(loc).log_prob(x)
    assert OBS_SCALE_PARAM in pyro.get_param_store()
    scale = pyro.param(OBS_SCALE_PARAM)
    torch.testing.assert_close(scale, torch.tensor(0.7))
    torch.testing.assert_close(got, family(loc, 0.7).log_prob(x))
    # the constraint is positive: the unconstrained value is log(0.7)
    unconstrained = pyro.get_param_store().get_state()["params"][OBS_SCALE_PARAM]
    torch.testing.assert_close(unconstrained, torch.tensor(math.log(0.7)))


def test_predicted_scale_uses_softplus_with_floor():
    loc, raw, x = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    got = make_likelihood("gaussian-predicted").distribution(loc, raw).log_prob(x)
    scale = torch.nn.functional.softplus(raw) + MIN_PREDICTED_SCALE
    torch.testing.assert_close(got, td.Normal(loc, scale).log_prob(x))


def test_greyscale_data_is_refused_by_bernoulli_with_the_fixes_named():
    lik = make_likelihood("bernoulli")
    with pytest.raises(DataError, match="--binarize dynamic"):
        lik.check_support(torch.tensor([[0.0, 0.5, 1.0]]))
    lik.check_support(torch.tensor([[0.0, 1.0, 1.0]]))  # binary passes
    make_likelihood("bernoulli", allow_greyscale=True).check_support(torch.tensor([[0.5]]))


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli"])
def test_pixels_outside_unit_interval_are_refused(name):
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        make_likelihood(name).check_support(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        make_likelihood(name, allow_greyscale=True).check_support(torch.tensor([[-0.1]]))


def test_unknown_likelihood_and_bad_scale():
    with pytest.raises(ConfigError, match="choose one of"):
        make_likelihood("poisson")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="obs-scale"):
            make_likelihood("gaussian", obs_scale=bad)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_every_likelihood_builds_and_scores(name):
    lik = make_likelihood(name)
    params = [torch.randn(3, 4) for _ in range(lik.num_params)]
    x = torch.bernoulli(torch.rand(3, 4)) if lik.support != "real" else torch.randn(3, 4)
    lp = lik.distribution(*params).log_prob(x)
    assert lp.shape == (3, 4) and torch.isfinite(lp).all()
    assert lik.mean(*params).shape == (3, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logit", [0.0, 1e-4, 5e-3, 0.02, 0.5, 5.0, 17.0, 20.0, 30.0, 60.0, 100.0,
                                   -0.5, -17.0, -100.0])
def test_continuous_bernoulli_integrates_to_one_for_every_logit(dtype, logit):
    """torch's form integrates to 0.94 at |ℓ| = 17 and 0.53 at 30 in float32 (it clamps λ
    inside the normalizer but not in the cross-entropy); the library's is normalized within
    10⁻⁵ for |ℓ| ≤ 100 in float32 and float64."""
    likelihood = make_likelihood("continuous-bernoulli")
    x = torch.linspace(0, 1, 2_000_001, dtype=torch.float64)
    log_p = likelihood.distribution(torch.tensor(logit, dtype=dtype)).log_prob(x.to(dtype))
    assert log_p.dtype == dtype
    mass = torch.trapezoid(log_p.double().exp(), x)
    assert float(mass) == pytest.approx(1.0, abs=1e-5)


def test_continuous_bernoulli_log_normalizer_is_smooth_through_zero():
    from pyro_vae.distributions.likelihoods import continuous_bernoulli_log_norm

    logits = torch.tensor([-2e-2, -1e-2, -1e-6, 0.0, 1e-6, 1e-2, 2e-2], dtype=torch.float64,
                          requires_grad=True)
    value = continuous_bernoulli_log_norm(logits)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    exact = torch.log(torch.where(logits == 0, torch.tensor(2.0, dtype=torch.float64),
                                  logits / torch.tanh(logits / 2)))
    torch.testing.assert_close(value, exact, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, logits.detach() / 6, atol=1e-6, rtol=0)  # d/dℓ ℓ²/12


@pytest.mark.parametrize("name", ["gaussian", "gaussian-learned", "gaussian-predicted",
                                  "laplace", "laplace-learned"])
def test_every_real_likelihood_integrates_to_one(name):
    likelihood = make_likelihood(name, obs_scale=0.3)
    params = [torch.tensor(0.4)] + ([torch.tensor(-0.7)] if likelihood.num_params == 2 else [])
    with pyro.poutine.block():
        d = likelihood.distribution(*params)
    x = torch.linspace(-12, 12, 400_001)
    assert float(torch.trapezoid(d.log_prob(x).detach().double().exp(), x.double())) == \
        pytest.approx(1.0, abs=1e-5)


def test_bernoulli_sums_to_one_over_its_support():
    d = make_likelihood("bernoulli").distribution(torch.tensor([-30.0, 0.0, 7.0, 30.0]))
    total = d.log_prob(torch.zeros(4)).exp() + d.log_prob(torch.ones(4)).exp()
    torch.testing.assert_close(total, torch.ones(4))
