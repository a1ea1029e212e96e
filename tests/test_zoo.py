"""The zoo's references (:mod:`tests.zoo`) against independent computations.

* ``exact_log_px`` and ``exact_posterior`` against the model code itself: draws from the exact
  posterior, conditioned into the model under a particle plate, give importance weights
  log p(x, z) - log p(z | x) that are *constant*, equal to log p(x) (zero variance).
* ``exact_elbo`` against a 200k-draw Monte Carlo of log p(x, z) - log q(z | x) from our own
  trace of the guide and replay of the model (``poutine.trace`` / ``poutine.replay`` in a
  vectorized particle plate), per point where the guide's trace factorizes over the points,
  else for the whole batch; tolerance 4 standard errors.
* the closed forms against each other and the quadratures against finer ones.
* the declared structure (sites, plate, sizes) against the traces, and one ``SVI`` step with
  ``Trace_ELBO`` on every entry.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample

from tests import zoo
from tests.zoo import CASES, ZooCase, make_case

REFUSED = ("global_latent", "no_plate")
PER_POINT = [n for n in CASES if n not in REFUSED]
MC_PARTICLES = {"near": 200_000, "random": 50_000}  # the default guides get the full 200k
CHUNK = 50_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The Monte Carlo runs are many small element-wise ops: one thread is several times
    faster than two on a shared machine, and leaves the other core alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- helpers
def _sample_sites(trace):
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


def _in_plate(site, plate: str | None) -> bool:
    return any(f.name == plate for f in site["cond_indep_stack"])


def _log_density(trace, case: ZooCase, num: int, per_point: bool) -> torch.Tensor:
    """Σ over the trace's sample sites of the unscaled log-density: (num, B) or (num,)."""
    total = torch.zeros(())
    for _, site in _sample_sites(trace):
        lp = site["fn"].log_prob(site["value"]).double()
        if site["mask"] is not None:
            lp = lp.masked_fill(~site["mask"], 0.0)
        if per_point:
            assert _in_plate(site, case.data_plate), site["name"]
            lp = lp.expand(num, case.batch_size)
        else:
            lp = lp.reshape(num, -1).sum(-1)
        total = total + lp
    return total


def log_weights(case: ZooCase, num: int, per_point: bool) -> torch.Tensor:
    """log p(x, z) - log q(z | x) for ``num`` guide draws: our own trace / replay estimator."""
    chunks = []
    for start in range(0, num, CHUNK):
        n = min(CHUNK, num - start)
        with torch.no_grad(), pyro.plate("_particles", n, dim=-(case.max_plate_nesting + 1)):
            guide_tr = poutine.trace(case.guide).get_trace(*case.args, **case.kwargs)
            model_tr = poutine.trace(poutine.replay(case.model, trace=guide_tr)).get_trace(
                *case.args, **case.kwargs)
        chunks.append(_log_density(model_tr, case, n, per_point)
                      - _log_density(guide_tr, case, n, per_point))
    return torch.cat(chunks)


def _assert_within_se(estimate: torch.Tensor, stderr: torch.Tensor, reference: torch.Tensor,
                      what: str) -> None:
    tol = 4 * stderr + 1e-3
    err = (estimate - reference).abs()
    assert bool((err <= tol).all()), (
        f"{what}: |MC - reference| = {err.tolist()} > 4 SE + 1e-3 = {tol.tolist()}")


# ---------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", CASES)
def test_declared_structure_matches_the_traces(name):
    case = make_case(name)
    guide_tr = poutine.trace(case.guide).get_trace(*case.args, **case.kwargs)
    model_tr = poutine.trace(poutine.replay(case.model, trace=guide_tr)).get_trace(
        *case.args, **case.kwargs)
    model_sites = _sample_sites(model_tr)
    assert tuple(n for n, s in model_sites if not s["is_observed"]) == case.latent_sites
    assert tuple(n for n, s in model_sites if s["is_observed"]) == case.observed_sites
    assert tuple(n for n, s in model_sites
                 if not s["is_observed"] and s["fn"].support.is_discrete) == case.discrete_sites
    guide_names = {n for n, _ in _sample_sites(guide_tr)}
    assert set(case.latent_sites) <= guide_names
    outside = tuple(n for n, s in _sample_sites(guide_tr) if not _in_plate(s, case.data_plate))
    if case.data_plate is not None:
        assert outside == case.guide_sites_outside_plate
        for _, s in model_sites:
            frames = [f for f in s["cond_indep_stack"] if f.name == case.data_plate]
            if frames:
                assert frames[0].full_size == case.num_data
                assert frames[0].size == case.batch_size
        in_plate = all(_in_plate(s, case.data_plate) for _, s in model_sites)
        assert in_plate != case.refuse_per_point
    else:
        assert case.refuse_per_point
        assert all(not s["cond_indep_stack"] for _, s in model_sites)
    assert case.refuse_per_point == (name in REFUSED)
    if case.refuse_per_point:
        assert case.exact_log_px is None and case.exact_elbo is None
    else:
        for ref in (case.exact_log_px, case.exact_posterior, case.exact_elbo):
            assert ref is not None
    assert case.exact_batch_log_px is not None and case.exact_batch_elbo is not None


