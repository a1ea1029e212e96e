"""The binary-latent estimators (ARM, DisARM, RLOO, REBAR, RELAX; Gumbel-softmax and REINFORCE
beside them) against the exact ELBO gradient, computed by enumerating every state of a small
model written in plain Pyro.

Unbiasedness is a z-test per gradient coordinate: M seeded calls, each on the batch tiled R times
(so one call is the mean of R independent estimates), and |mean − exact| < 4 standard errors for
every encoder and decoder coordinate. The relaxed estimator's bias is measured and reported, not
asserted away. Every z-test fails for a wrong factor: dropping DisARM's ½, or flipping ARM's
sign, gives |z| in the tens.
"""

from __future__ import annotations

import functools
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae.errors import ConfigError
from pyro_vae.infer.binary import (
    ARM_ELBO,
    REBAR_ELBO,
    REINFORCE_ELBO,
    RELAX_ELBO,
    RLOO_ELBO,
    DisARM_ELBO,
    GumbelSoftmax_ELBO,
)

N_UNITS, D = 6, 12
M, R = 150, 16          # calls per estimator, replicates per call
Z_MAX = 4.0




def states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def log_bernoulli(b: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return (b * F.logsigmoid(logits) + (1 - b) * F.logsigmoid(-logits)).sum(-1)


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


# --------------------------------------------------------------------------- the toy model
class Toy(torch.nn.Module):
    """p(b) = Π Bernoulli(σ(prior)), p(x | b) = Bernoulli(σ(W b + c)),
    q(b | x) = Bernoulli(σ(A x + a))."""

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc, self.dec = torch.nn.Linear(D, N_UNITS), torch.nn.Linear(N_UNITS, D)
        self.prior = torch.nn.Parameter(torch.zeros(N_UNITS))
        with torch.no_grad():
            for p in (*self.enc.parameters(), *self.dec.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            self.prior.copy_(torch.randn(N_UNITS, generator=g) * 0.5)

    def model(self, x):
        pyro.module("toy", self)
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=self.prior).expand([N_UNITS]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(b)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("toy", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=self.enc(x)).to_event(1))

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_s q(s | x_n) [log p(x_n | s) + log p(s) − log q(s | x_n)] over all 2^n states, (B,)."""
        s = states(N_UNITS)
        log_q = log_bernoulli(s[:, None], self.enc(x))                        # (S, B)
        log_prior = log_bernoulli(s, self.prior)[:, None]
        log_lik = dist.Bernoulli(logits=self.dec(s)[:, None]).log_prob(x).sum(-1)
        return (log_q.exp() * (log_lik + log_prior - log_q)).sum(0)


def toy_batch(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, D), 0.5), generator=g)


def draw(fn_model, fn_guide, params, elbo, x, calls=M, replicates=R):
    """``calls`` gradient estimates (each the mean of ``replicates``) and loss values."""
    xt = x.repeat(replicates, *([1] * (x.dim() - 1)))
    grads, losses = [], []
    for _ in range(calls):
        loss = elbo.differentiable_loss(fn_model, fn_guide, xt)
        grads.append(flat(torch.autograd.grad(loss, params)) / replicates)
        losses.append(loss.detach() / replicates)
    return torch.stack(grads), torch.stack(losses)


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """(mean − exact) / se per coordinate; a coordinate without noise must match exactly."""
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    diff = mean - exact
    return torch.where(se > 1e-12, diff / se.clamp_min(1e-12),
                       torch.where(diff.abs() < 1e-6, 0.0, math.inf))


ESTIMATORS = {
    "arm": lambda: ARM_ELBO(max_plate_nesting=1),
    "disarm": lambda: DisARM_ELBO(max_plate_nesting=1),
    "rloo": lambda: RLOO_ELBO(num_particles=4, max_plate_nesting=1),
    "rebar": lambda: REBAR_ELBO(max_plate_nesting=1),
    "relax": lambda: RELAX_ELBO(max_plate_nesting=1),
    "gumbel-softmax": lambda: GumbelSoftmax_ELBO(temperature=0.5, max_plate_nesting=1),
    "reinforce": lambda: REINFORCE_ELBO(num_particles=4, max_plate_nesting=1),
}
UNBIASED = ("arm", "disarm", "rloo", "rebar", "relax")


@functools.cache
def toy_samples(name: str):
    """Seeded draws of ``name``'s gradient on the toy, with the exact gradient and ELBO."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    toy, x = Toy(), toy_batch()
    params = list(toy.parameters())
    elbo = ESTIMATORS[name]()
    exact_elbo = toy.exact_elbo(x).sum()
    exact = flat(torch.autograd.grad(-exact_elbo, params))
    grads, losses = draw(toy.model, toy.guide, params, elbo, x)
    encoder = sum(p.numel() for p in toy.enc.parameters())
    return {"grads": grads, "losses": losses, "exact": exact, "exact_loss": -exact_elbo.detach(),
            "encoder": encoder, "evaluations": elbo.evaluations}


def encoder_variance(name: str) -> float:
    """Total variance of one estimate of the encoder gradient (Σ over coordinates)."""
    s = toy_samples(name)
    return float(s["grads"][:, :s["encoder"]].var(0).sum()) * R


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", UNBIASED)
def test_estimator_is_unbiased_for_encoder_and_decoder(name):
    s = toy_samples(name)
    z = z_scores(s["grads"], s["exact"])
    k = s["encoder"]
    assert z[:k].abs().max() < Z_MAX, f"{name}: encoder biased, max |z| {z[:k].abs().max()}"
    assert z[k:].abs().max() < Z_MAX, f"{name}: decoder biased, max |z| {z[k:].abs().max()}"
    # the value of differentiable_loss is an unbiased estimate of −ELBO
    z_loss = (s["losses"].mean() - s["exact_loss"]) / (s["losses"].std() / math.sqrt(M))
    assert abs(z_loss) < Z_MAX
    # power: the same draws scaled by ½ or 2 (a dropped or doubled factor) fail the test
    for factor in (0.5, 2.0):
        assert z_scores(factor * s["grads"][:, :k], s["exact"][:k]).abs().max() > 2 * Z_MAX


def test_relaxed_estimator_bias_is_reported(record_property, capsys):
    s = toy_samples("gumbel-softmax")
    z = z_scores(s["grads"], s["exact"])
    bias = (s["grads"].mean(0) - s["exact"]).norm() / s["exact"].norm()
    record_property("gumbel_softmax_relative_bias", float(bias))
    record_property("gumbel_softmax_max_abs_z", float(z.abs().max()))
    with capsys.disabled():
        print(f"\n[binary] Gumbel-softmax τ=0.5: relative bias of ∇ELBO {float(bias):.3f}, "
              f"max |z| {float(z.abs().max()):.1f} (biased by design)")
    assert torch.isfinite(s["grads"]).all()


def test_variance_ordering_at_equal_cost(record_property, capsys):
    variances = {name: encoder_variance(name) for name in ESTIMATORS}
    for name, v in variances.items():
        record_property(f"encoder_variance_{name}", v)
    with capsys.disabled():
        print("\n[binary] encoder-gradient variance per estimate (Σ over coordinates), "
              "evaluations per estimate:")
        for name, v in variances.items():
            print(f"  {name:15s} {v:10.2f}   {toy_samples(name)['evaluations']}")
    # both use one antithetic pair (2 evaluations)
    assert variances["disarm"] <= variances["arm"]
    # both use K = 4 evaluations
    assert variances["rloo"] <= variances["reinforce"]


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("cls", [ARM_ELBO, DisARM_ELBO, RLOO_ELBO, REBAR_ELBO, RELAX_ELBO,
                                 GumbelSoftmax_ELBO, REINFORCE_ELBO])
def test_unknown_site_name_is_a_one_line_config_error(cls):
    toy, x = Toy(), toy_batch()
    with pytest.raises(ConfigError, match="'nope'") as info:
        cls(sites=["nope"], max_plate_nesting=1).loss(toy.model, toy.guide, x)
    assert "\n" not in str(info.value)


def test_named_site_restriction_and_bad_arguments():
    toy, x = Toy(), toy_batch()
    assert math.isfinite(DisARM_ELBO(sites=["b"], max_plate_nesting=1).loss(toy.model,
                                                                         toy.guide, x))
    mixed = Mixed()
    with pytest.raises(ConfigError, match="'z' is not a latent Bernoulli"):
        DisARM_ELBO(sites=["z"], max_plate_nesting=1).loss(mixed.model, mixed.guide,
                                                          torch.randn(3, D))
    with pytest.raises(ConfigError, match="K ≥ 2"):
        RLOO_ELBO(num_particles=1)
    with pytest.raises(ConfigError, match="num_pairs"):
        ARM_ELBO(num_pairs=0)


# --------------------------------------------------------------------------- mixed model
class Mixed(torch.nn.Module):
    """z ~ N(0, I₂) and b ~ Bernoulli(σ(prior)) (3 units); x ~ N(W z + V b + c, I). The guide
    draws z ~ N(μ(x), σ(x)²) (reparameterized) and b ~ Bernoulli(σ(E x)). The ELBO is exact in
    closed form over z and by enumeration over b."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.W, self.V = torch.nn.Linear(2, D), torch.nn.Linear(3, D, bias=False)
        self.mu, self.s, self.E = (torch.nn.Linear(D, 2), torch.nn.Linear(D, 2),
                                   torch.nn.Linear(D, 3))
        self.prior = torch.nn.Parameter(torch.randn(3) * 0.5)

    def model(self, x):
        pyro.module("mixed", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            b = pyro.sample("b", dist.Bernoulli(logits=self.prior).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(self.W(z) + self.V(b), 1.0).to_event(1), obs=x)

    def scale(self, x):
        return F.softplus(self.s(x)) + 0.05

    def guide(self, x):
        pyro.module("mixed", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.mu(x), self.scale(x)).to_event(1))
            pyro.sample("b", dist.Bernoulli(logits=self.E(x)).to_event(1))

    def exact_elbo(self, x):
        mu, sd = self.mu(x), self.scale(x)                                       # (B, 2)
        s = states(3)
        mean = (mu @ self.W.weight.T + self.W.bias)[None] + self.V(s)[:, None]   # (S, B, D)
        spread = (sd ** 2) @ (self.W.weight ** 2).T                              # (B, D)
        lik = (-0.5 * ((x - mean) ** 2 + spread) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_q = log_bernoulli(s[:, None], self.E(x))
        log_prior = log_bernoulli(s, self.prior)[:, None]
        kl_z = (-sd.log() + (sd ** 2 + mu ** 2) / 2 - 0.5).sum(-1)
        return (log_q.exp() * (lik + log_prior - log_q)).sum(0) - kl_z


def test_mixed_model_continuous_site_stays_pathwise():
    pyro.set_rng_seed(3)
    mixed = Mixed()
    x = torch.randn(4, D) * 2
    params = list(mixed.parameters())
    names = [n for n, _ in mixed.named_parameters()]
    exact = flat(torch.autograd.grad(-mixed.exact_elbo(x).sum(), params))
    sizes = [p.numel() for p in params]
    offsets = dict(zip(names, itertools.accumulate([0, *sizes]), strict=False))
    mu = slice(offsets["mu.weight"], offsets["mu.weight"] + sizes[names.index("mu.weight")])
    variances = {}
    for name, elbo in [("disarm", DisARM_ELBO(max_plate_nesting=1)),
                       ("rloo", RLOO_ELBO(2, max_plate_nesting=1)),
                       ("rebar", REBAR_ELBO(max_plate_nesting=1)),
                       ("trace", Trace_ELBO(max_plate_nesting=1))]:
        pyro.clear_param_store()
        grads, _ = draw(mixed.model, mixed.guide, params, elbo, x, calls=150, replicates=8)
        z = z_scores(grads, exact)
        assert z.abs().max() < Z_MAX, f"{name}: biased on the mixed model, max |z| {z.abs().max()}"
        variances[name] = float(grads[:, mu].var(0).sum())
    # μ(x)'s gradient is pathwise: no noisier than Trace_ELBO's (a score function would be far
    # noisier); DisARM's two copies share z, drawn before b
    assert variances["disarm"] <= 1.5 * variances["trace"]
    assert variances["rebar"] <= 1.5 * variances["trace"]


class MixedDependent(Mixed):
    """:class:`Mixed` with a guide whose binary logits depend on the continuous draw z."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.G = torch.nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.G.weight.mul_(3.0)

    def guide(self, x):
        pyro.module("mixed", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.mu(x), self.scale(x)).to_event(1))
            pyro.sample("b", dist.Bernoulli(logits=self.E(x) + self.G(z)).to_event(1))


