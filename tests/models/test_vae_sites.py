"""Site names, shapes and plate scaling of model and guide, checked with poutine.trace + replay."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_vae import VAE, ConvDecoder, ConvEncoder, DataError, make_likelihood
from pyro_vae.sites import DATA_PLATE, DECODER_MODULE, ENCODER_MODULE, LATENT_SITE, OBS_SITE
from tests.common import make_batch, small_vae


def traces(vae: VAE, *args, **kwargs):
    guide_tr = poutine.trace(vae.guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(*args, **kwargs)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    return model_tr, guide_tr


def test_site_names_shapes_and_plate_scale():
    vae = small_vae(num_data=100)
    x = make_batch(8)
    idx = torch.arange(10, 18)
    model_tr, guide_tr = traces(vae, x, indices=idx)
    # the plate's subsample site is named like the plate; the only latent is "z"
    assert set(model_tr.stochastic_nodes) == {DATA_PLATE, LATENT_SITE}
    assert model_tr.observation_nodes == [OBS_SITE]
    assert set(guide_tr.stochastic_nodes) == {DATA_PLATE, LATENT_SITE}
    z, obs = model_tr.nodes[LATENT_SITE], model_tr.nodes[OBS_SITE]
    assert z["value"].shape == (8, 2) and z["fn"].event_shape == (2,)
    assert obs["fn"].batch_shape == (8,) and obs["fn"].event_shape == (6,)
    assert obs["log_prob"].shape == (8,)
    for site in (z, obs, guide_tr.nodes[LATENT_SITE]):
        (frame,) = site["cond_indep_stack"]
        assert frame.name == DATA_PLATE and frame.full_size == 100 and frame.size == 8
        assert site["scale"] == pytest.approx(100 / 8)  # mini-batch scaled to the data set
    assert torch.equal(model_tr.nodes[DATA_PLATE]["value"], idx)
    params = {n for n, s in model_tr.nodes.items() if s["type"] == "param"}
    assert any(p.startswith(f"{DECODER_MODULE}$$$") for p in params)
    gparams = {n for n, s in guide_tr.nodes.items() if s["type"] == "param"}
    assert any(p.startswith(f"{ENCODER_MODULE}$$$") for p in gparams)


def test_no_indices_means_the_batch_is_scaled_to_num_data():
    vae = small_vae(num_data=40)
    model_tr, _ = traces(vae, make_batch(8))
    assert model_tr.nodes[OBS_SITE]["scale"] == pytest.approx(5.0)
    vae.num_data = None
    model_tr, _ = traces(vae, make_batch(8))
    assert model_tr.nodes[OBS_SITE]["scale"] == 1.0


def test_beta_scales_the_latent_site_in_model_and_guide_only():
    vae = small_vae()
    model_tr, guide_tr = traces(vae, make_batch(4), beta=0.25)
    assert model_tr.nodes[LATENT_SITE]["scale"] == 0.25
    assert guide_tr.nodes[LATENT_SITE]["scale"] == 0.25
    assert model_tr.nodes[OBS_SITE]["scale"] == 1.0


def test_vectorized_particles_and_predictive_shapes():
    vae = small_vae()
    x = make_batch(5)
    elbo = pyro.infer.Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(vae.model, vae.guide, x)
    assert torch.isfinite(torch.tensor(loss))
    pred = Predictive(vae.model, num_samples=11, parallel=True,
                      return_sites=[LATENT_SITE, OBS_SITE])()
    assert pred[LATENT_SITE].shape == (11, 1, 2)
    assert pred[OBS_SITE].shape == (11, 1, 6)
    post = Predictive(vae.model, guide=vae.guide, num_samples=3, return_sites=[OBS_SITE])(x)
    assert post[OBS_SITE].shape == (3, 5, 6)


def test_conditional_vae_sees_labels_in_encoder_and_decoder():
    vae = small_vae(num_classes=3)
    x, y = make_batch(6), torch.tensor([0, 1, 2, 0, 1, 2])
    model_tr, _guide_tr = traces(vae, x, y)
    assert model_tr.nodes[OBS_SITE]["fn"].batch_shape == (6,)
    # changing y changes both q(z|x, y) and p(x|z, y)
    loc_a, _ = vae.encode(x, y)
    loc_b, _ = vae.encode(x, (y + 1) % 3)
    assert not torch.allclose(loc_a, loc_b)
    z = torch.zeros(6, 2)
    assert not torch.allclose(vae.decode_mean(z, y), vae.decode_mean(z, (y + 1) % 3))
    with pytest.raises(DataError, match="conditional VAE"):
        vae.guide(x)
    with pytest.raises(DataError, match="labels y must have shape"):
        vae.guide(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("side,channels", [(28, 1), (64, 3)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-predicted"])
def test_convolutional_networks(side, channels, likelihood):
    shape = (channels, side, side)
    lik = make_likelihood(likelihood)
    vae = VAE(ConvEncoder(shape, 4), ConvDecoder(shape, 4, lik.num_params), lik, 4, shape,
              num_data=50)
    x = torch.bernoulli(torch.rand(3, *shape))
    model_tr, guide_tr = traces(vae, x)
    assert model_tr.nodes[OBS_SITE]["fn"].event_shape == shape
    assert model_tr.nodes[OBS_SITE]["log_prob"].shape == (3,)
    assert guide_tr.nodes[LATENT_SITE]["value"].shape == (3, 4)


def test_wrong_shape_is_a_one_line_error():
    vae = small_vae()
    with pytest.raises(DataError, match=r"data must have shape \(batch, 6\)"):
        vae.guide(torch.rand(4, 5))
    with pytest.raises(DataError, match="data must have shape"):
        vae.model(torch.rand(6))


def test_user_modules_can_replace_the_networks():
    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x), torch.ones(x.shape[0], 1)

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 3)

        def forward(self, z):
            return self.lin(z)

    enc = Enc()
    enc.lin = torch.nn.Linear(3, 1)
    vae = VAE(enc, Dec(), make_likelihood("gaussian"), 1, (3,))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}),
                         pyro.infer.Trace_ELBO())
    x = torch.randn(10, 3)
    before = vae.decoder.lin.weight.detach().clone()
    svi.step(x)
    assert not torch.equal(before, vae.decoder.lin.weight)  # pyro.module registered the net


def test_render_model_draws_the_plate_and_sites():
    vae = small_vae(num_data=100)
    graph = pyro.render_model(vae.model, model_args=(make_batch(4),),
                              render_distributions=True)
    src = graph.source
    assert "cluster_data" in src and "z -> x" in src and "x ~ Normal" in src
