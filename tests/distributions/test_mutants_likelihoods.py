"""Tests written to kill the mutants of ``pyro_vae/distributions/likelihoods.py`` that the first
mutation run left alive (docs/testing.md): the documented constants and defaults as numbers, the
continuous Bernoulli's series branch against a 50-digit reference, and the support check on data
that straddles the interval."""

from __future__ import annotations

import mpmath
import pyro
import pytest
import torch

from pyro_vae import DataError, make_likelihood
from pyro_vae.distributions.likelihoods import (
    LIKELIHOODS,
    LocationScaleLikelihood,
    continuous_bernoulli_log_norm,
)
from pyro_vae.sites import OBS_SCALE_PARAM


def test_each_likelihood_asks_the_decoder_for_the_documented_number_of_outputs():
    expected = {"bernoulli": 1, "continuous-bernoulli": 1, "gaussian": 1, "gaussian-learned": 1,
                "gaussian-predicted": 2, "laplace": 1, "laplace-learned": 1}
    assert {name: make_likelihood(name).num_params for name in LIKELIHOODS} == expected


def test_only_the_learned_likelihoods_learn_a_scale():
    learned = {name for name in LIKELIHOODS if make_likelihood(name).learns_scale}
    assert learned == {"gaussian-learned", "laplace-learned"}


@pytest.mark.parametrize("name,scale", [("gaussian", 1.0), ("laplace", 1.0),
                                        ("gaussian-learned", 0.1), ("laplace-learned", 0.1)])
def test_default_scales_are_one_fixed_and_a_tenth_learned(name, scale):
    """The module's table: σ (or b) is 1.0 when fixed, and a learned one starts at 0.1."""
    d = make_likelihood(name).distribution(torch.zeros(3))
    torch.testing.assert_close(d.scale.detach(), torch.full((3,), scale))
    if "learned" in name:
        torch.testing.assert_close(pyro.param(OBS_SCALE_PARAM).detach(), torch.tensor(scale))


def test_a_location_scale_likelihood_built_directly_has_unit_scale():
    d = LocationScaleLikelihood("gaussian", 1, "real").distribution(torch.zeros(2))
    torch.testing.assert_close(d.scale, torch.ones(2))


def test_the_predicted_scale_floor_is_one_thousandth():
    """softplus(−60) ≈ 1e−26: the scale is the floor itself, 10⁻³ as documented."""
    d = make_likelihood("gaussian-predicted").distribution(torch.zeros(2),
                                                           torch.tensor([-60.0, 0.0]))
    torch.testing.assert_close(d.scale, torch.tensor([1e-3, 0.6931472 + 1e-3]))


def test_data_straddling_the_unit_interval_is_refused():
    """Both ends are checked with the right extreme: min below 0 though max is inside."""
    for name in ("bernoulli", "continuous-bernoulli"):
        with pytest.raises(DataError, match=r"in \[0, 1\]"):
            make_likelihood(name).check_support(torch.tensor([-0.5, 0.5]))
        with pytest.raises(DataError, match=r"in \[0, 1\]"):
            make_likelihood(name, allow_greyscale=True).check_support(torch.tensor([-0.5, 0.5]))


def _log_c(a: float) -> float:
    """log C = log(ℓ / tanh(ℓ/2)) at 50 digits."""
    with mpmath.workdps(50):
        a = mpmath.mpf(a)
        return float(mpmath.log(a / mpmath.tanh(a / 2)))


@pytest.mark.parametrize("logit", [-0.0099, -0.005, 0.001, 0.005, 0.0099])
def test_the_series_branch_is_exact_to_rounding_in_float64(logit):
    """Below |ℓ| = 0.01 the normalizer is the series log 2 + ℓ²/12 − ℓ⁴/1440 (the next term,
    ℓ⁶/90720, is under 10⁻¹⁷ there): within 10⁻¹⁵ of the 50-digit value, where the ℓ⁴ term
    alone is 6.7·10⁻¹² at ℓ = 0.0099."""
    got = float(continuous_bernoulli_log_norm(torch.tensor(logit, dtype=torch.float64)))
    assert abs(got - _log_c(logit)) < 1e-15


@pytest.mark.parametrize("logit", [0.01, -0.02, 0.5, -1.0, 5.0, 30.0])
def test_the_exact_branch_takes_over_at_one_hundredth(logit):
    """From |ℓ| = 0.01 on the closed form is used, exact to rounding (the series cut off at ℓ⁴
    would be 5·10⁻⁶ off at ℓ = 0.5)."""
    got = float(continuous_bernoulli_log_norm(torch.tensor(logit, dtype=torch.float64)))
    assert got == pytest.approx(_log_c(logit), rel=1e-14, abs=1e-15)
