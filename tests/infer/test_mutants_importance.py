"""Tests written to kill the mutants of ``pyro_vae/infer/importance.py`` (docs/testing.md): every
objective × estimator against an independent implementation of the module docstring's formulas,
on the very draws the ELBO made (recorded through the guide), with subsampling (N/B ≠ 1), a KL
weight β ≠ 1 on z, a masked observation and a second plate inside the data plate, so that a
changed sign, constant, reduction or coefficient shows up in the loss or in a gradient."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import NEGLIGIBLE_WEIGHT, ImportanceWeightedELBO, _flush

N, B, D, L, BETA, SIGMA = 50, 4, 3, 2, 0.7, 0.5


class Toy(nn.Module):
    """x = W z + b + σ ε (z ~ N(0, I) weighted by β, x in two pieces: a plate of size 2 inside
    the data plate for the first D − 1 coordinates, and a masked last coordinate), q(z | x) =
    N(A x + c, diag s²). θ = (W, b), φ = (A, c, log s)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.dec = nn.Linear(L, D)
        self.enc = nn.Linear(D, L)
        for p in (*self.dec.parameters(), *self.enc.parameters()):
            p.data = 0.6 * torch.randn(p.shape, generator=gen)
        self.log_s = nn.Parameter(torch.tensor([-0.4, 0.3]))
        self.mask = torch.tensor([True, False, True, True])
        self.draws: list[torch.Tensor] = []

    def theta(self):
        return list(self.dec.parameters())

    def phi(self):
        return [*self.enc.parameters(), self.log_s]

    def model(self, x):
        with pyro.plate("data", N, subsample=torch.arange(B), dim=-1):
            with poutine.scale(scale=BETA):
                z = pyro.sample("z", dist.Normal(torch.zeros(B, L), 1.0).to_event(1))
            mean = self.dec(z)
            with pyro.plate("pieces", D - 1, dim=-2):
                # (P, 1, B, D - 1) → (P, D - 1, B): the particle dim, then the plates'
                head = mean[..., :-1].transpose(-1, -2).squeeze(-3)
                pyro.sample("x_head", dist.Normal(head, SIGMA), obs=x[:, :-1].T)
            with poutine.mask(mask=self.mask):
                pyro.sample("x_tail", dist.Normal(mean[..., -1], SIGMA), obs=x[:, -1])

    def guide(self, x):
        with pyro.plate("data", N, subsample=torch.arange(B), dim=-1), poutine.scale(scale=BETA):
            z = pyro.sample("z", self.q(x))
        self.draws.append(z)

    def q(self, x):
        return dist.Normal(self.enc(x), self.log_s.exp()).to_event(1)


def reference_log_w(toy: Toy, x: torch.Tensor, eps: torch.Tensor, stop_q: bool):
    """(log p(x, z), log w) per draw and point, (P, B), at z = A x + c + s ε."""
    loc, s = toy.enc(x), toy.log_s.exp()
    z = loc + s * eps
    mean = toy.dec(z)
    log_lik = dist.Normal(mean, SIGMA).log_prob(x)
    log_lik = log_lik[..., :-1].sum(-1) + log_lik[..., -1] * toy.mask
    log_p = log_lik + BETA * dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    q_loc, q_s = (loc.detach(), s.detach()) if stop_q else (loc, s)
    log_q = BETA * dist.Normal(q_loc, q_s).log_prob(z).sum(-1)
    return log_p, log_p - log_q


