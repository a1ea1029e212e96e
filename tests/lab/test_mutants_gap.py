"""Tests written to kill the mutants of ``pyro_vae/lab/gap.py`` (docs/testing.md): the report's
arithmetic (gaps, summary statistics, the table) on given numbers, the per-point choice between
fits, the amortized ELBO and its standard error against the same draws taken by hand, IWAE with
the exact posterior as proposal (exactly log p(x)), and the whole report on a pPCA whose encoder
is the exact posterior."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.infer.evaluation import problem_of
from pyro_vae.infer.vem import LocalFit
from pyro_vae.lab.gap import (
    CONFIDENCE,
    ESTIMATE_LABELS,
    GapReport,
    _guide_elbo,
    amortization_gap,
    better_of,
    fit_iwae,
    fit_iwae_halves,
    gap_table,
)
from tests.common import ppca_vae


def report(**changes):
    values = dict(
        family="full",
        log_px=torch.tensor([-3.0, -5.0, -4.0]),
        elbo_q=torch.tensor([-4.0, -5.5, -4.5]),
        elbo_q_star=torch.tensor([-3.5, -4.9, -4.5]),
        elbo_q_star_ffg=torch.tensor([-3.6, -5.2, -4.6]),
        estimates={"iwae_q": torch.tensor([-3.2, -5.4, -4.1]),
                   "iwae_q_star": torch.tensor([-3.0, -5.0, -4.0])},
        refinement_curve=[-5.0, -4.8, -4.5],
        seconds={"fit": 1.0},
        stderrs={"iwae_q": torch.tensor([0.1, 0.2, 0.3]), "unused": torch.ones(3),
                 "iwae_q_star": torch.tensor([0.05, 0.05, 0.05]),
                 "elbo_q": torch.tensor([0.01, 0.02, 0.03]),
                 "log_px": torch.tensor([0.5, 0.5, 0.5])},
        chosen={"iwae_q": 1, "iwae_q_star": 2},
        fit_steps={"q_star": 10},
    )
    values.update(changes)
    return GapReport(**values)


def test_the_report_splits_the_gap_and_flags_impossible_points():
    r = report()
    torch.testing.assert_close(r.approximation_gap, torch.tensor([0.5, -0.1, 0.5]))
    torch.testing.assert_close(r.amortization_gap, torch.tensor([0.5, 0.6, 0.0]))
    assert r.flagged.tolist() == [False, True, False]
    r2 = report(elbo_q_star=torch.tensor([-3.0, -5.0, -4.5]))
    assert r2.flagged.tolist() == [False, False, False]  # equal to log p̂(x) is not above it


def test_the_summary_is_means_and_standard_errors_of_the_per_point_values():
    s = report().summary()
    assert s["num_points"] == 3 and s["family"] == "full"
    v = torch.tensor([-3.0, -5.0, -4.0], dtype=torch.float64)
    assert s["log_px"]["mean"] == pytest.approx(-4.0)
    assert s["log_px"]["stderr"] == pytest.approx(float(v.std() / math.sqrt(3)))
    assert s["approximation_gap"]["mean"] == pytest.approx(0.3, abs=1e-6)
    assert s["amortization_gap"]["mean"] == pytest.approx(1.1 / 3, abs=1e-6)
    assert s["approximation_gap_ffg"]["mean"] == pytest.approx((0.6 + 0.2 + 0.6) / 3, abs=1e-6)
    assert s["estimates"]["iwae_q"]["mean"] == pytest.approx(-12.7 / 3, abs=1e-6)
    assert s["estimate_stderr_mean"] == {"iwae_q": pytest.approx(0.2),
                                         "iwae_q_star": pytest.approx(0.05)}
    assert s["fraction_q_star_above_q"] == pytest.approx(1.0)  # −4.5 ≥ −4.5 counts
    assert s["mc_stderr_mean"] == {"elbo_q": pytest.approx(0.02), "log_px": pytest.approx(0.5)}
    assert s["points_with_elbo_above_log_px"] == 1
    one = report(log_px=torch.tensor([-3.0]), elbo_q=torch.tensor([-4.0]),
                 elbo_q_star=torch.tensor([-3.5]), elbo_q_star_ffg=torch.tensor([-3.6]),
                 estimates={}, stderrs={}).summary()
    assert one["log_px"] == {"mean": -3.0, "stderr": 0.0}


def test_the_table_prints_every_row_and_the_notes():
    table = gap_table(report().summary())
    assert "3 points; nats per point" in table
    assert "| log p̂(x) (best estimate per point) | -4.000 ± 0.577 |" in table
    assert f"|   {ESTIMATE_LABELS['iwae_q']} |" in table
    assert "| L[q*_FFG] (best factorized Gaussian per point) | -4.467 ±" in table
    assert "| L[q] (amortized full guide) |" in table
    assert "IWAE, amortized q as proposal at 1 point(s) (mean se 0.200)" in table
    assert "1 point(s) have L[q*] above log p̂(x)" in table
    assert "-5.000 → -4.500 nats after 2 steps (0.2500 nats per step)" in table
    ffg = gap_table(report(family="ffg", chosen={}, refinement_curve=[-5.0]).summary())
    assert "L[q*_FFG]" not in ffg and "| L[q] (the amortized guide) |" in ffg
    assert "(best factorized Gaussian (FFG) over all latents q per point)" in ffg
    assert "Semi-amortized" not in ffg and "at 1 point(s)" not in ffg
    unflagged = report(elbo_q_star=torch.tensor([-3.5, -5.0, -4.5])).summary()
    assert "above log p̂(x)" not in gap_table(unflagged)


def test_better_of_keeps_each_points_better_fit_and_the_first_on_ties():
    a = LocalFit({"loc": torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]),
                  "log_scale": torch.zeros(3, 2)}, torch.tensor([-1.0, -5.0, -2.0]),
                 torch.tensor([-9.0, -9.0, -9.0]), [-3.0], 10)
    b = LocalFit({"loc": torch.tensor([[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]),
                  "log_scale": torch.ones(3, 2)}, torch.tensor([-2.0, -4.0, -2.0]),
                 torch.tensor([-8.0, -8.0, -8.0]), [-4.0], 20)
    best = better_of(a, b)
    assert best.loc.tolist() == [[1.0, 1.0], [8.0, 8.0], [3.0, 3.0]]
    assert best.params["log_scale"].tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    assert best.elbo.tolist() == [-1.0, -4.0, -2.0]
    assert best.steps == 30 and best.curve == [-3.0]
    assert best.start_elbo.tolist() == [-9.0, -9.0, -9.0]


def poor_ppca():
    vae, marginal = ppca_vae()
    vae.encoder.log_s.data += 0.4
    return vae, marginal


def test_the_amortized_elbo_is_the_mean_log_weight_with_its_standard_error():
    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((5,))
    pyro.set_rng_seed(3)
    with torch.no_grad():
        mean, se = _guide_elbo(vae, None, x, None, 40)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        lw = problem_of(vae, x).log_weights(x, None, 40).double()
    torch.testing.assert_close(mean, lw.mean(0).float())
    torch.testing.assert_close(se, (lw.var(0) / 40).sqrt().float())


def exact_fit(vae, x):
    """q* = the encoder's q: the exact posterior for pPCA's own encoder (exact and diagonal),
    not for :func:`poor_ppca`'s."""
    with torch.no_grad():
        loc, scale = vae.encode(x)
    return LocalFit({"loc": loc, "log_scale": scale.log()}, torch.zeros(len(x)),
                    torch.zeros(len(x)), [], 0)


