"""Tests written to kill the mutants of ``pyro_vae/infer/estimators.py`` (docs/testing.md): each
estimator's surrogate against its closed-form gradient on the very draws it made, the baselines'
updates number for number, the explicit surrogates against a hand computation with the same
seed, and the Pyro-side pieces (stop-gradient rebuilds, the score-function wrapper, the ELBO
each estimator maps to) by what they compute."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import (
    BASELINE_BETA,
    BaselineState,
    DifferentiableTraceGraph_ELBO,
    NeuralBaseline,
    ScoreFunctionDistribution,
    ScoreFunctionELBO,
    ScoreFunctionMessenger,
    StickingTheLandingELBO,
    StopGradientMultivariateNormal,
    StopGradientNormal,
    _rebuild,
    check_estimator,
    explicit_surrogate,
    mean_integrand,
    pyro_loss,
    pyro_objective,
    surrogate_objective,
    svi_objective,
)
from pyro_vae.infer.evaluation import elbo_terms
from tests.common import small_vae

S = 5


def toy_q():
    mu = torch.tensor([0.3, -1.2], requires_grad=True)
    sigma = torch.tensor([0.8, 1.5], requires_grad=True)
    return mu, sigma, dist.Normal(mu, sigma)


def recording(f):
    seen = {}

    def g(z, log_q):
        seen["z"], seen["log_q"] = z, log_q
        return f(z, log_q)

    return g, seen


def run(estimator, f, baseline=None):
    mu, sigma, q = toy_q()
    torch.manual_seed(0)
    g, seen = recording(f)
    value, f_values = surrogate_objective(estimator, q, g, S) if baseline is None else \
        surrogate_objective(estimator, q, g, S, baseline)
    d_mu, d_sigma = torch.autograd.grad(value.sum(), (mu, sigma))
    z = seen["z"].detach()
    eps = (z - mu.detach()) / sigma.detach()
    return value, f_values, d_mu, d_sigma, z, eps, mu.detach(), sigma.detach()


def test_reparam_surrogate_is_the_pathwise_gradient_of_the_mean():
    value, f_values, d_mu, d_sigma, z, eps, _, _ = run("reparam", lambda z, lq: z**2)
    assert z.shape == (S, 2)
    torch.testing.assert_close(value, (z**2).mean(0))
    torch.testing.assert_close(f_values, z**2)
    torch.testing.assert_close(d_mu, (2 * z).mean(0))
    torch.testing.assert_close(d_sigma, (2 * z * eps).mean(0))


def test_reparam_sees_the_score_term_and_stl_drops_it():
    """f = −log q: the pathwise gradient is ∂σ = 1/σ, ∂μ = 0 per draw; STL's (log q with μ, σ
    held) is ε/σ and ε²/σ."""
    _, _, d_mu, d_sigma, _, _, _, sigma = run("reparam", lambda z, lq: -lq)
    torch.testing.assert_close(d_mu, torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(d_sigma, 1 / sigma)
    value, _, d_mu, d_sigma, z, eps, mu, sigma = run("stl", lambda z, lq: -lq)
    torch.testing.assert_close(value, -dist.Normal(mu, sigma).log_prob(z).mean(0))
    torch.testing.assert_close(d_mu, (eps / sigma).mean(0))
    torch.testing.assert_close(d_sigma, (eps**2 / sigma).mean(0))


def test_score_surrogate_is_the_likelihood_ratio_gradient_with_its_baseline():
    b = 0.7
    value, f_values, d_mu, d_sigma, z, eps, mu, sigma = run("score", lambda z, lq: z**2, b)
    log_q = dist.Normal(mu, sigma).log_prob(z)
    torch.testing.assert_close(value, (z**2 + log_q * (z**2 - b)).mean(0))
    torch.testing.assert_close(f_values, z**2)
    torch.testing.assert_close(d_mu, (eps / sigma * (z**2 - b)).mean(0))
    torch.testing.assert_close(d_sigma, ((eps**2 - 1) / sigma * (z**2 - b)).mean(0))


def test_the_score_estimator_gives_f_log_q_without_its_gradient():
    """f's own −log q term reaches φ only through the score term: with f = −log q and the
    default b = 0, ∂μ = mean(ε/σ · (−log q))."""
    _, _, d_mu, _, z, eps, mu, sigma = run("score", lambda z, lq: -lq)
    log_q = dist.Normal(mu, sigma).log_prob(z)
    torch.testing.assert_close(d_mu, (eps / sigma * -log_q).mean(0))


def test_decaying_average_baseline_starts_at_zero_and_keeps_nine_tenths():
    assert BASELINE_BETA == 0.9
    state = BaselineState("avg", torch.zeros(3, 2))
    assert state.value() == 0.0
    f1, f2 = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[-1.0, 0.0, 5.0]])
    state.update(f1)
    torch.testing.assert_close(state.value(), 0.1 * f1)
    state.update(f2)
    torch.testing.assert_close(state.value(), 0.9 * 0.1 * f1 + 0.1 * f2)
    assert BaselineState(None, torch.zeros(3, 2)).value() == 0.0


def test_network_baseline_takes_one_adam_step_towards_the_mean_of_f():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    state = BaselineState("nn", x, lr=0.05, offset=2.0)
    torch.testing.assert_close(state.net.net[-1].bias.detach(), torch.tensor([2.0]))
    twin = NeuralBaseline((3,), offset=2.0)
    twin.load_state_dict(state.net.state_dict())
    optim = torch.optim.Adam(twin.parameters(), lr=0.05)
    f = torch.randn(5, 4) + 3.0
    with torch.no_grad():
        state.update(f)  # trains even under no_grad (the warm-up)
    optim.zero_grad()
    ((twin(x) - f.mean(0)) ** 2).mean().backward()
    optim.step()
    with torch.no_grad():
        torch.testing.assert_close(state.value(), twin(x))
    assert not state.value().requires_grad


def test_neural_baseline_maps_each_point_to_one_number_starting_at_the_offset():
    net = NeuralBaseline((2, 3), hidden=4, offset=-7.0)
    assert net.net[0].in_features == 6 and net.net[0].out_features == 4
    torch.nn.init.zeros_(net.net[-1].weight)
    out = net(torch.randn(5, 4, 2, 3))
    assert out.shape == (5, 4)
    torch.testing.assert_close(out, torch.full((5, 4), -7.0))


@pytest.mark.parametrize("estimator,kl", [("reparam", "mc"), ("reparam", "analytic"),
                                          ("stl", "mc"), ("score", "mc"), ("score", "analytic")])
def test_explicit_surrogate_is_minus_the_mean_per_point_surrogate(estimator, kl):
    vae = small_vae(event_shape=(5,), latent_dim=2)
    x = torch.rand(6, 5)
    params = list(vae.parameters())
    pyro.set_rng_seed(4)
    got = explicit_surrogate(vae, x, None, estimator, kl, 3)
    g_got = torch.autograd.grad(got, params)
    pyro.set_rng_seed(4)
    q = vae.posterior(x)
    prior = vae.prior(6)
    z = q.sample((3,)) if estimator == "score" else q.rsample((3,))
    log_lik = vae.observation_distribution(z).log_prob(x)
    if estimator == "stl":
        log_q = dist.Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach()) \
            .to_event(1).log_prob(z)
    else:
        log_q = q.log_prob(z)
    f = log_lik if kl == "analytic" else log_lik + prior.log_prob(z) - \
        (log_q.detach() if estimator == "score" else log_q)
    per_point = f.mean(0) if estimator != "score" else (f + log_q * f.detach()).mean(0)
    if kl == "analytic":
        per_point = per_point - kl_divergence(q, prior)
    want = -per_point.mean()
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(a, b)


def test_explicit_surrogate_subtracts_the_baseline_and_updates_it():
    vae = small_vae(event_shape=(5,), latent_dim=2)
    x = torch.rand(6, 5)
    state = BaselineState("avg", x)
    pyro.set_rng_seed(2)
    explicit_surrogate(vae, x, None, "score", "mc", 2, baseline=state)
    b = state.value().clone()
    params = list(vae.encoder.parameters())
    pyro.set_rng_seed(3)
    g_got = torch.autograd.grad(explicit_surrogate(vae, x, None, "score", "mc", 2,
                                                   baseline=state), params)
    pyro.set_rng_seed(3)
    q, prior = vae.posterior(x), vae.prior(6)
    z = q.sample((2,))
    f = (vae.observation_distribution(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)).detach()
    want = -(q.log_prob(z) * (f - b)).mean(0).mean()
    for a, w in zip(g_got, torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(a, w)
    torch.testing.assert_close(state.value(), 0.9 * b + 0.1 * f)


def test_unknown_estimator_or_kl_is_refused():
    check_estimator("score-nn", "analytic")
    with pytest.raises(ConfigError, match="unknown estimator"):
        check_estimator("magic", "mc")
    with pytest.raises(ConfigError, match="unknown KL mode"):
        check_estimator("reparam", "exact")


def test_rebuild_keeps_the_event_dims_and_stops_the_parameter_gradient():
    loc = torch.tensor([[0.5, -1.0]], requires_grad=True)
    scale = torch.tensor([[1.2, 0.4]], requires_grad=True)
    fn = dist.Normal(loc, scale).to_event(1)
    new = _rebuild(fn)
    assert isinstance(new.base_dist, StopGradientNormal) and new.event_shape == (2,)
    z = torch.tensor([[0.1, 0.2]], requires_grad=True)
    lp = new.log_prob(z)
    torch.testing.assert_close(lp, fn.log_prob(z))
    g_z, g_loc = torch.autograd.grad(lp.sum(), (z, loc), allow_unused=True)
    torch.testing.assert_close(g_z, -(z - loc) / scale**2)
    assert g_loc is None
    bare = _rebuild(dist.Normal(loc, scale))
    assert type(bare) is StopGradientNormal and bare.event_shape == ()
    nested = _rebuild(dist.Normal(loc[..., None], scale[..., None]).to_event(1).to_event(1))
    assert nested.event_shape == (2, 1)
    tril = torch.tensor([[1.0, 0.0], [0.3, 0.5]], requires_grad=True)
    mvn = _rebuild(dist.MultivariateNormal(loc[0], scale_tril=tril))
    assert isinstance(mvn, StopGradientMultivariateNormal)
    lp = mvn.log_prob(z[0])
    torch.testing.assert_close(lp, dist.MultivariateNormal(loc[0], scale_tril=tril).log_prob(z[0]))
    assert lp.grad_fn is not None and torch.autograd.grad(lp, tril, allow_unused=True)[0] is None
    delta = dist.Delta(torch.zeros(2)).to_event(1)
    assert _rebuild(delta) is delta
    with pytest.raises(ConfigError, match="Gaussian guide sites"):
        _rebuild(dist.Laplace(loc, scale))


def test_score_function_wrapper_is_its_base_without_a_gradient_path():
    base = dist.Bernoulli(torch.tensor([0.2, 0.7]))
    wrapped = ScoreFunctionDistribution(base)
    assert wrapped.has_rsample is False and wrapped.support is base.support
    assert wrapped.has_enumerate_support
    torch.testing.assert_close(wrapped.enumerate_support(), base.enumerate_support())
    torch.testing.assert_close(wrapped.mean, base.mean)
    torch.testing.assert_close(wrapped.variance, base.variance)
    big = wrapped.expand((3, 2))
    assert isinstance(big, ScoreFunctionDistribution) and big.batch_shape == (3, 2)
    loc = torch.tensor([1.0, 2.0], requires_grad=True)
    normal = ScoreFunctionDistribution(dist.Normal(loc, 1.0))
    z = normal.sample((4,))
    assert z.shape == (4, 2) and not z.requires_grad
    torch.testing.assert_close(normal.log_prob(z), dist.Normal(loc, 1.0).log_prob(z))


def test_the_score_messenger_sets_the_baseline_options():
    def guide():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))

    tr = pyro.poutine.trace(ScoreFunctionMessenger(baseline="avg")(guide)).get_trace()
    assert tr.nodes["z"]["infer"]["baseline"] == {"use_decaying_avg_baseline": True,
                                                  "baseline_beta": 0.9}
    net = NeuralBaseline((1,))
    tr = pyro.poutine.trace(ScoreFunctionMessenger(baseline="nn", nn_baseline=net,
                                                   nn_baseline_input=torch.ones(3, 1))(guide)
                            ).get_trace()
    assert tr.nodes["z"]["infer"]["baseline"]["nn_baseline"] is net
    tr = pyro.poutine.trace(ScoreFunctionMessenger()(guide)).get_trace()
    assert "baseline" not in tr.nodes["z"]["infer"]


def test_differentiable_trace_graph_loss_is_the_loss_with_the_score_gradient():
    vae = small_vae(event_shape=(5,), latent_dim=2, num_data=30)
    x, idx = torch.rand(6, 5), torch.arange(6)
    guide = ScoreFunctionMessenger()(vae.guide)
    pyro.set_rng_seed(8)
    loss = DifferentiableTraceGraph_ELBO().differentiable_loss(vae.model, guide, x, indices=idx)
    params = list(vae.parameters())
    got = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(8)
    want = TraceGraph_ELBO().loss_and_grads(vae.model, guide, x, indices=idx)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    for a, p in zip(got, params, strict=True):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("particles", [1, 2])
def test_score_function_elbo_with_a_network_baseline_feeds_it_every_particle(particles):
    vae = small_vae(event_shape=(5,), latent_dim=2)
    x = torch.rand(6, 5)
    seen = []

    class Recording(NeuralBaseline):
        def forward(self, inp):
            seen.append(inp.shape)
            return super().forward(inp)

    elbo = ScoreFunctionELBO(baseline=Recording((5,)), num_particles=particles,
                             max_plate_nesting=1)
    elbo.loss_and_grads(vae.model, vae.guide, x)
    assert seen and seen[0] == ((particles, 6, 5) if particles > 1 else (6, 5))
    assert elbo.vectorize_particles is (particles > 1)
    with pytest.raises(ConfigError, match="unknown baseline"):
        ScoreFunctionELBO(baseline="median")


def test_score_function_elbo_builds_its_network_baseline_at_the_offset():
    vae = small_vae(event_shape=(5,), latent_dim=2)
    elbo = ScoreFunctionELBO(baseline="nn", baseline_offset=4.0)
    elbo.loss_and_grads(vae.model, vae.guide, torch.rand(6, 5))
    assert elbo.nn_baseline.net[-1].bias.item() == pytest.approx(4.0, abs=0.05)
    assert any(n.startswith("baseline$$$") for n in pyro.get_param_store())


@pytest.mark.parametrize("estimator,kl,name,cls", [
    ("reparam", "mc", "reparam", Trace_ELBO),
    ("reparam", "analytic", "reparam", TraceMeanField_ELBO),
    ("stl", "analytic", "reparam", TraceMeanField_ELBO),
    ("stl", "mc", "stl", StickingTheLandingELBO),
    ("score", "mc", "score", ScoreFunctionELBO),
    ("score-avg", "mc", "score-avg", ScoreFunctionELBO),
    ("score-nn", "mc", "score-nn", ScoreFunctionELBO),
])
def test_each_estimator_maps_to_its_pyro_elbo(estimator, kl, name, cls):
    got_name, elbo = pyro_objective(estimator, kl, num_particles=3)
    assert got_name == name and type(elbo) is cls
    assert elbo.num_particles == 3 and elbo.vectorize_particles
    if cls is ScoreFunctionELBO:
        assert elbo.baseline_kind == {"score": None, "score-avg": "avg", "score-nn": "nn"}[name]
    with pytest.raises(ConfigError, match="analytic KL"):
        pyro_objective("score-avg", "analytic")


def test_svi_objective_registers_the_baseline_network_with_the_guide():
    vae = small_vae(event_shape=(5,), latent_dim=2)
    guide, elbo = svi_objective(vae, "score-nn", baseline_offset=1.5)
    assert elbo.nn_baseline is guide.baseline_net
    assert guide.baseline_net.net[-1].bias.item() == 1.5
    guide(torch.rand(4, 5))
    assert any(n.startswith("baseline$$$") for n in pyro.get_param_store())
    plain_guide, _ = svi_objective(vae, "score-avg")
    assert plain_guide == vae.guide


def test_the_defaults_are_one_particle_no_offset_and_a_64_unit_baseline():
    """The documented defaults, by what they do: one draw, baselines starting at 0, b_ψ with
    64 hidden units trained by Adam at lr 0.01."""
    elbo = ScoreFunctionELBO()
    assert elbo.num_particles == 1 and elbo.vectorize_particles is False
    assert ScoreFunctionELBO(num_particles=2).vectorize_particles is True
    assert ScoreFunctionELBO(num_particles=2, vectorize_particles=False).vectorize_particles \
        is False
    net = NeuralBaseline((3,))
    assert net.net[0].out_features == 64 and net.net[-1].bias.item() == 0.0
    state = BaselineState("nn", torch.zeros(2, 3))
    assert state.optim.param_groups[0]["lr"] == 0.01 and state.net.net[-1].bias.item() == 0.0
    for estimator in ("reparam", "stl", "score"):
        _, elbo = pyro_objective(estimator)
        assert elbo.num_particles == 1 and elbo.vectorize_particles is False
    _, elbo = pyro_objective("score-nn")
    assert elbo.baseline_offset == 0.0
    vae = small_vae(event_shape=(5,), latent_dim=2)
    guide, elbo = svi_objective(vae, "score-nn")
    assert elbo.num_particles == 1 and guide.baseline_net.net[-1].bias.item() == 0.0
    lazy = ScoreFunctionELBO(baseline="nn")
    lazy.loss_and_grads(vae.model, vae.guide, torch.rand(6, 5))
    assert lazy.nn_baseline.net[-1].bias.item() == pytest.approx(0.0, abs=0.05)


def test_explicit_and_pyro_surrogates_default_to_one_draw():
    vae = small_vae(event_shape=(5,), latent_dim=2)
    x = torch.rand(6, 5)
    for fn in (explicit_surrogate, pyro_loss):
        pyro.set_rng_seed(6)
        a = fn(vae, x, None, "reparam")
        pyro.set_rng_seed(6)
        b = fn(vae, x, None, "reparam", "mc", 1)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kl,term", [("mc", "elbo"), ("analytic", "recon")])
def test_the_baselines_offset_is_one_draw_of_the_integrand_averaged(kl, term):
    vae = small_vae(event_shape=(5,), latent_dim=2)
    x = torch.rand(6, 5)
    pyro.set_rng_seed(9)
    got = mean_integrand(vae, x, None, kl)
    pyro.set_rng_seed(9)
    with torch.no_grad():
        want = float(elbo_terms(vae, x, None, 1)[term].mean())
    assert got == pytest.approx(want, rel=1e-6)
