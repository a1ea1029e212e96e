"""Discrete codes: enumeration, the estimators against the exact (enumerated) gradient, VIMCO,
the relaxations' bias and variance against the temperature, training and the lab."""

from __future__ import annotations

import itertools
import json
import math
from statistics import NormalDist

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae import make_likelihood
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.distributions.discrete import (
    RelaxedMessenger,
    bernoulli_code,
    categorical_code,
    relax,
)
from pyro_vae.errors import ConfigError
from pyro_vae.infer.discrete import (
    VIMCO_ELBO,
    DiscreteObjective,
    TemperatureSchedule,
    exact_objective,
    leave_one_out_bounds,
)
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.lab.discrete import measure_discrete_estimator
from pyro_vae.models.discrete_vae import DiscreteVAE
from pyro_vae.nn.networks import MLPDecoder, MLPLogitsEncoder
from pyro_vae.sites import DATA_PLATE, LATENT_SITE, OBS_SITE
from tests.common import small_vae

D = 10


def discrete_vae(latent="bernoulli", cells=4, categories=None, seed=0, dtype=torch.float32,
                 sharpen=1.0):
    """A small model; ``sharpen`` scales every weight (peaked q, a decoder that depends on z:
    gradients large against the estimators' noise)."""
    torch.manual_seed(seed)
    code = (cells,) if latent == "bernoulli" else (cells, categories)
    vae = DiscreteVAE(MLPLogitsEncoder((D,), code, (16,)), MLPDecoder((D,), math.prod(code), (16,)),
                      make_likelihood("bernoulli"), latent, cells, (D,), categories=categories)
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(sharpen)
    return vae.to(dtype)


def batch(n=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, D), 0.3), generator=g).to(dtype)


def flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


# --------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("make,states", [(lambda: bernoulli_code(torch.randn(3, 4)), 16),
                                         (lambda: categorical_code(torch.randn(3, 2, 3)), 9)])
def test_enumeration_lists_every_joint_state_once(make, states):
    q = make()
    assert q.num_states == states
    support = q.enumerate_support(expand=False)
    assert support.shape == (states, 1, *q.event_shape)
    assert q.enumerate_support().shape == (states, 3, *q.event_shape)
    flat = support.reshape(states, -1)
    assert len({tuple(row.tolist()) for row in flat}) == states
    assert torch.allclose(q.log_prob(q.enumerate_support()).exp().sum(0), torch.ones(3))


def test_too_many_states_are_refused():
    with pytest.raises(ConfigError, match="joint states"):
        bernoulli_code(torch.zeros(1, 21)).enumerate_support()


def test_relaxations_keep_the_discrete_kl_and_straight_through_is_hard():
    q_logits, p_logits = torch.randn(5, 4), torch.zeros(5, 4)
    tau = torch.tensor(0.5)
    q = relax(bernoulli_code(q_logits), tau)
    p = relax(bernoulli_code(p_logits), tau)
    assert torch.allclose(kl_divergence(q, p), kl_divergence(bernoulli_code(q_logits),
                                                             bernoulli_code(p_logits)))
    st = relax(bernoulli_code(q_logits.requires_grad_()), tau, straight_through=True)
    z = st.rsample()
    assert torch.allclose(z, z.round().clamp(0, 1), atol=1e-6)
    assert torch.isfinite(st.log_prob(z)).all()  # at the relaxed value
    z.sum().backward()
    assert q_logits.grad is not None and q_logits.grad.abs().sum() > 0
    g_logits = torch.randn(5, 2, 3, requires_grad=True)
    onehot = relax(categorical_code(g_logits), tau, straight_through=True).rsample()
    assert torch.allclose(onehot.sum(-1), torch.ones(5, 2))
    assert torch.allclose(onehot.max(-1).values, torch.ones(5, 2))
    cat_kl = kl_divergence(relax(categorical_code(g_logits), tau),
                           relax(categorical_code(torch.zeros(5, 2, 3)), tau))
    want = kl_divergence(dist.Categorical(logits=g_logits),
                         dist.Categorical(logits=torch.zeros(5, 2, 3))).sum(-1)
    assert torch.allclose(cat_kl, want)
    with pytest.raises(ConfigError, match="Bernoulli or one-hot"):
        relax(dist.Normal(0.0, 1.0), tau)
    with pytest.raises(ConfigError, match="temperature"):
        RelaxedMessenger(0.0)


# --------------------------------------------------------------------------- the model
def test_sites_plate_and_shapes_follow_the_contract():
    for vae, event in ((discrete_vae(), (4,)), (discrete_vae("categorical", 2, 3), (2, 3))):
        vae.num_data = 100
        x = batch()
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        z = guide_tr.nodes[LATENT_SITE]
        assert z["fn"].event_shape == event and z["fn"].batch_shape == (5,)
        assert not z["fn"].has_rsample
        assert [f.name for f in z["cond_indep_stack"]] == [DATA_PLATE]
        assert z["cond_indep_stack"][0].full_size == 100
        assert model_tr.nodes[OBS_SITE]["fn"].event_shape == (D,)
        assert torch.equal(model_tr.nodes[LATENT_SITE]["value"], z["value"])
        sample = vae.model(None, num_points=3)
        assert sample.shape == (3, *event)