def test_binary_logits_may_depend_on_an_earlier_continuous_draw():
    """z is drawn before b, so the copies share it and α(x, z) is the same in every copy:
    DisARM and REBAR agree with RLOO (which needs no sharing) in mean (two-sample z-test)."""
    pyro.set_rng_seed(6)
    net = MixedDependent()
    x = torch.randn(4, D) * 2
    params = list(net.parameters())
    means = {}
    for name, elbo in [("rloo", RLOO_ELBO(4, max_plate_nesting=1)),
                       ("disarm", DisARM_ELBO(max_plate_nesting=1)),
                       ("rebar", REBAR_ELBO(max_plate_nesting=1))]:
        pyro.clear_param_store()
        grads, _ = draw(net.model, net.guide, params, elbo, x, calls=100, replicates=8)
        means[name] = (grads.mean(0), grads.var(0) / grads.shape[0])
    for name in ("disarm", "rebar"):
        diff = means[name][0] - means["rloo"][0]
        se = (means[name][1] + means["rloo"][1]).sqrt()
        z = torch.where(se > 1e-12, diff / se.clamp_min(1e-12), diff.abs() * 1e6)
        assert z.abs().max() < Z_MAX, f"{name} vs rloo: max |z| {z.abs().max()}"


# --------------------------------------------------------------------------- hierarchical guide
class TwoLayer(torch.nn.Module):
    """A sigmoid belief net b₂ → b₁ → x (3 + 3 units) with the guide x → b₁ → b₂."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.p2 = torch.nn.Parameter(torch.randn(3) * 0.5)
        self.p21, self.dec = torch.nn.Linear(3, 3), torch.nn.Linear(3, D)
        self.q1, self.q12 = torch.nn.Linear(D, 3), torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.q12.weight.mul_(4.0)

    def model(self, x):
        pyro.module("two", self)
        with pyro.plate("data", x.shape[0]):
            b2 = pyro.sample("b2", dist.Bernoulli(logits=self.p2).expand([3]).to_event(1))
            b1 = pyro.sample("b1", dist.Bernoulli(logits=self.p21(b2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(b1)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("two", self)
        with pyro.plate("data", x.shape[0]):
            b1 = pyro.sample("b1", dist.Bernoulli(logits=self.q1(x)).to_event(1))
            pyro.sample("b2", dist.Bernoulli(logits=self.q12(b1)).to_event(1))

    def exact_elbo(self, x):
        s = states(6)
        b1, b2 = s[:, :3], s[:, 3:]
        log_q = log_bernoulli(b1[:, None], self.q1(x)) + log_bernoulli(b2, self.q12(b1))[:, None]
        log_p = (log_bernoulli(b2, self.p2) + log_bernoulli(b1, self.p21(b2)))[:, None] \
            + dist.Bernoulli(logits=self.dec(b1)[:, None]).log_prob(x).sum(-1)
        return (log_q.exp() * (log_p - log_q)).sum(0)


def test_hierarchical_guide_needs_layered_pairs_which_are_unbiased():
    pyro.set_rng_seed(4)
    net, x = TwoLayer(), toy_batch()
    with pytest.raises(ConfigError, match="layered=True"):
        DisARM_ELBO(max_plate_nesting=1).loss(net.model, net.guide, x.repeat(4, 1))
    with pytest.raises(ConfigError, match="depend on another binary draw"):
        REBAR_ELBO(max_plate_nesting=1).loss_and_grads(net.model, net.guide, x.repeat(4, 1))
    params = list(net.parameters())
    exact = flat(torch.autograd.grad(-net.exact_elbo(x).sum(), params))
    for elbo in (DisARM_ELBO(layered=True, max_plate_nesting=1),
                 ARM_ELBO(layered=True, max_plate_nesting=1)):
        grads, _ = draw(net.model, net.guide, params, elbo, x, calls=150, replicates=8)
        z = z_scores(grads, exact)
        assert z.abs().max() < Z_MAX, f"{type(elbo).__name__}: max |z| {z.abs().max()}"
    assert elbo.evaluations == 4     # one pair per binary site


# --------------------------------------------------------------------------- control variates
@pytest.mark.parametrize("cls", [REBAR_ELBO, RELAX_ELBO])
def test_control_variate_is_trained_by_the_variance_objective(cls):
    """From a poor start (η = 0.3, λ = 2) the variance gradient alone lowers the estimator's
    variance; the model and guide are left alone."""
    pyro.set_rng_seed(5)
    toy, x = Toy(), toy_batch().repeat(8, 1)
    elbo = cls(temperature=2.0, eta=0.3, max_plate_nesting=1)
    encoder = list(toy.enc.parameters())

    def variance(calls=80):
        grads = [flat(torch.autograd.grad(elbo.differentiable_loss(toy.model, toy.guide, x),
                                          encoder)) for _ in range(calls)]
        return float(torch.stack(grads).var(0).sum())

    before = variance()
    store = pyro.get_param_store()
    control = [store.get_param(n).unconstrained() for n in store
               if n.startswith(elbo.name)]
    assert len(control) == (2 if cls is REBAR_ELBO else 6)
    optimizer = torch.optim.Adam(control, lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        elbo.differentiable_loss(toy.model, toy.guide, x).backward(inputs=control)
        optimizer.step()
    after = variance()
    assert after < 0.5 * before, (before, after)
    assert elbo.eta > 0.5


# --------------------------------------------------------------------------- training
@functools.cache
def training_data():
    true = Toy(seed=5, scale=2.0)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        b = torch.bernoulli(torch.sigmoid(true.prior).expand(32, N_UNITS), generator=g)
        return torch.bernoulli(torch.sigmoid(true.dec(b)), generator=g)


STEPS = 150


@functools.cache
def frozen_encoder_elbo() -> float:
    """The exact ELBO reached in STEPS Adam steps by the exact gradient with the encoder frozen:
    what an estimator whose encoder gradient is useless (or wrong) cannot beat."""
    x, toy = training_data(), Toy(seed=2, scale=0.3)
    optimizer = torch.optim.Adam([*toy.dec.parameters(), toy.prior], lr=0.03)
    for _ in range(STEPS):
        optimizer.zero_grad()
        (-toy.exact_elbo(x).sum()).backward()
        optimizer.step()
    return float(toy.exact_elbo(x).mean().detach())


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_svi_trains_with_each_estimator(name):
    x = training_data()
    pyro.set_rng_seed(1)
    toy = Toy(seed=2, scale=0.3)
    before = float(toy.exact_elbo(x).mean().detach())
    svi = SVI(toy.model, toy.guide, Adam({"lr": 0.03}), ESTIMATORS[name]())
    losses = [svi.step(x) for _ in range(STEPS)]
    after = float(toy.exact_elbo(x).mean().detach())
    assert all(math.isfinite(v) for v in losses)
    assert after > before + 2.0, (before, after)
    assert after > frozen_encoder_elbo() + 0.2, (after, frozen_encoder_elbo())
