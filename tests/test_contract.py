"""One contract that every likelihood, network and guide family runs through (as pythae runs
every model through one test class): build, site shapes under trace + replay, one training
step that moves every trained tensor, and a checkpoint round trip that restores the outputs."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_vae
from pyro_vae import LIKELIHOODS, VAE, ConvDecoder, ConvEncoder, make_likelihood
from pyro_vae.sites import DATA_PLATE, LATENT_SITE, OBS_SITE
from tests.common import FullCovarianceGuide, changed, small_vae, snapshot


def conv_vae(side: int) -> VAE:
    shape = (1, side, side)
    lik = make_likelihood("bernoulli")
    return VAE(ConvEncoder(shape, 3), ConvDecoder(shape, 3, 1), lik, 3, shape)


def data_for(vae: VAE, n: int = 4) -> torch.Tensor:
    x = torch.rand(n, *vae.event_shape)
    support = vae.likelihood.support
    return torch.bernoulli(x) if support == "binary" else x if support == "unit" \
        else torch.randn(n, *vae.event_shape)


CASES = {
    **{f"likelihood-{name}": (lambda name=name: small_vae(likelihood=name), "built-in")
       for name in LIKELIHOODS},
    "network-mlp-images": (lambda: small_vae(event_shape=(1, 8, 8), likelihood="bernoulli"),
                           "built-in"),
    "network-conv-28": (lambda: conv_vae(28), "built-in"),
    "network-conv-64": (lambda: conv_vae(64), "built-in"),
    "network-conditional": (lambda: small_vae(num_classes=3), "built-in"),
    "guide-full-covariance": (lambda: small_vae(likelihood="gaussian-learned"), "full"),
    **{f"family-{kind}": (lambda kind=kind: small_vae(guide=kind, num_classes=3), "built-in")
       for kind in ("full", "iaf", "planar")},
}


@pytest.fixture(params=list(CASES))
def case(request):
    build, guide_kind = CASES[request.param]
    vae = build()
    guide_module = FullCovarianceGuide(vae) if guide_kind == "full" else None
    guide = guide_module.guide if guide_module is not None else vae.guide
    return vae, guide, guide_module


class TestContract:
    def args(self, vae):
        x = data_for(vae)
        y = torch.tensor([0, 1, 2, 0]) if vae.conditional else None
        return x, y

    def test_site_shapes(self, case):
        vae, guide, _ = case
        x, y = self.args(vae)
        guide_tr = poutine.trace(guide).get_trace(x, y)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
        model_tr.compute_log_prob()
        assert guide_tr.nodes[LATENT_SITE]["value"].shape == (4, vae.latent_dim)
        assert model_tr.nodes[OBS_SITE]["value"].shape == (4, *vae.event_shape)
        for site in (LATENT_SITE, OBS_SITE):
            assert model_tr.nodes[site]["log_prob"].shape == (4,)
            assert [f.name for f in model_tr.nodes[site]["cond_indep_stack"]] == [DATA_PLATE]

    def test_one_step_moves_every_trained_tensor(self, case):
        vae, guide, guide_module = case
        x, y = self.args(vae)
        svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        trained = guide_module if guide_module is not None else vae
        before, before_decoder = snapshot(trained), snapshot(vae.decoder)
        assert torch.isfinite(torch.tensor(svi.step(x, y)))
        assert set(changed(before, trained)) == {n for n, p in trained.named_parameters()
                                                  if p.requires_grad}
        assert set(changed(before_decoder, vae.decoder)) == {
            n for n, _ in vae.decoder.named_parameters()}

    def test_checkpoint_round_trip_restores_the_outputs(self, case, tmp_path):
        vae, guide, guide_module = case
        x, y = self.args(vae)
        SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()).step(x, y)
        path = pyro_vae.save(vae, tmp_path / "model.pt", guide=guide)
        vae.eval()
        z = torch.zeros(4, vae.latent_dim)
        expected = vae.decode_mean(z, y).detach()
        pyro.clear_param_store()
        clone = _rebuild_like(vae)
        clone_guide = FullCovarianceGuide(clone) if guide_module is not None else None
        loaded = pyro_vae.load(path, clone,
                               guide=None if clone_guide is None else clone_guide.guide)
        torch.testing.assert_close(loaded.decode_mean(z, y).detach(), expected)
        if guide_module is not None:
            for a, b in zip(guide_module.parameters(), clone_guide.parameters(), strict=True):
                assert torch.equal(a, b)


def _rebuild_like(vae: VAE) -> VAE:
    """A fresh model of the same architecture (new random weights)."""
    torch.manual_seed(123)
    if isinstance(vae.encoder, ConvEncoder):
        return conv_vae(vae.event_shape[-1])
    return small_vae(event_shape=vae.event_shape, likelihood=vae.likelihood.name,
                     num_classes=vae.num_classes, guide=vae.family.kind,
                     flow_length=vae.family.flow_length)
