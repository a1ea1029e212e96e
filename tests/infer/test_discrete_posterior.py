"""The exact discrete posterior by enumeration (what ``infer_discrete`` gives, for codes with
event dims), against the closed-form state weights and a brute-force sum."""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import Config, ConfigError, ModelGuide
from pyro_vae.distributions.discrete import bernoulli_code
from pyro_vae.infer.discrete import discrete_posterior, state_log_weights
from pyro_vae.infer.problem import ModelError
from pyro_vae.models.builder import build_vae


def test_discrete_vae_code_posterior_equals_the_state_weights():
    torch.manual_seed(0)
    vae = build_vae(Config(dataset="digits", latent="bernoulli", latent_dim=3, hidden=(16,),
                           likelihood="bernoulli"), (1, 8, 8))
    x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    states, log_probs = discrete_posterior(vae, x)
    log_q, log_w = state_log_weights(vae, x)
    joint = log_q + log_w  # log p(x, s), per state and point
    torch.testing.assert_close(log_probs, joint - joint.logsumexp(0), atol=1e-5, rtol=0)
    assert states["z"].shape == (8, 3)


W = torch.tensor([[1.5, -0.5], [0.3, 2.0], [-1.0, 0.7]])


def two_site_model(x):
    with pyro.plate("points", x.shape[0]):
        a = pyro.sample("a", dist.Bernoulli(0.3))
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
        loc = W[c] + 2.0 * a.unsqueeze(-1)
        pyro.sample("obs", dist.Normal(loc, 0.8).to_event(1), obs=x)


def test_a_user_model_with_two_discrete_sites_against_brute_force():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.5], [-1.0, 1.0]])
    states, log_probs = discrete_posterior(ModelGuide(two_site_model, two_site_model), x)
    for s in range(log_probs.shape[0]):
        a, c = states["a"][s], states["c"][s].long()
        ref = []
        for aa, cc in itertools.product([0.0, 1.0], range(3)):
            lp = (dist.Bernoulli(0.3).log_prob(torch.tensor(aa))
                  + torch.tensor([0.2, 0.5, 0.3]).log()[cc]
                  + dist.Normal(W[cc] + 2.0 * aa, 0.8).log_prob(x).sum(-1))
            ref.append(lp)
        ref = torch.stack(ref)
        ref = ref - ref.logsumexp(0)
        k = int(a) * 3 + int(c)
        torch.testing.assert_close(log_probs[s], ref[k], atol=1e-5, rtol=0)


def test_continuous_or_too_many_states_are_refused_in_one_line():
    def gauss(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ModelError, match="no finite support"):
        discrete_posterior(ModelGuide(gauss, gauss), torch.zeros(3))

    def wide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", bernoulli_code(torch.zeros(x.shape[0], 13)))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    with pytest.raises(ConfigError, match="8,192 joint states"):
        discrete_posterior(ModelGuide(wide, wide), torch.zeros(3))
