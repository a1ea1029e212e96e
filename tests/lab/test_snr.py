"""The SNR lab: standard errors that match theory, the literature's shapes on the Gaussian
model of Rainforth et al. (2018), and a zero signal reported as unresolved at its floor rather
than fitted."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_vae.cli import main as cli_main
from pyro_vae.errors import ConfigError
from pyro_vae.lab.snr import gaussian_toy, run_snr_lab, snr_table
from pyro_vae.lab.variance import GradientMoments, GroupStats, snr_floor


def test_jackknife_standard_error_of_a_variance_matches_theory():
    """For R Gaussian draws the variance estimate has sd σ² √(2 / (R − 1))."""
    gen = torch.Generator().manual_seed(0)
    estimates, errors = [], []
    for _ in range(200):
        moments = GradientMoments()
        for g in 2.0 * torch.randn(100, 1, generator=gen):
            moments.add(g)
        value, se = moments.statistic(lambda m, v: v.sum())
        estimates.append(value)
        errors.append(se)
    spread = float(torch.tensor(estimates).std())
    theory = 4.0 * math.sqrt(2 / 99)
    assert spread == pytest.approx(theory, rel=0.15)
    assert statistics_mean(errors) == pytest.approx(theory, rel=0.2)


def statistics_mean(values):
    return sum(values) / len(values)


def test_the_literatures_shapes_on_the_gaussian_toy():
    """Decoder SNR rises like √K, the plain pathwise encoder SNR falls, DReG's does not."""
    vae, x = gaussian_toy(num_points=16)
    points, slopes = run_snr_lab(vae, x, None, "iwae", (1, 4, 16, 64), ("reparam", "dreg"),
                                 repeats=150)
    slope = {(s.estimator, s.group): s for s in slopes}
    assert slope["reparam", "decoder"].slope == pytest.approx(0.5, abs=0.12)
    assert slope["reparam", "encoder"].slope < -0.2
    assert slope["dreg", "encoder"].slope > 0
    assert all(math.isfinite(s.stderr) and s.stderr > 0 for s in slopes)
    for p in points:
        for g in p.groups.values():
            assert g.snr_mean_se > 0 and g.total_variance_se > 0
            assert g.snr_low < g.snr_mean < g.snr_high
            assert g.snr_floor == pytest.approx(0.343 / math.sqrt(150), rel=0.02)
    # every fitted point is resolved above the floor; the others are listed, not fitted
    for s in slopes:
        resolved = [p.num_particles for p in points
                    if p.estimator == s.estimator and p.groups[s.group].resolved]
        assert s.num_points == len(resolved) >= 2
        assert sorted(s.unresolved + resolved) == [1, 4, 16, 64]


def test_the_floor_is_what_the_debiased_snr_reads_at_zero_signal():
    """Pure-noise gradients (E g = 0) of 20000 parameters, R = 50 draws: the debiased mean SNR
    reads the floor E sqrt(max(T² − 1, 0)) / √R of Student-t T, 0.0504 (the normal
    approximation's 0.343/√R = 0.0485 is 4 % too low at this R), and is not resolved."""
    moments = GradientMoments()
    gen = torch.Generator().manual_seed(0)
    for g in 3.0 * torch.randn(50, 20000, generator=gen):
        moments.add(g)
    stats = GroupStats.of_moments(moments, debiased=True)
    assert stats.snr_floor == pytest.approx(snr_floor(50)) and snr_floor(50) == \
        pytest.approx(0.0504, abs=5e-4)
    assert abs(stats.snr_mean - stats.snr_floor) < 3 * stats.snr_mean_se
    assert stats.snr_mean_se < 0.02 * stats.snr_floor
    assert stats.resolved is False


def test_a_zero_signal_gradient_is_flagged_unresolved_rather_than_fitted():
    """The Gaussian toy with the encoder exactly at the posterior: E ∇_φ IWAE_K = 0 for every K
    (all importance weights equal p(x)), while the pathwise draws are noisy. Its SNR sits on the
    floor ≈ 0.35/√R at every K and is flagged unresolved; no slope is fitted (fitted, the floor
    would read as slope ≈ 0 instead of "no signal"). The decoder's signal is resolved and keeps
    its +½."""
    vae, x = gaussian_toy(num_points=16, perturbation=0.0)
    points, slopes = run_snr_lab(vae, x, None, "iwae", (1, 4, 16), ("reparam",), repeats=100)
    slope = {s.group: s for s in slopes}
    for p in points:
        enc = p.groups["encoder"]
        assert enc.resolved is False and enc.snr_low <= enc.snr_floor
        assert abs(enc.snr_mean - enc.snr_floor) < 4 * enc.snr_mean_se
        assert p.groups["decoder"].resolved
    assert math.isnan(slope["encoder"].slope) and slope["encoder"].unresolved == [1, 4, 16]
    assert slope["encoder"].num_points == 0
    assert slope["decoder"].slope == pytest.approx(0.5, abs=0.1)
    table = snr_table(points, slopes)
    assert "not fitted (< 2 resolved)" in table and "no (floor 0.035)" in table
    assert "Floor: with no signal" in table and "0.035 at R = 100" in table


def test_the_snr_lab_from_the_command_line(tmp_path, capsys):
    code = cli_main(["variance", "gaussian-toy", "--objective", "iwae", "--particles", "1,4",
                     "--repeats", "20", "--batch-size", "8", "--estimators", "reparam,dreg",
                     "--json", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {s["estimator"] for s in result["slopes"]} == {"reparam", "dreg"}
    assert (tmp_path / "snr_vs_k.png").exists() and (tmp_path / "snr.md").exists()


@pytest.mark.parametrize("argv,match", [
    (["--objective", "iwae", "--estimators", "score"], "unknown estimator"),
    (["--objective", "iwae", "--particles", "0,4"], "positive integers"),
    (["--objective", "iwae", "--repeats", "5"], "--repeats"),
    ([], "SNR lab"),
])
def test_bad_snr_lab_options_are_one_line_errors(argv, match, capsys):
    assert cli_main(["variance", "gaussian-toy", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_measure_requires_enough_repeats_for_errors():
    vae, x = gaussian_toy(dim=2, num_points=4)
    with pytest.raises(ConfigError, match="repeats"):
        run_snr_lab(vae, x, None, "iwae", (1,), ("reparam",), repeats=3)
