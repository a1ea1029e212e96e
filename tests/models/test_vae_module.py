"""The VAE is a torch module with Pyro programs: torch's own state handling, β as a tensor and
β = 0, predictive draws, NUTS on z, save / load, one-line errors from inside a trace."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

import pyro_vae
from pyro_vae import Config, build_vae, nuts_posterior, posterior_predictive, prior_predictive
from pyro_vae.cli import main as cli_main
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.sites import LATENT_SITE, OBS_SITE
from tests.common import exact_posterior, linear_gaussian_vae, make_batch, small_vae


def test_torch_state_handling_is_torchs_own():
    vae = small_vae(likelihood="gaussian-learned")
    names = [n for n, _ in vae.named_parameters()]
    assert "obs_scale_unconstrained" in names
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.")
                                                                for n in names)
    assert vae.num_parameters() == sum(p.numel() for p in vae.parameters())
    other = small_vae(likelihood="gaussian-learned")
    other.load_state_dict(vae.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), other.parameters(),
                                                 strict=True))
    assert vae.eval().training is False and vae.encoder.training is False
    assert vae.to(torch.float64).decoder.net[0].weight.dtype == torch.float64
    # the learned scale is Pyro's pyro.param("obs_scale"), with its positive constraint
    tr = poutine.trace(vae.to(torch.float32).model, param_only=True).get_trace(make_batch(3))
    assert float(tr.nodes["obs_scale"]["value"].detach()) == pytest.approx(0.1)


def jit_programs(vae):
    def model(x, idx, beta, batch_size=None):
        return vae.model(x, None, idx, beta)

    def guide(x, idx, beta, batch_size=None):
        return vae.guide(x, None, idx, beta)

    return model, guide


def test_beta_as_a_tensor_compiles_the_jit_graph_once():
    vae = small_vae(num_data=40)
    model, guide = jit_programs(vae)
    elbo = make_elbo("trace", jit=True)
    x, idx = make_batch(8), torch.arange(8)
    losses = [elbo.differentiable_loss(model, guide, x, idx, torch.tensor(b), batch_size=8)
              for b in (0.0, 0.3, 1.0)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert len(elbo._loss_and_surrogate_loss.compiled) == 1


def test_beta_zero_drops_exactly_the_kl_term():
    vae = small_vae()
    x = make_batch(8)
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        full = elbo.loss(vae.model, vae.guide, x, beta=1.0)
        pyro.set_rng_seed(3)
        no_kl = elbo.loss(vae.model, vae.guide, x, beta=0.0)
        kl = torch.distributions.kl_divergence(vae.posterior(x), vae.prior(8)).sum()
    assert no_kl == pytest.approx(full - float(kl), rel=1e-5)
    # and under Trace_ELBO with validation on, β = 0 trains (no positivity error)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x, beta=0.0)))


@pytest.mark.parametrize("beta", [-0.5, float("nan"), float("inf")])
def test_a_bad_kl_weight_is_a_one_line_error(beta):
    vae = small_vae()
    with pytest.raises(ConfigError, match="beta") as err:
        poutine.trace(vae.model).get_trace(make_batch(3), beta=beta)
    assert "\n" not in str(err.value)


def test_errors_raised_inside_a_pyro_trace_stay_one_line():
    vae = small_vae(num_classes=3)
    with pytest.raises(DataError) as err:
        poutine.trace(vae.guide).get_trace(make_batch(4))  # labels missing
    assert "conditional" in str(err.value) and "\n" not in str(err.value)


def test_prior_and_posterior_predictive_in_one_line_each():
    vae = small_vae()
    prior = prior_predictive(vae, num_points=5, num_samples=3)
    assert prior[LATENT_SITE].shape == (3, 5, 2) and prior[OBS_SITE].shape == (3, 5, 6)
    x = make_batch(4)
    post = posterior_predictive(vae, x, num_samples=2)
    assert post[OBS_SITE].shape == (2, 4, 6)
    assert not torch.equal(post[OBS_SITE][0], x)  # new draws, not the observed data
    # a conditional model: one point per label
    cvae = small_vae(num_classes=3)
    out = prior_predictive(cvae, y=torch.tensor([0, 1, 2, 2]), num_samples=2)
    assert out[OBS_SITE].shape == (2, 4, 6)


def test_nuts_on_z_matches_the_closed_form_posterior_of_a_linear_gaussian_model():
    vae = linear_gaussian_vae(num_data=1000)  # a subsampled model: NUTS gets the local view
    x = torch.tensor([[1.0, -0.5, 2.0]])
    z = nuts_posterior(vae, x, num_samples=600, warmup_steps=300, seed=0)
    assert z.shape == (600, 1, 2)
    mean, cov = exact_posterior(vae, x)
    sd = cov.diagonal().sqrt()
    assert torch.allclose(z.mean(0), mean, atol=float(0.25 * sd.max()))
    assert torch.allclose(z[:, 0].T.cov(), cov, atol=float(0.3 * cov.abs().max()))
    # the local model's log-density is the exact log-joint of the point
    tr = poutine.trace(vae.local_model).get_trace(x)
    assert tr.nodes[LATENT_SITE]["scale"] == 1.0 and tr.nodes[OBS_SITE]["scale"] == 1.0
    log_joint = tr.log_prob_sum()
    direct = (vae.prior(1).log_prob(tr.nodes[LATENT_SITE]["value"])
              + vae.observation_distribution(tr.nodes[LATENT_SITE]["value"]).log_prob(x)).sum()
    assert float(log_joint.detach()) == pytest.approx(float(direct.detach()), rel=1e-5)


def test_save_and_load_a_model_trained_by_a_plain_svi_loop(tmp_path):
    config = Config(dataset="moons", epochs=1, max_train=64, max_test=32, batch_size=32).resolved()
    data = pyro_vae.prepare_data(config)
    vae = build_vae(config, data.event_shape, num_data=data.x_train.shape[0])
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        svi.step(data.x_train, indices=torch.arange(data.x_train.shape[0]))
    path = pyro_vae.save(vae, tmp_path / "run", config=config)
    assert path.name == "checkpoint.pt"
    pyro.clear_param_store()
    loaded = pyro_vae.load(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))
    # the CLI reads what save wrote
    assert cli_main(["evaluate", str(tmp_path / "run"), "--iw-samples", "5",
                     "--max-points", "8"]) == 0
    # without a configuration the model object is needed, said in one line
    pyro_vae.save(vae, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="load\\(path, vae\\)"):
        pyro_vae.load(tmp_path / "bare.pt")
    same = pyro_vae.load(tmp_path / "bare.pt", build_vae(config, data.event_shape, 64))
    assert torch.equal(same.decoder.net[0].weight, vae.decoder.net[0].weight)