def test_iwae_with_the_exact_posterior_as_proposal_is_log_px():
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((5,))
    exact = marginal.log_prob(x)
    value, se = fit_iwae(vae, x, None, exact_fit(vae, x), num_samples=30, max_elements=5000)
    torch.testing.assert_close(value, exact, atol=1e-4, rtol=1e-5)
    assert float(se.max()) < 1e-3
    halves = fit_iwae_halves(vae, x, None, exact_fit(vae, x), 30, seed=0)
    for v, _ in halves:
        torch.testing.assert_close(v, exact, atol=1e-4, rtol=1e-5)


def test_iwae_halves_use_independent_draws_of_half_the_samples():
    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    fit = exact_fit(poor_ppca()[0], x)
    (a, _), (b, _) = fit_iwae_halves(vae, x, None, fit, 40, seed=1)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, fit_iwae(vae, x, None, fit, 20, seed=1)[0])
    torch.testing.assert_close(b, fit_iwae(vae, x, None, fit, 20, seed=1 + 7919)[0])


def test_the_report_of_an_exact_encoder_reads_log_px_and_no_amortization_gap():
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((6,))
    exact = marginal.log_prob(x)
    pyro.set_rng_seed(0)
    r = amortization_gap(vae, x, iw_samples=20, eval_samples=30, refine_steps=2,
                         max_steps=20, check_every=10, prior_start=False)
    torch.testing.assert_close(r.elbo_q, exact, atol=1e-4, rtol=1e-5)  # log w is constant
    torch.testing.assert_close(r.log_px, exact, atol=1e-3, rtol=1e-5)
    assert float(r.stderrs["elbo_q"].max()) < 1e-3
    # q* cannot beat the exact posterior: only the Monte Carlo error of L[q*] (fresh draws
    # around a q* that 20 noisy steps moved a little) can put it above
    se = r.stderrs["elbo_q_star"]
    assert bool((r.amortization_gap < 4 * se + 1e-3).all()) and float(se.max()) < 0.1
    assert float(r.amortization_gap.min()) > -0.1
    assert r.family == "ffg" and set(r.estimates) == {"iwae_q", "iwae_q_star"}
    assert sum(r.chosen.values()) == 6
    assert set(r.seconds) == {"fit", "refine", "elbo", "iwae"}
    assert r.fit_steps == {"q_star": 20, "q_star_ffg": 20}
    assert len(r.refinement_curve) == 3
    assert r.elbo_q_sa is None and r.semi_amortized_steps == 0
    assert CONFIDENCE == 2.0