def test_make_case_is_deterministic_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    a, b = make_case("hierarchy_topdown", seed=3), make_case("hierarchy_topdown", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, make_case("hierarchy_topdown", seed=4).x)
    assert not torch.equal(make_case("pyro_example_vae").x, make_case("no_plate").x)
    near, rand = make_case("labelled"), make_case("labelled", guide_init="random")
    assert torch.equal(near.x, rand.x) and torch.equal(near.y, rand.y)
    assert torch.equal(near.exact_log_px(near.x, near.y), rand.exact_log_px(rand.x, rand.y))
    assert not torch.equal(near.exact_elbo(near.x, near.y), rand.exact_elbo(rand.x, rand.y))
    with pytest.raises(KeyError, match="no zoo case"):
        make_case("nope")
    with pytest.raises(ValueError, match="guide_init"):
        make_case("labelled", guide_init="trained")


def test_cond_indep_stack_is_outermost_first():
    """Pyro records the plates of a site outermost first (the order they were entered)."""
    case = make_case("pyro_example_vae")
    with pyro.plate("_particles", 3, dim=-2):
        tr = poutine.trace(case.guide).get_trace(case.x)
    assert [f.name for f in tr.nodes["latent"]["cond_indep_stack"]] == ["_particles", "data"]
    assert [f.dim for f in tr.nodes["latent"]["cond_indep_stack"]] == [-2, -1]


# ---------------------------------------------------------------------------------- log p(x)
@pytest.mark.parametrize("name", PER_POINT)
def test_exact_log_px_and_posterior_against_the_model(name):
    """Exact-posterior importance weights are constant and equal log p(x)."""
    case = make_case(name)
    post = case.exact_posterior(case.x, case.y)
    assert tuple(post.sites) == case.latent_sites
    n = 2000
    values = post.sample(n)
    with torch.no_grad(), pyro.plate("_particles", n, dim=-(case.max_plate_nesting + 1)):
        tr = poutine.trace(poutine.condition(case.model, data=values)).get_trace(
            *case.args, **case.kwargs)
    log_w = _log_density(tr, case, n, per_point=True) - post.log_prob(values)
    reference = case.exact_log_px(case.x, case.y)
    assert reference.shape == (case.batch_size,)
    assert torch.allclose(log_w, reference.expand_as(log_w), atol=2e-3), \
        (log_w - reference).abs().max()


def test_exact_batch_log_px_of_the_global_latent_by_quadrature():
    """log p(x_1..B) = log ∫ N(μ; 0, 1) Π_n N(x_n; b + μ, WWᵀ + σ²I) dμ on a fine grid."""
    case = make_case("global_latent")
    dec = case.modules["decoder"]
    m, C = zoo._linear_marginal(dec.weight64(), dec.offset64(), zoo.SIGMA)
    mu = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    log_prior = -0.5 * mu**2 - 0.5 * math.log(2 * math.pi)
    per_node = zoo._mvn_logpdf(case.x.double().unsqueeze(0), m + mu[:, None, None], C).sum(-1)
    step = float(mu[1] - mu[0])
    reference = torch.logsumexp(log_prior + per_node, 0) + math.log(step)  # the integrand
    # vanishes at both ends, so the trapezoid rule is this Riemann sum
    assert torch.allclose(case.exact_batch_log_px(case.x), reference, atol=1e-6)


def test_exact_batch_log_px_of_the_no_plate_case_against_the_model():
    case = make_case("no_plate")
    reference = case.exact_batch_log_px(case.x)
    dec = case.modules["decoder"]
    mean, cov = zoo._linear_posterior(case.x.double(), dec.weight64(), dec.offset64(), zoo.SIGMA)
    z = mean  # log p(x) = log p(x, z) - log p(z | x) at any z, here the posterior mean
    with torch.no_grad():
        tr = poutine.trace(poutine.condition(case.model, data={"z": z.float()})).get_trace(case.x)
    tr.compute_log_prob()
    joint = sum(s["log_prob"].double() for _, s in _sample_sites(tr))
    log_post = zoo._mvn_logpdf(z, mean, cov).sum()
    assert torch.allclose(joint - log_post, reference, atol=1e-3)


# ---------------------------------------------------------------------------------- ELBO
@pytest.mark.parametrize("guide_init", ["near", "random"])
@pytest.mark.parametrize("name", CASES)
def test_exact_elbo_against_trace_replay_monte_carlo(name, guide_init):
    case = make_case(name, guide_init=guide_init)
    per_point = not case.refuse_per_point and not case.guide_sites_outside_plate
    log_w = log_weights(case, MC_PARTICLES[guide_init], per_point)
    estimate, stderr = log_w.mean(0), log_w.std(0) / math.sqrt(log_w.shape[0])
    if per_point:
        reference = case.exact_elbo(case.x, case.y)
        assert reference.shape == (case.batch_size,)
        _assert_within_se(estimate, stderr, reference, f"{name} per-point ELBO")
    else:
        _assert_within_se(estimate, stderr, case.exact_batch_elbo(case.x, case.y),
                          f"{name} batch ELBO")
    if case.exact_elbo is not None:  # and the batch reference is the sum of the per-point one
        assert torch.allclose(case.exact_batch_elbo(case.x, case.y),
                              case.exact_elbo(case.x, case.y).sum())


