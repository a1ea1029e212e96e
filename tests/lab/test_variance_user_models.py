"""The variance lab on users' own Pyro models (issues 26 and 31): the problem is read off the
trace, the score-function estimator is the score function whatever the latent site is called,
the binary estimators are measured against exact enumeration, and every result carries its cost
per gradient and its variance at equal cost."""

from __future__ import annotations

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.trainer import ModelGuide
from pyro_vae.lab.snr import run_snr_lab
from pyro_vae.lab.variance import (
    flat_gradients,
    lab_problem,
    markdown_table,
    measure_estimator,
    problem_parameter_groups,
    write_report,
)
from tests import zoo
from tests.common import small_vae

#: |z| beyond which a coordinate of a mean gradient is declared off its reference (~50
#: coordinates per group: under agreement max |z| exceeds 4.5 with probability < 0.1 %)
Z_MAX = 4.5




def zoo_program(name: str) -> tuple[ModelGuide, zoo.ZooCase]:
    pyro.clear_param_store()
    case = zoo.make_case(name)
    program = ModelGuide(case.model, case.guide, conditional=case.y is not None,
                         modules=case.modules)
    return program, case


def max_z(a: torch.Tensor, se_a: torch.Tensor, b: torch.Tensor,
          se_b: torch.Tensor | None = None) -> float:
    se = se_a ** 2 + (0 if se_b is None else se_b ** 2)
    return float(((a - b) / se.sqrt().clamp_min(1e-12)).abs().max())


def linear_gaussian_gradient(program, case, encoder: str, decoder: str, flatten: bool = False
                             ) -> dict[str, torch.Tensor]:
    """The exact ∇ of the mean-per-point ELBO of a single-latent linear-Gaussian zoo entry
    (closed form: zoo's expected log-likelihood minus the Gaussian KL), for the lab's groups."""
    enc, dec = case.modules[encoder], case.modules[decoder]
    x = case.x.reshape(case.x.shape[0], -1) if flatten else case.x
    loc, scale = enc(x)
    elbo = zoo._expected_loglik_minus_kl(
        x.double(), dec.linear.weight.double(), dec.linear.bias.double(), zoo.SIGMA,
        loc.double(), torch.diag_embed(scale.double() ** 2)).mean()
    groups = problem_parameter_groups(lab_problem(program, case.x))
    return {g: v.double() for g, v in flat_gradients(elbo, groups).items()}


# --------------------------------------------------------------------------- issue 26
def test_score_function_on_a_site_named_code_is_the_score_function():
    """Zoo ``code_site`` (latent "code", plate "batch", event-shaped observations): the score
    estimator makes "code" score-function — its encoder variance is many times the pathwise
    one (it used to stay pathwise and read 16.8k against reparam's 18.8k) — and both means are
    the exact ELBO gradient within Monte Carlo error."""
    program, case = zoo_program("code_site")
    exact = linear_gaussian_gradient(program, case, "recognition", "generator", flatten=True)
    pyro.set_rng_seed(0)
    reparam = measure_estimator(program, case.x, None, "reparam", repeats=400)
    pyro.set_rng_seed(1)
    score = measure_estimator(program, case.x, None, "score", repeats=1000)
    assert reparam.implementation == score.implementation == "pyro"
    assert score.latent_sites == ("code",)
    assert set(score.groups) == {"encoder", "decoder"}  # recognition φ, generator θ
    assert score.groups["encoder"].num_params == exact["encoder"].numel() == 30
    enc_score, enc_reparam = score.groups["encoder"], reparam.groups["encoder"]
    assert enc_score.total_variance > 10 * enc_reparam.total_variance, \
        (enc_score.total_variance, enc_reparam.total_variance)
    for result in (reparam, score):
        for g in ("encoder", "decoder"):
            z = max_z(result.mean_gradient[g], result.stderr_gradient[g], exact[g])
            assert z < Z_MAX, (result.estimator, g, z)


def test_score_function_on_a_two_layer_hierarchy_is_unbiased_and_noisier():
    """Zoo ``hierarchy_topdown`` (sites z2 → z1, the guide's z1 depends on its z2): both sites
    become score-function; the score mean agrees with the pathwise one within Monte Carlo
    error, its encoder variance is many times larger."""
    program, case = zoo_program("hierarchy_topdown")
    pyro.set_rng_seed(0)
    reparam = measure_estimator(program, case.x, None, "reparam", repeats=300)
    pyro.set_rng_seed(1)
    score = measure_estimator(program, case.x, None, "score", repeats=500)
    assert score.latent_sites == ("z2", "z1")
    assert score.groups["encoder"].total_variance > 10 * reparam.groups["encoder"].total_variance
    for g in ("encoder", "decoder"):
        z = max_z(score.mean_gradient[g], score.stderr_gradient[g], reparam.mean_gradient[g],
                  reparam.stderr_gradient[g])
        assert z < Z_MAX, (g, z)