def test_the_report_refuses_too_few_draws_or_chains():
    vae, marginal = ppca_vae()
    x = marginal.sample((3,))
    with pytest.raises(ConfigError, match="iw-samples must be ≥ 2"):
        amortization_gap(vae, x, iw_samples=1)
    with pytest.raises(ConfigError, match="ais-chains"):
        amortization_gap(vae, x, iw_samples=4, eval_samples=4, refine_steps=1, max_steps=2,
                         check_every=1, prior_start=False, ais_steps=2, ais_chains=1)


def test_the_plot_has_both_histograms_and_the_refinement_curve(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pyro_vae.lab.gap import plot_gap

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (saved.append(fig),
                                                                    real(fig, path, **kw)))
    plot_gap(report(), tmp_path / "gap.png")
    assert (tmp_path / "gap.png").stat().st_size > 1000
    axes = saved[0].axes
    assert len(axes) == 3
    assert axes[2].get_xlabel() == "refinement steps from the encoder's output"
    assert axes[2].get_ylabel() == "mean ELBO"
    assert list(axes[2].lines[0].get_ydata()) == [-5.0, -4.8, -4.5]
    # the dashed lines: each gap's mean, and L[q*]'s
    assert list(axes[0].lines[0].get_xdata()) == pytest.approx([0.3, 0.3])
    assert list(axes[1].lines[0].get_xdata()) == pytest.approx([1.1 / 3, 1.1 / 3])
    assert list(axes[2].lines[1].get_ydata()) == pytest.approx([-12.9 / 3, -12.9 / 3])


def test_the_reports_defaults_by_what_they_draw():
    """iw_samples 5000, eval_samples 1000 and seed 0 by default: the same numbers as passing
    them, and other numbers than passing others."""
    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((3,))
    options = dict(refine_steps=1, max_steps=4, check_every=2, prior_start=False)
    runs = {}
    for name, extra in (("default", {}),
                        ("explicit", dict(iw_samples=5000, eval_samples=1000, seed=0)),
                        ("iw", dict(iw_samples=5002)), ("eval", dict(eval_samples=1001)),
                        ("seed", dict(seed=1))):
        pyro.set_rng_seed(0)
        runs[name] = amortization_gap(vae, x, **options, **extra)
    a, b = runs["default"], runs["explicit"]
    torch.testing.assert_close(a.estimates["iwae_q_star"], b.estimates["iwae_q_star"])
    torch.testing.assert_close(a.elbo_q_star, b.elbo_q_star)
    torch.testing.assert_close(a.elbo_q, b.elbo_q)
    assert not torch.equal(a.estimates["iwae_q_star"], runs["iw"].estimates["iwae_q_star"])
    assert not torch.equal(a.elbo_q_star, runs["eval"].elbo_q_star)
    assert not torch.equal(a.elbo_q_star, runs["seed"].elbo_q_star)