def lme(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(t, dim) - math.log(t.shape[dim])


def objective(log_w: torch.Tensor, name: str, K: int, M: int, c: float) -> torch.Tensor:
    """Per point: the module docstring's table."""
    groups = log_w.reshape(M, K, -1)
    if name == "elbo":
        return log_w.mean(0)
    if name in ("iwae", "miwae"):
        return lme(groups, 1).mean(0)
    if name == "ciwae":
        return c * log_w.mean(0) + (1 - c) * lme(log_w, 0)
    return lme(log_w, 0)  # piwae's θ target


def reference(toy, x, eps, name, estimator, K, M, c):
    """(loss, θ gradient, φ gradient) as the module docstring defines them."""
    scale = N / B
    _, log_w = reference_log_w(toy, x, eps, stop_q=False)
    loss = -scale * objective(log_w, name, K, M, c).sum()
    g_theta = torch.autograd.grad(loss, toy.theta(), retain_graph=True)
    phi_name = "miwae" if name == "piwae" else name
    if estimator == "reparam":
        g_phi = torch.autograd.grad(-scale * objective(log_w, phi_name, K, M, c).sum(), toy.phi())
        return loss, g_theta, g_phi
    _, log_w_stl = reference_log_w(toy, x, eps, stop_q=True)
    if estimator == "stl":
        g_phi = torch.autograd.grad(-scale * objective(log_w_stl, phi_name, K, M, c).sum(),
                                    toy.phi())
        return loss, g_theta, g_phi
    # DReG: Σ_p a_p ∇_z log w_p ∂z/∂φ with the weights a held fixed
    lw = log_w.detach().reshape(M, K, -1)
    w = lw.softmax(1).reshape(M * K, -1)
    a = {"elbo": torch.full_like(w, 1 / (M * K)), "iwae": w**2, "miwae": w**2 / M,
         "piwae": w**2 / M, "ciwae": c / K + (1 - c) * w**2}[name]
    g_phi = torch.autograd.grad(-scale * (a * log_w_stl).sum(), toy.phi())
    return loss, g_theta, g_phi


CASES = [(name, est) for name in ("elbo", "iwae", "miwae", "ciwae", "piwae")
         for est in ("reparam", "stl", "dreg")]


@pytest.mark.parametrize("name,estimator", CASES)
def test_loss_and_both_gradients_match_the_formulas_on_the_same_draws(name, estimator):
    K, M, c = 3, (2 if name in ("miwae", "piwae", "elbo") else 1), 0.3
    toy = Toy()
    torch.manual_seed(0)
    x = torch.randn(B, D)
    elbo = ImportanceWeightedELBO(name, K, M, estimator=estimator, ciwae_beta=c,
                                  max_plate_nesting=2)
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(toy.model, toy.guide, x)
    params = [*toy.theta(), *toy.phi()]
    got = torch.autograd.grad(loss, params)
    z = toy.draws[-1].detach()
    assert z.shape == (K * M, 1, B, L)  # the particle plate outside the model's two plates
    z = z.reshape(K * M, B, L)
    eps = (z - toy.enc(x).detach()) / toy.log_s.exp().detach()
    want_loss, g_theta, g_phi = reference(toy, x, eps, name, estimator, K, M, c)
    assert float(loss.detach()) == pytest.approx(float(want_loss), rel=1e-5)
    for g, w in zip(got, [*g_theta, *g_phi], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # loss() is the same number, on the same draws
    pyro.set_rng_seed(5)
    assert elbo.loss(toy.model, toy.guide, x) == pytest.approx(float(want_loss), rel=1e-5)


@pytest.mark.parametrize("name,estimator", [("iwae", "dreg"), ("piwae", "reparam")])
def test_svi_step_backpropagates_the_estimator(name, estimator):
    """``loss_and_grads`` leaves the estimator's gradient in ``.grad`` and returns the loss."""
    K, M = 4, (2 if name == "piwae" else 1)
    toy = Toy()
    torch.manual_seed(1)
    x = torch.randn(B, D)
    pyro.set_rng_seed(7)
    value = ImportanceWeightedELBO(name, K, M, estimator=estimator,
                                   max_plate_nesting=2).loss_and_grads(toy.model, toy.guide, x)
    z = toy.draws[-1].detach().reshape(K * M, B, L)
    eps = (z - toy.enc(x).detach()) / toy.log_s.exp().detach()
    want_loss, g_theta, g_phi = reference(toy, x, eps, name, estimator, K, M, 0.5)
    assert value == pytest.approx(float(want_loss), rel=1e-5)
    for p, w in zip([*toy.theta(), *toy.phi()], [*g_theta, *g_phi], strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-5)


def test_negligible_weights_are_flushed_to_zero_and_the_rest_kept():
    assert NEGLIGIBLE_WEIGHT == 1e-20
    t = torch.tensor([0.0, 5e-21, 1e-20, 2e-20, 0.5], dtype=torch.float64)
    assert _flush(t).tolist() == [0.0, 0.0, 1e-20, 2e-20, 0.5]


@pytest.mark.parametrize("options", [dict(objective="elbo", num_groups=2),
                                     dict(objective="miwae", num_groups=2),
                                     dict(objective="piwae", num_groups=2),
                                     dict(objective="ciwae", ciwae_beta=0.0),
                                     dict(objective="ciwae", ciwae_beta=1.0),
                                     dict(num_particles=1, num_groups=1)])
def test_the_edges_of_the_valid_options_are_accepted(options):
    ImportanceWeightedELBO(**options)


@pytest.mark.parametrize("options", [dict(objective="ciwae", ciwae_beta=-0.01),
                                     dict(objective="ciwae", ciwae_beta=1.01),
                                     dict(objective="ciwae", ciwae_beta=True),
                                     dict(objective="ciwae", num_groups=2)])
def test_just_outside_the_valid_options_is_refused(options):
    with pytest.raises(ConfigError):
        ImportanceWeightedELBO(**options)


class OnePlate(Toy):
    """The same density with the data plate only (the default max_plate_nesting = 1)."""

    score_guide = False

    def model(self, x):
        with pyro.plate("data", N, subsample=torch.arange(B), dim=-1):
            with poutine.scale(scale=BETA):
                z = pyro.sample("z", dist.Normal(torch.zeros(B, L), 1.0).to_event(1))
            mean = self.dec(z)
            pyro.sample("x_head", dist.Normal(mean[..., :-1], SIGMA).to_event(1),
                        obs=x[:, :-1])
            with poutine.mask(mask=self.mask):
                pyro.sample("x_tail", dist.Normal(mean[..., -1], SIGMA), obs=x[:, -1])

    def q(self, x):
        if not self.score_guide:
            return super().q(x)

        class NoRsample(dist.Normal):
            has_rsample = False

        return NoRsample(self.enc(x), self.log_s.exp()).to_event(1)


def test_the_default_particle_plate_sits_just_outside_the_data_plate():
    toy = OnePlate()
    x = torch.randn(B, D)
    elbo = ImportanceWeightedELBO("miwae", 3, 2)
    assert elbo.num_particles == 6  # Pyro's attribute: all the draws
    pyro.set_rng_seed(0)
    loss = elbo.loss(toy.model, toy.guide, x)
    z = toy.draws[-1].detach()
    assert z.shape == (6, B, L)
    eps = (z - toy.enc(x).detach()) / toy.log_s.exp().detach()
    want, _, _ = reference(toy, x, eps, "miwae", "reparam", 3, 2, 0.5)
    assert loss == pytest.approx(float(want.detach()), rel=1e-5)


def test_a_score_function_site_enters_the_weights_whole_where_allowed():
    """The hook VIMCO uses: a non-reparameterized guide site's log q is in log w in full."""

    class WithScoreSites(ImportanceWeightedELBO):
        score_sites_allowed = True

    toy = OnePlate()
    toy.score_guide = True
    x = torch.randn(B, D)
    pyro.set_rng_seed(0)
    loss = WithScoreSites("iwae", 4).loss(toy.model, toy.guide, x)
    z = toy.draws[-1].detach()
    assert not toy.draws[-1].requires_grad
    eps = (z - toy.enc(x).detach()) / toy.log_s.exp().detach()
    want, _, _ = reference(toy, x, eps, "iwae", "reparam", 4, 1, 0.5)
    assert loss == pytest.approx(float(want.detach()), rel=1e-5)
    with pytest.raises(ConfigError, match="not reparameterizable"):
        ImportanceWeightedELBO("iwae", 4).loss(toy.model, toy.guide, x)
