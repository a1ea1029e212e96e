"""The documented defaults of the predictive functions (issue 28's mutation run of
``infer/predictive.py``): one draw of one point for the prior, one draw per point for the
posterior."""

from __future__ import annotations

from pyro_vae import posterior_predictive, prior_predictive
from tests.common import make_batch, small_vae


def test_the_prior_predictive_draws_one_point_once_by_default():
    prior = prior_predictive(small_vae())
    assert {tuple(v.shape[:2]) for v in prior.values()} == {(1, 1)}


def test_the_posterior_predictive_draws_once_per_point_by_default():
    post = posterior_predictive(small_vae(), make_batch(4))
    assert {tuple(v.shape[:2]) for v in post.values()} == {(1, 4)}