def test_the_semi_amortized_rows_of_the_summary():
    s = report(elbo_q_sa=torch.tensor([-3.8, -5.2, -4.5]), semi_amortized_steps=7).summary()
    assert s["semi_amortized_steps"] == 7
    assert s["elbo_q_sa"]["mean"] == pytest.approx(-13.5 / 3, abs=1e-6)
    assert s["semi_amortized_gain"]["mean"] == pytest.approx(0.5 / 3, abs=1e-6)
    # the gain over the amortization gap, both means: (0.5 / 3) / (1.1 / 3)
    assert s["semi_amortized_fraction_closed"] == pytest.approx(0.5 / 1.1, rel=1e-5)
    assert "elbo_q_sa" not in report().summary()


def test_ais_joins_the_estimates_from_one_step_with_half_the_chains_per_run(monkeypatch):
    import pyro_vae.infer.ais as ais

    calls = []
    real = ais.ais_log_likelihood

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ais, "ais_log_likelihood", recording)
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((3,))
    pyro.set_rng_seed(0)
    r = amortization_gap(vae, x, iw_samples=4, eval_samples=4, refine_steps=1, max_steps=2,
                         check_every=1, prior_start=False, ais_steps=1, ais_chains=6,
                         ais_leapfrog_steps=3)
    assert "ais" in r.estimates and "ais" in r.seconds
    assert [(c["num_steps"], c["num_chains"], c["leapfrog_steps"]) for c in calls] == \
        [(1, 3, 3), (1, 3, 3)]


def test_the_refinement_curve_has_fifty_steps_by_default():
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((3,))
    pyro.set_rng_seed(0)
    r = amortization_gap(vae, x, iw_samples=4, eval_samples=4, max_steps=2, check_every=1,
                         prior_start=False)
    assert len(r.refinement_curve) == 51


def test_log_px_is_chosen_on_the_first_half_and_reported_from_the_second(monkeypatch):
    """Per point the estimate with the highest value − 2 standard errors on the first half
    (a NaN error never wins) is reported from the second half, value and error."""
    import pyro_vae.lab.gap as gap

    def t(*v):
        return torch.tensor(v)

    nan = float("nan")
    q_halves = ((t(-1.0, -2.0, -3.0), t(0.1, 0.0, nan)), (t(-1.5, -2.5, -3.5), t(10.0, 0.1, 0.2)))
    star = ((t(-1.25, -1.9, -3.2), t(0.0, 0.0, 0.0)), (t(-1.3, -2.2, -3.3), t(0.3, 0.4, 0.0)))
    monkeypatch.setattr(gap, "_guide_iwae_halves", lambda *a, **k: q_halves)
    monkeypatch.setattr(gap, "fit_iwae_halves", lambda *a, **k: star)
    vae, marginal = ppca_vae()
    torch.manual_seed(0)
    x = marginal.sample((3,))
    r = amortization_gap(vae, x, iw_samples=4, eval_samples=4, refine_steps=1, max_steps=2,
                         check_every=1, prior_start=False)
    assert r.log_px.tolist() == pytest.approx([-1.5, -2.2, -3.3])
    assert r.stderrs["log_px"].tolist() == pytest.approx([10.0, 0.4, 0.0])
    assert r.chosen == {"iwae_q": 1, "iwae_q_star": 2}
    assert r.estimates["iwae_q"].tolist() == pytest.approx([-1.5, -2.5, -3.5])
    assert r.estimates["iwae_q_star"].tolist() == pytest.approx([-1.3, -2.2, -3.3])
    assert r.stderrs["iwae_q"].tolist() == pytest.approx([10.0, 0.1, 0.2])


