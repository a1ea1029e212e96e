"""The SNR lab: standard errors that match theory, and the literature's shapes on the Gaussian
model of Rainforth et al. (2018)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_vae.cli import main as cli_main
from pyro_vae.errors import ConfigError
from pyro_vae.lab.snr import gaussian_toy, run_snr_lab
from pyro_vae.lab.variance import GradientMoments


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