def test_enum_equals_the_exact_elbo_and_gradient_by_brute_force():
    """``TraceEnum_ELBO`` over a 2^10-state code against a double loop written out in float64."""
    vae = discrete_vae(cells=10, dtype=torch.float64)
    x = batch(3, dtype=torch.float64)
    params = list(vae.parameters())
    objective = DiscreteObjective(vae, "enum")
    enum_loss = objective.differentiable_loss(x)
    brute = torch.zeros((), dtype=torch.float64)
    logits = vae.encode(x)
    for state in itertools.product((0.0, 1.0), repeat=10):
        z = torch.tensor(state, dtype=torch.float64).expand(3, 10)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum(-1)
        log_p = math.log(0.5) * 10 + vae.observation_distribution(z).log_prob(x)
        brute = brute + (log_q.exp() * (log_p - log_q)).sum()
    assert torch.allclose(-enum_loss, brute, rtol=1e-12)
    assert torch.allclose(flat_grad(-enum_loss, params), flat_grad(brute, params),
                          rtol=1e-9, atol=1e-12)
    assert torch.allclose(exact_objective(vae, x).sum(), brute, rtol=1e-12)


def bonferroni(num_params: int, alpha: float = 1e-3) -> float:
    return NormalDist().inv_cdf(1 - alpha / (2 * num_params))  # stdlib: scipy costs 1.5 s


@pytest.mark.parametrize("estimator,k", [("score", 1), ("score-avg", 1), ("score-nn", 1),
                                         ("vimco", 2), ("vimco", 3)])
def test_unbiased_estimators_match_the_exact_gradient(estimator, k):
    """Mean of R estimates against the enumerated gradient of the estimator's target (the ELBO,
    or IWAE_K for VIMCO), each coordinate's z-score within a Bonferroni bound at α = 0.001."""
    pyro.set_rng_seed(0)
    vae = discrete_vae("categorical", 2, 3, sharpen=3) if k == 3 else discrete_vae(sharpen=3)
    # R sized by the power check below (the noise of the mean, √(tr Cov / R), under ‖∇‖ / 2):
    # the plain score function's encoder noise is 0.27 ‖∇‖ at R = 1500 (0.42 at R = 600, too
    # near the bound), so it keeps R = 1500; the others' largest is 0.05 ‖∇‖ at R = 1500 and
    # 0.08 ‖∇‖ at R = 600 (measured, seed 0), far inside it; the smallest bias a coordinate
    # shows (4.6 of its standard errors) grows by √(1500 / 600) = 1.6. The z-scores' null
    # distribution, and so the Bonferroni bound's false-alarm rate, does not depend on R
    # (R = 600 took 2.5–6.7 s here against 6.5–14.3 s at R = 1500).
    repeats = 1500 if estimator == "score" else 600
    result = measure_discrete_estimator(vae, batch(), estimator, k, repeats=repeats, warmup=200)
    assert result.target == ("ELBO" if estimator != "vimco" else f"IWAE_{k}")
    for group, stats in result.groups.items():
        assert stats.noise_norm < stats.exact_norm / 2, (group, stats)  # the test has power
        assert stats.max_abs_z < bonferroni(stats.num_params), (group, stats)


def test_relaxations_are_biased_less_as_the_temperature_falls_and_noisier():
    pyro.set_rng_seed(0)
    vae, x = discrete_vae(cells=6), batch(8)
    rows = {tau: measure_discrete_estimator(vae, x, "relaxed", 1, tau, repeats=600)
            for tau in (2.0, 0.5, 0.1)}
    enc = {tau: r.groups["encoder"] for tau, r in rows.items()}
    assert enc[2.0].max_abs_z > bonferroni(enc[2.0].num_params)  # detectably biased
    assert enc[2.0].bias_debiased > enc[0.5].bias_debiased > enc[0.1].bias_debiased
    assert enc[2.0].total_variance < enc[0.5].total_variance < enc[0.1].total_variance
    st_hot = measure_discrete_estimator(vae, x, "relaxed-st", 1, 2.0, repeats=600)
    st_cold = measure_discrete_estimator(vae, x, "relaxed-st", 1, 0.1, repeats=600)
    assert st_hot.groups["encoder"].bias_debiased > st_cold.groups["encoder"].bias_debiased
    # the decoder sees the hard code: its straight-through gradient is unbiased
    dec = st_hot.groups["decoder"]
    assert dec.max_abs_z < bonferroni(dec.num_params)