def test_the_amortized_elbo_chunks_its_draws_and_takes_labels_per_batch():
    """Draws in chunks of CHUNK_ELEMENTS / (points × 1024), the last one short; two draws
    give the unbiased variance with n − 1 = 1; a conditional model gets its labels."""
    from pyro_vae.resources import CHUNK_ELEMENTS
    from tests.common import small_vae

    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((5,))
    chunk = CHUNK_ELEMENTS // (5 * 1024)
    problem = problem_of(vae, x)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        mean, _ = _guide_elbo(vae, None, x, None, chunk + 7)
        pyro.set_rng_seed(3)
        lw = torch.cat([problem.log_weights(x, None, chunk), problem.log_weights(x, None, 7)])
        torch.testing.assert_close(mean, lw.double().mean(0).float())
        pyro.set_rng_seed(4)
        mean, se = _guide_elbo(vae, None, x, None, 2)
        pyro.set_rng_seed(4)
        lw = problem.log_weights(x, None, 2).double()
    torch.testing.assert_close(se, (lw.var(0) / 2).sqrt().float())
    conditional = small_vae(num_classes=3)
    xc, yc = torch.rand(4, 6), torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        pyro.set_rng_seed(5)
        got, _ = _guide_elbo(conditional, None, xc, yc, 3)
        pyro.set_rng_seed(5)
        want = problem_of(conditional, xc, yc).log_weights(xc, yc, 3).double().mean(0)
    torch.testing.assert_close(got, want.float())


def test_the_amortized_iwae_halves_are_two_runs_of_half_the_draws():
    from pyro_vae.infer.evaluation import iwae_log_likelihood
    from pyro_vae.lab.gap import _guide_iwae_halves

    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    with torch.no_grad():
        pyro.set_rng_seed(6)
        halves = _guide_iwae_halves(vae, None, x, None, 3)
        pyro.set_rng_seed(6)
        want = [iwae_log_likelihood(vae, x, num_samples=1) for _ in range(2)]
    assert len(halves) == 2
    for (value, _), w in zip(halves, want, strict=True):
        torch.testing.assert_close(value, w)


def test_fit_iwae_draws_from_seed_zero_by_default():
    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    fit = exact_fit(vae, x)  # the poor encoder's q: the draws matter
    torch.testing.assert_close(fit_iwae(vae, x, None, fit, 8)[0],
                               fit_iwae(vae, x, None, fit, 8, seed=0)[0])
    assert not torch.equal(fit_iwae(vae, x, None, fit, 8)[0],
                           fit_iwae(vae, x, None, fit, 8, seed=1)[0])


def test_the_probe_constants_are_the_documented_ones():
    from pyro_vae.lab.gap import PROBE_MARGIN, PROBE_POINTS, REFINE_SAMPLES

    assert (PROBE_POINTS, PROBE_MARGIN, REFINE_SAMPLES) == (64, 0.1, 32)


def test_fit_iwae_pools_chunks_of_draws_from_its_own_generator():
    """max_elements / (points × 1024) draws a chunk (9000 / 4096 = 2 here), the last chunk
    short, all from a generator seeded with seed + 2."""
    from pyro_vae.distributions.guides import draw
    from pyro_vae.infer.vem import model_problem

    vae, marginal = poor_ppca()
    torch.manual_seed(0)
    x = marginal.sample((4,))
    fit = exact_fit(vae, x)  # the poor encoder's q: the draws matter
    got, _ = fit_iwae(vae, x, None, fit, num_samples=5, seed=3, max_elements=9000)
    problem = model_problem(vae, x)
    gen = torch.Generator().manual_seed(5)
    parts = []
    with torch.no_grad():
        for k in (2, 2, 1):
            u, log_q = draw(fit.posterior(), torch.randn(k, 4, problem.dim, generator=gen))
            parts.append(problem.log_joint(x, None, u) - log_q)
    lw = torch.cat(parts).double()
    torch.testing.assert_close(got, (torch.logsumexp(lw, 0) - math.log(5)).float())


def test_a_conditional_report_describes_its_first_64_points_with_their_labels(monkeypatch):
    """More than 64 labelled points: the model is described on the first 64 and their labels;
    the prior-start probe scores the encoder on the fit's 256 check draws."""
    import pyro_vae.lab.gap as gap
    from tests.common import small_vae

    samples = []
    real = gap.fixed_draws
    monkeypatch.setattr(gap, "fixed_draws",
                        lambda problem, x, seed, n=256: samples.append(n) or real(problem, x,
                                                                                   seed, n))
    vae = small_vae(num_classes=3)
    torch.manual_seed(0)
    x, y = torch.rand(66, 6), torch.randint(0, 3, (66,))
    pyro.set_rng_seed(0)
    r = amortization_gap(vae, x, y, iw_samples=2, eval_samples=2, refine_steps=1, max_steps=2,
                         check_every=1)
    assert r.log_px.shape == (66,)
    assert samples == [256, 2]  # the probe's scoring draws, then the evaluation's
