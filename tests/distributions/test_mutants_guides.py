"""Tests written to kill the mutants of ``pyro_vae/distributions/guides.py`` (docs/testing.md):
the families' shapes and starting values as documented, the full covariance's Cholesky factor
entry by entry, the per-point parameters' round trip, and :func:`draw` against the change of
variables with the Jacobian taken by autograd."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_vae.distributions.guides import GUIDE_FAMILIES, GuideFamily, draw
from pyro_vae.errors import ConfigError

B, L = 3, 3


def inputs(event_shape=(2, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(B, L, generator=gen)
    scale = torch.rand(B, L, generator=gen) + 0.3
    x = torch.rand(B, *event_shape, generator=gen)
    return loc, scale, x


def test_families_are_built_with_the_documented_sizes():
    family = GuideFamily("full", (2, 3), L)
    assert family.context[0].in_features == 6 and family.context[0].out_features == 64
    assert family.tril.out_features == L * (L - 1) // 2 == 3
    assert GuideFamily("full", (6,), 4).tril.out_features == 6
    assert GuideFamily("full", (6,), 2, cond_dim=3).context[0].in_features == 9
    assert len(GuideFamily("planar", (6,), 2).flows) == 2  # the default flow length
    assert len(GuideFamily("iaf", (6,), 2, flow_length=3).flows) == 3
    assert GuideFamily("planar", (6,), 2, flow_length=0).is_diagonal
    assert not GuideFamily("planar", (6,), 2, flow_length=1).is_diagonal
    assert GuideFamily("diag", (6,), 2).is_diagonal


@pytest.mark.parametrize("latent,hidden", [(2, 32), (20, 40)])
def test_iaf_networks_have_two_hidden_layers_of_max_2l_and_32(latent, hidden):
    family = GuideFamily("iaf", (6,), latent, flow_length=1)
    arn = family.flows[0].nn
    linears = [m for m in arn.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears[:-1]] == [hidden, hidden]


def test_the_full_covariance_starts_next_to_the_diagonal():
    torch.manual_seed(0)
    family = GuideFamily("full", (6,), 12)  # 66 × 64 weights
    std = float(family.tril.weight.std())
    assert 0.008 < std < 0.012
    assert float(family.tril.bias.abs().max()) == 0.0


def test_flow_length_zero_is_accepted_and_negative_refused():
    GuideFamily("iaf", (6,), 2, flow_length=0)
    with pytest.raises(ConfigError, match="flow-length"):
        GuideFamily("iaf", (6,), 2, flow_length=-1)


def test_diag_is_the_encoders_gaussian_with_one_event_dim():
    loc, scale, x = inputs()
    q = GuideFamily("diag", (2, 3), L)(loc, scale, x)
    assert q.batch_shape == (B,) and q.event_shape == (L,)
    z = torch.randn(B, L)
    torch.testing.assert_close(q.log_prob(z),
                               torch.distributions.Normal(loc, scale).log_prob(z).sum(-1))


def test_full_covariance_factor_is_the_scale_on_the_diagonal_and_the_layer_below_it():
    torch.manual_seed(1)
    family = GuideFamily("full", (2, 3), L, cond_dim=2)
    torch.nn.init.normal_(family.tril.weight)
    loc, scale, x = inputs()
    y = torch.tensor([[1, 0], [0, 1], [1, 0]])
    q = family(loc, scale, x, y)
    c = family.context(torch.cat([x.reshape(B, -1), y.float()], -1))
    off = family.tril(c)
    want = torch.zeros(B, L, L)
    for b in range(B):
        want[b] = torch.diag(scale[b])
        want[b, 1, 0], want[b, 2, 0], want[b, 2, 1] = off[b]
    torch.testing.assert_close(q.scale_tril, want)
    torch.testing.assert_close(q.loc, loc)


@pytest.mark.parametrize("kind", GUIDE_FAMILIES)
def test_per_point_parameters_rebuild_the_amortized_posterior(kind):
    torch.manual_seed(2)
    family = GuideFamily(kind, (2, 3), L, flow_length=2, cond_dim=2)
    for p in family.parameters():
        torch.nn.init.normal_(p, std=0.3)
    loc, scale, x = inputs()
    y = torch.tensor([[1, 0], [0, 1], [0, 1]])
    params = family.local_parameters(loc, scale, x, y)
    torch.testing.assert_close(params["log_scale"], scale.log())
    assert all(not v.requires_grad for v in params.values())
    amortized, local = family(loc, scale, x, y), family.local_posterior(params)
    eps = torch.randn(4, B, L)
    z, log_q = draw(amortized, eps)
    z2, log_q2 = draw(local, eps)
    torch.testing.assert_close(z, z2)
    torch.testing.assert_close(log_q, log_q2)


@pytest.mark.parametrize("kind", GUIDE_FAMILIES)
def test_draw_is_the_reparameterization_with_the_change_of_variables(kind):
    """z = T(μ + σ ε) (for ``full``, μ + T ε) and log q(z) = log N(z₀; μ, σ²) − log |det ∂z/∂z₀|,
    with the Jacobian from autograd."""
    torch.manual_seed(3)
    family = GuideFamily(kind, (2, 3), L, flow_length=2)
    for p in family.parameters():
        torch.nn.init.normal_(p, std=0.5)
    loc, scale, x = inputs()
    q = family(loc, scale, x)
    eps = torch.randn(2, B, L)
    z, log_q = draw(q, eps)
    assert z.shape == (2, B, L) and log_q.shape == (2, B)
    if kind == "full":
        want = loc + torch.einsum("bij,sbj->sbi", q.scale_tril, eps)
        torch.testing.assert_close(z, want)
        torch.testing.assert_close(log_q, q.log_prob(z))
        return
    normal = torch.distributions.Normal(loc, scale)
    z0 = loc + scale * eps
    transforms = q.transforms if kind != "diag" else []

    def push(v):
        for t in transforms:
            v = t(v)
        return v

    for s in range(2):
        for b in range(B):
            def one(v, s=s, b=b):
                full = z0[s].clone()
                full[b] = v
                return push(full)[b]

            J = jacobian(one, z0[s, b])
            want = normal.log_prob(z0)[s, b].sum() - torch.linalg.slogdet(J)[1]
            torch.testing.assert_close(log_q[s, b], want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(z, push(z0))