# --------------------------------------------------------------------------- VIMCO
def test_vimco_needs_two_samples():
    with pytest.raises(ConfigError, match="K ≥ 2"):
        VIMCO_ELBO(num_particles=1)
    with pytest.raises(ConfigError, match="vimco needs K ≥ 2"):
        Config(latent="bernoulli", estimator="vimco").resolved()


def test_vimco_bound_is_the_iwae_bound():
    """On a Gaussian model VIMCO's loss is IWAE's for the same draws; on a discrete code its
    mean over draws is the enumerated IWAE_K."""
    vae = small_vae()
    x = torch.rand(6, 6)
    pyro.set_rng_seed(3)
    a = VIMCO_ELBO(4).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    b = ImportanceWeightedELBO("iwae", 4).loss(vae.model, vae.guide, x)
    assert a == pytest.approx(b, rel=1e-6)
    code = discrete_vae()
    xb = batch(4)
    pyro.set_rng_seed(0)
    elbo = VIMCO_ELBO(2)
    draws = torch.tensor([-elbo.loss(code.model, code.guide, xb) for _ in range(3000)])
    exact = float(exact_objective(code, xb, num_particles=2).sum().detach())
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / math.sqrt(3000)


def test_leave_one_out_bounds_replace_one_weight_by_the_others_geometric_mean():
    log_w = torch.randn(4, 3)
    got = leave_one_out_bounds(log_w)
    for k in range(4):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        assert torch.allclose(got[k], torch.logsumexp(replaced, 0) - math.log(4))


# --------------------------------------------------------------------------- training
def test_temperature_schedule():
    s = TemperatureSchedule(1.0, 0.5, 1e-3)
    assert s(0) == 1.0 and s(10**6) == 0.5
    assert s(100) == pytest.approx(math.exp(-0.1))
    with pytest.raises(ConfigError):
        TemperatureSchedule(1.0, 0.5, -1.0)


FAST = ["--dataset", "digits", "--hidden", "32", "--max-train", "200", "--max-test", "50",
        "--batch-size", "50", "--no-progress", "--no-figures", "--epochs", "2"]


@pytest.mark.parametrize("args", [
    ["--latent", "bernoulli", "--latent-dim", "8"],  # the default: score-nn
    ["--latent", "bernoulli", "--latent-dim", "8", "--estimator", "vimco",
     "--num-particles", "3"],
    ["--latent", "categorical", "--latent-dim", "3", "--categories", "4", "--estimator",
     "relaxed-st", "--temperature-decay", "0.01"],
    ["--latent", "categorical", "--latent-dim", "2", "--categories", "3", "--estimator", "enum"],
])
def test_train_and_evaluate_discrete_codes_from_the_cli(tmp_path, args, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, *args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics[-1]
    # the loss is -ELBO per point (positive on binary images), close to the evaluated ELBO
    assert last["train_loss"] > 0 and abs(last["train_loss"] + last["train_elbo"]) < 15
    if "relaxed" in args[-3]:
        assert last["temperature"] == pytest.approx(math.exp(-0.01 * 7))  # τ of the last step
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iw-samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 0.5


def test_score_function_training_reports_minus_the_elbo(tmp_path):
    """TraceGraph's loss is −ELBO (Pyro's internal helper returns the ELBO itself)."""
    out = tmp_path / "run"
    assert main(["train", *FAST, "--estimator", "score-avg", "--out", str(out)]) == 0
    last = json.loads((out / "metrics.json").read_text())[-1]
    assert last["train_loss"] > 0


@pytest.mark.parametrize("argv,match", [
    (["--latent", "bernoulli", "--estimator", "dreg"], "needs a pathwise gradient"),
    (["--latent", "bernoulli", "--guide", "iaf"], "--guide iaf is for Gaussian codes"),
    (["--latent", "bernoulli", "--objective", "iwae"], "--objective iwae is for Gaussian"),
    (["--latent", "categorical", "--categories", "1"], "--categories must be ≥ 2"),
    (["--latent", "bernoulli", "--estimator", "relaxed", "--temperature", "0"],
     "--temperature must be a positive"),
    (["--latent", "bernoulli", "--estimator", "enum", "--num-particles", "2"],
     "enum is exact"),
    (["--estimator", "vimco"], "unknown --estimator 'vimco'"),
])
def test_bad_discrete_options_get_one_line_errors(tmp_path, capsys, argv, match):
    assert main(["train", *FAST, *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_gaussian_only_tools_refuse_a_discrete_code(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--latent", "bernoulli", "--latent-dim", "4",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["gap", str(out), "--num-points", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs continuous latents" in err and "discrete" in err
    assert main(["variance", str(out), "--repeats", "20", "--warmup", "5", "--batch-size", "8",
                 "--temperatures", "1,0.5", "--out", str(tmp_path / "lab")]) == 0
    report = json.loads((tmp_path / "lab" / "discrete.json").read_text())
    assert {r["estimator"] for r in report["results"]} >= {"score", "vimco", "enum"}
    assert (tmp_path / "lab" / "bias_variance.png").stat().st_size > 1000