def test_the_two_gaussian_elbo_closed_forms_agree():
    """E_q log p(x|z) - KL (the explicit form) = the joint-Gaussian form, on Pyro's VAE."""
    case = make_case("pyro_example_vae")
    dec, enc = case.modules["decoder"], case.modules["encoder"]
    W, b = dec.weight64(), dec.offset64()
    L = W.shape[1]
    joint_mean = torch.cat([torch.zeros(L, dtype=torch.float64), b])
    joint_cov = torch.cat([torch.cat([torch.eye(L, dtype=torch.float64), W.T], 1),
                           torch.cat([W, W @ W.T + zoo.SIGMA**2 * torch.eye(W.shape[0])], 1)])
    with torch.no_grad():
        loc, scale = enc(case.x)
    generic = zoo.gaussian_joint_elbo(case.x.double(), joint_mean, joint_cov, loc.double(),
                                      torch.diag_embed(scale.double() ** 2))
    assert torch.allclose(generic, case.exact_elbo(case.x), atol=1e-9)
    # the ELBO of the exact posterior is log p(x)
    post = case.exact_posterior(case.x)
    at_posterior = zoo._expected_loglik_minus_kl(case.x.double(), W, b, zoo.SIGMA, post.mean,
                                                 post.cov)
    assert torch.allclose(at_posterior, case.exact_log_px(case.x), atol=1e-9)


def test_hierarchy_elbo_at_the_exact_posterior_is_log_px():
    for name in ("hierarchy_topdown", "hierarchy_bottomup"):
        case = make_case(name)
        mean, cov = case.modules["hierarchy"].joint()
        post = case.exact_posterior(case.x)
        elbo = zoo.gaussian_joint_elbo(case.x.double(), mean, cov, post.mean, post.cov)
        assert torch.allclose(elbo, case.exact_log_px(case.x), atol=1e-9)
        assert bool((case.exact_elbo(case.x) < case.exact_log_px(case.x)).all())


def test_flow_elbo_quadrature_has_converged():
    case = make_case("flow_guide")
    coarse, fine = case.exact_elbo(case.x), case.exact_elbo(case.x, num_nodes=96)
    assert torch.allclose(coarse, fine, atol=1e-4), (coarse - fine).abs().max()


def test_mixture_elbo_is_below_log_px_and_enumerates_the_class():
    case = make_case("mixture_discrete_continuous")
    elbo, log_px = case.exact_elbo(case.x), case.exact_log_px(case.x)
    assert bool((elbo < log_px).all())
    probs = case.exact_posterior(case.x).probs
    assert torch.allclose(probs.sum(-1), torch.ones(case.batch_size, dtype=torch.float64))


def test_mixture_elbo_by_pyro_enumeration():
    """TraceEnum_ELBO with the class enumerated in the guide (Pyro's own exact sum over c, Monte
    Carlo over z) agrees with the reference; its error bar from 5 independent runs."""
    case = make_case("mixture_discrete_continuous")
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=10_000, vectorize_particles=True)
    runs = torch.tensor([-elbo.loss(case.model, config_enumerate(case.guide), case.x)
                         for _ in range(5)], dtype=torch.float64)
    _assert_within_se(runs.mean(), runs.std() / math.sqrt(5), case.exact_batch_elbo(case.x),
                      "mixture batch ELBO by TraceEnum_ELBO")


# ---------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", CASES)
def test_one_svi_step_with_trace_elbo(name):
    case = make_case(name)
    svi = SVI(case.model, case.guide, Adam({"lr": 0.05}), Trace_ELBO())
    loss = svi.step(*case.args, **case.kwargs)
    assert math.isfinite(loss)
    store = pyro.get_param_store()
    assert len(store) > 0
    before = {k: v.detach().clone() for k, v in store.items()}
    svi.step(*case.args, **case.kwargs)
    assert any(not torch.equal(before[k], v.detach()) for k, v in store.items())


@pytest.mark.parametrize("name", ["autonormal", "autodiagonalnormal", "global_latent",
                                  "flow_guide"])
def test_references_follow_the_trained_parameters(name):
    """After training steps the references read the new values (modules, PyroModule
    parameters of the autoguides, ``pyro.param`` of the global guide)."""
    case = make_case(name)
    before = case.exact_batch_elbo(case.x, case.y)
    svi = SVI(case.model, case.guide, Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(5):
        svi.step(*case.args, **case.kwargs)
    after = case.exact_batch_elbo(case.x, case.y)
    assert not torch.allclose(before, after)
    log_w = log_weights(case, 50_000, per_point=False)
    _assert_within_se(log_w.mean(), log_w.std() / math.sqrt(log_w.shape[0]), after,
                      f"{name} batch ELBO after training")
