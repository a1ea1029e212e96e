"""The semi-supervised VAE (M2): enumeration over y, the reduction to a conditional VAE plus a
classifier when every label is observed, the labelled split, and training from the CLI."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae import VAE, MLPDecoder, MLPEncoder, make_likelihood
from pyro_vae.cli import main
from pyro_vae.errors import ConfigError
from pyro_vae.infer.semi_supervised import labelled_subset
from pyro_vae.models.m2 import MLPClassifier, SemiSupervisedVAE
from pyro_vae.sites import LATENT_SITE, OBS_SITE

D, C, L = 12, 3, 2


def m2(seed=0):
    torch.manual_seed(seed)
    return SemiSupervisedVAE(MLPClassifier((D,), C, (16,)), MLPEncoder((D,), L, (16,), cond_dim=C),
                             MLPDecoder((D,), L, (16,), cond_dim=C), make_likelihood("bernoulli"),
                             L, (D,), C)


def data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.bernoulli(torch.full((n, D), 0.4), generator=g),
            torch.randint(0, C, (n,), generator=g))


def test_with_every_label_observed_m2_is_a_conditional_vae_plus_a_classifier():
    """L(x, y) of M2 = the CVAE's ELBO of the same networks + log p(y) = −log C per point; its
    gradient reaches encoder and decoder as the CVAE's does and never the classifier, which
    learns from the α-weighted classification term alone."""
    model = m2()
    cvae = VAE(model.encoder, model.decoder, model.likelihood, L, (D,), num_classes=C)
    x, y = data()
    pyro.set_rng_seed(0)
    loss_m2 = Trace_ELBO().differentiable_loss(model.model, model.guide, x, y)
    pyro.set_rng_seed(0)
    loss_cvae = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    want = float(loss_cvae.detach()) + x.shape[0] * math.log(C)
    assert float(loss_m2.detach()) == pytest.approx(want, rel=1e-6)
    nets = list(model.encoder.parameters()) + list(model.decoder.parameters())
    for a, b in zip(torch.autograd.grad(loss_m2, nets), torch.autograd.grad(loss_cvae, nets),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert all(p.grad is None for p in model.classifier.parameters())
    model.num_labelled, model.num_unlabelled = 6, 24  # α = 0.1 · N / N_l = 0.5
    aux = Trace_ELBO().differentiable_loss(model.classify_model, model.classify_guide, x, y)
    log_q = torch.log_softmax(model.classify(x), -1)[torch.arange(6), y].sum()
    assert float(aux.detach()) == pytest.approx(-0.1 * 30 / 6 * float(log_q.detach()), rel=1e-5)


def test_enumeration_sums_y_out_exactly():
    """TraceEnum_ELBO's U(x) = Σ_y q(y|x) [log p(x|y,z_y) + log p(z_y) − log q(z_y|x,y)]
    + Σ_y q(y|x) [log p(y) − log q(y|x)], on the same draws z_y."""
    model = m2()
    x, _ = data()
    pyro.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    pyro.set_rng_seed(5)
    guide_tr = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    z = guide_tr.nodes[LATENT_SITE]["value"]  # (C, B, L): one draw per class
    assert z.shape == (C, 6, L)
    ys = torch.arange(C).reshape(C, 1)
    q_y = torch.softmax(model.classify(x), -1).T  # (C, B)
    loc, scale = model.encode(x, ys)
    log_q_z = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_p_x = model.observation_distribution(z, ys).log_prob(x)
    manual = (q_y * (log_p_x + log_p_z - log_q_z + math.log(1 / C) - q_y.log())).sum()
    assert -loss == pytest.approx(float(manual.detach()), rel=1e-5)
    trace = poutine.trace(model.model).get_trace(None, num_points=4)  # generation: y and z
    assert trace.nodes["y"]["value"].shape == (4,) and trace.nodes[OBS_SITE]["value"].shape \
        == (4, D)


def test_labelled_subset_is_balanced_and_checked():
    y = torch.arange(100) % 4
    chosen = labelled_subset(y, 10, 4, seed=0)
    counts = torch.bincount(y[chosen], minlength=4)
    assert counts.tolist() == [3, 3, 2, 2] and len(set(chosen.tolist())) == 10
    assert torch.equal(chosen, labelled_subset(y, 10, 4, seed=0))
    with pytest.raises(ConfigError, match="at least the number of classes"):
        labelled_subset(y, 3, 4)
    with pytest.raises(ConfigError, match="no unlabelled point"):
        labelled_subset(y, 100, 4)


FAST = ["--dataset", "digits", "--model", "m2", "--labels", "50", "--hidden", "32",
        "--max-train", "300", "--max-test", "100", "--batch-size", "100", "--no-progress"]


def test_train_resume_and_evaluate_m2_from_the_cli(tmp_path, capsys):
    out = tmp_path / "m2"
    assert main(["train", *FAST, "--epochs", "2", "--out", str(out)]) == 0
    for fig in ("analogies.png", "samples.png", "accuracy.png", "elbo.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics[-1]["test_accuracy"] <= 1 and metrics[-1]["train_loss"] > 0
    assert main(["train", *FAST, "--epochs", "3", "--out", str(out), "--resume",
                 "--no-figures"]) == 0
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1, 2, 3]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iw-samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 1.0
    for extra in ([], ["--label", "2"]):  # classes drawn by the model, or the one asked for
        assert main(["sample", str(out), "--num", "8", "--out", str(tmp_path / "s.npy"),
                     *extra]) == 0
        assert __import__("numpy").load(tmp_path / "s.npy").shape == (8, 1, 8, 8)


@pytest.mark.parametrize("argv,match", [
    (["--latent", "bernoulli"], "--model m2 takes --latent gaussian"),
    (["--conditional"], "drop --conditional"),
    (["--labels", "5"], "at least the number of classes"),
    (["--aux-weight", "-1"], "--aux-weight must be a finite number ≥ 0"),
])
def test_bad_m2_options_get_one_line_errors(tmp_path, capsys, argv, match):
    assert main(["train", *FAST, *argv, "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err
