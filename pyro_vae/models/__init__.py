"""Generative models with their amortized guides: the VAE (plain or conditional), built by hand
or from a configuration, and the closed-form probabilistic PCA it is checked against.
Burda et al.'s two-stochastic-layer VAE is :class:`pyro_vae.models.two_layer.TwoLayerVAE`
(imported from its module: it uses the inference core's β handler)."""

from pyro_vae.models.builder import build_vae
from pyro_vae.models.vae import VAE, KLWeight, evaluating, kl_scale

__all__ = ["VAE", "KLWeight", "build_vae", "evaluating", "kl_scale"]