def test_a_subsampled_data_plate_is_measured_per_point_without_changing_the_model():
    """Zoo ``subsampled_library_protocol`` (plate of full size N = 64 over a batch of 8, sites
    scaled by N/B = 8): the lab's gradient is the exact gradient of the batch's mean ELBO per
    point (a scale left in would make it 8 times too large)."""
    program, case = zoo_program("subsampled_library_protocol")
    assert lab_problem(program, case.x).plate.full_size == 64
    exact = linear_gaussian_gradient(program, case, "encoder", "decoder")
    pyro.set_rng_seed(0)
    result = measure_estimator(program, case.x, None, "stl", repeats=400)
    for g in ("encoder", "decoder"):
        assert max_z(result.mean_gradient[g], result.stderr_gradient[g], exact[g]) < Z_MAX


def test_the_library_vae_is_not_mutated_and_both_implementations_agree():
    """``implementation=None`` picks the explicit surrogates for the library's diagonal VAE and
    Pyro's ELBOs for a user's program; with ``num_data`` set (so the plate subsamples) the Pyro
    measurement agrees with the explicit one, and the model's num_data and train mode are
    untouched."""
    torch.manual_seed(0)
    vae = small_vae(event_shape=(5,), latent_dim=2, num_data=100)
    vae.train()
    x = torch.rand(8, 5)
    pyro.set_rng_seed(0)
    explicit = measure_estimator(vae, x, None, "reparam", repeats=400)
    pyro.set_rng_seed(1)
    through_pyro = measure_estimator(vae, x, None, "reparam", repeats=400,
                                     implementation="pyro")
    assert explicit.implementation == "explicit" and through_pyro.implementation == "pyro"
    assert vae.num_data == 100 and vae.training and vae.encoder.training
    for g in ("encoder", "decoder"):
        z = max_z(explicit.mean_gradient[g], explicit.stderr_gradient[g],
                  through_pyro.mean_gradient[g], through_pyro.stderr_gradient[g])
        assert z < Z_MAX, (g, z)
        ratio = through_pyro.groups[g].total_variance / explicit.groups[g].total_variance
        assert 0.7 < ratio < 1.4, (g, ratio)


# --------------------------------------------------------------------------- issue 31
UNITS, DIM, POINTS, NOISE = 4, 5, 8, 0.5


class BeliefNet(nn.Module):
    """p(b) = Π Bernoulli(σ(a_i)), p(x | b) = N(W b + c, 0.5² I)."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_logits = nn.Parameter(0.5 * torch.randn(UNITS))
        self.out = nn.Linear(UNITS, DIM)


def belief_net():
    """A user's sigmoid belief net with 4 binary units (16 states) and its exact ELBO by
    enumeration, differentiable in every parameter."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    net, encoder = BeliefNet(), nn.Linear(DIM, UNITS)

    def model(x):
        pyro.module("belief_net", net)
        with pyro.plate("points", x.shape[0]):
            logits = net.prior_logits.expand(x.shape[0], UNITS)
            b = pyro.sample("units", dist.Bernoulli(logits=logits).to_event(1))
            pyro.sample("x", dist.Normal(net.out(b), NOISE).to_event(1), obs=x)

    def guide(x):
        pyro.module("recognition", encoder)
        with pyro.plate("points", x.shape[0]):
            pyro.sample("units", dist.Bernoulli(logits=encoder(x)).to_event(1))

    with torch.no_grad():
        b = torch.bernoulli(torch.sigmoid(net.prior_logits).expand(POINTS, UNITS))
        x = net.out(b) + NOISE * torch.randn(POINTS, DIM)

    def exact_elbo(x):
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=UNITS)))
        log_q = dist.Bernoulli(logits=encoder(x)).to_event(1).log_prob(states[:, None])
        log_p = dist.Bernoulli(logits=net.prior_logits).to_event(1).log_prob(states)[:, None] \
            + dist.Normal(net.out(states)[:, None], NOISE).to_event(1).log_prob(x)
        return (log_q.exp() * (log_p - log_q)).sum(0).mean()

    program = ModelGuide(model, guide, modules={"net": net, "encoder": encoder})
    return program, x, exact_elbo


#: estimator → (S, model evaluations per gradient)
BINARY = {"arm": (1, 2), "disarm": (1, 2), "rloo": (2, 2), "rebar": (1, 3), "relax": (1, 3),
          "reinforce": (1, 1)}


def test_binary_estimators_in_the_lab_are_unbiased_and_priced(tmp_path):
    """Every unbiased binary estimator's mean gradient (encoder and decoder) is the exact one
    by enumeration within Monte Carlo error; each result carries its evaluations and seconds
    per gradient and its variance at equal cost, with error bars; DisARM's variance is below
    ARM's at the same cost (Dong et al. 2020)."""
    program, x, exact_elbo = belief_net()
    groups = problem_parameter_groups(lab_problem(program, x))
    exact = {g: v.double() for g, v in flat_gradients(exact_elbo(x), groups).items()}
    stored = set(pyro.get_param_store())
    results = {}
    for estimator, (samples, evaluations) in BINARY.items():
        pyro.set_rng_seed(0)
        r = measure_estimator(program, x, None, estimator, num_samples=samples, repeats=250,
                              warmup=30)
        results[estimator] = r
        assert r.implementation == "pyro" and r.evaluations == evaluations
        for g in ("encoder", "decoder"):
            z = max_z(r.mean_gradient[g], r.stderr_gradient[g], exact[g])
            assert z < Z_MAX, (estimator, g, z)
            st = r.groups[g]
            assert r.evaluation_variance(g) == pytest.approx(st.total_variance * evaluations)
            assert r.evaluation_variance_se(g) == pytest.approx(st.total_variance_se
                                                                * evaluations)
            assert 0 < r.work_variance_se(g) < r.work_variance(g)
        assert 0 < r.seconds_se < r.seconds
    arm, disarm = results["arm"].groups["encoder"], results["disarm"].groups["encoder"]
    assert arm.total_variance - disarm.total_variance > 2 * math.hypot(
        arm.total_variance_se, disarm.total_variance_se)
    # baselines and control variates leave the user's param store as they found it
    assert set(pyro.get_param_store()) == stored
    table = markdown_table(list(results.values()))
    assert "ratio to arm" in table and "variance × evals ± se" in table
    write_report(list(results.values()), tmp_path)
    saved = json.loads((tmp_path / "variance.json").read_text())["results"]
    assert [r["evaluations"] for r in saved] == [e for _, e in BINARY.values()]
    assert all(r["evaluation_variance_se"]["encoder"] > 0 for r in saved)


@pytest.mark.parametrize("case,estimator,kwargs,match", [
    ("code_site", "arm", {}, "for Bernoulli latent sites"),
    ("code_site", "reinforce", {}, "non-reparameterized"),
    ("code_site", "reparam", {"implementation": "explicit"}, "implementation='pyro'"),
    ("code_site", "magic", {}, "unknown estimator"),
    ("belief_net", "reparam", {}, "needs reparameterized guide sites"),
    ("belief_net", "stl", {}, "needs reparameterized guide sites"),
    ("belief_net", "rloo", {"num_samples": 1}, "K = num_samples ≥ 2"),
    ("belief_net", "disarm", {"kl": "analytic"}, "no analytic-KL form"),
    ("belief_net", "arm", {"implementation": "explicit"}, "only through Pyro"),
])
def test_an_estimator_the_model_cannot_honour_is_a_one_line_error(case, estimator, kwargs,
                                                                  match):
    if case == "belief_net":
        program, x, _ = belief_net()
    else:
        program, zoo_case = zoo_program(case)
        x = zoo_case.x
    with pytest.raises(ConfigError, match=match) as info:
        measure_estimator(program, x, None, estimator, repeats=2, **kwargs)
    assert len(str(info.value).splitlines()) == 1


def test_the_snr_lab_takes_user_models_and_discrete_estimators():
    """The SNR lab on the two-layer hierarchy (importance-weighted, pathwise and DReG) and on
    the belief net (VIMCO; ARM and RLOO for the ELBO), with the cost of each setting."""
    program, case = zoo_program("hierarchy_topdown")
    points, _ = run_snr_lab(program, case.x, None, "iwae", (1, 4), ("reparam", "dreg"),
                            repeats=20)
    assert [(p.estimator, p.num_particles, p.evaluations) for p in points] == \
        [("reparam", 1, 1), ("reparam", 4, 4), ("dreg", 1, 1), ("dreg", 4, 4)]
    assert all(set(p.groups) == {"encoder", "decoder"} for p in points)
    assert all(p.groups["decoder"].resolved for p in points)
    program, x, _ = belief_net()
    with pytest.raises(ConfigError, match="needs reparameterized guide sites"):
        run_snr_lab(program, x, None, "iwae", (2,), ("reparam",), repeats=20)
    points, _ = run_snr_lab(program, x, None, "iwae", (2, 4), ("vimco",), repeats=20)
    points += run_snr_lab(program, x, None, "elbo", (2,), ("arm", "rloo"), repeats=20)[0]
    assert [(p.estimator, p.evaluations) for p in points] == \
        [("vimco", 2), ("vimco", 4), ("arm", 4), ("rloo", 2)]
    assert all(p.groups["encoder"].total_variance > 0 for p in points)
