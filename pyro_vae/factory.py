"""Build a :class:`~pyro_vae.vae.VAE` and its optimizer from a resolved :class:`Config`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import make_likelihood
from pyro_vae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.vae import VAE


def build_vae(
    config: Config, event_shape: Sequence[int], num_data: int | None = None,
    num_classes: int | None = None,
) -> VAE:
    """Networks, likelihood and VAE for ``config`` and data of shape ``event_shape``."""
    likelihood = make_likelihood(config.likelihood, config.obs_scale, config.allow_greyscale)
    if config.conditional and not num_classes:
        raise ConfigError("--conditional needs labelled data; this data set has no labels")
    cond_dim = num_classes if config.conditional else 0
    latent = config.latent_dim
    if config.arch == "conv":
        encoder = ConvEncoder(event_shape, latent, cond_dim=cond_dim)
        decoder = ConvDecoder(event_shape, latent, likelihood.num_params, cond_dim=cond_dim)
    else:
        hidden = tuple(config.hidden or ())
        encoder = MLPEncoder(event_shape, latent, hidden, config.activation, cond_dim=cond_dim)
        decoder = MLPDecoder(event_shape, latent, hidden[::-1], config.activation,
                             likelihood.num_params, cond_dim=cond_dim)
    return VAE(encoder, decoder, likelihood, latent, event_shape, num_data=num_data,
               num_classes=num_classes if config.conditional else None)


def build_optimizer(
    config: Config, params: Iterable[torch.Tensor]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """One torch optimizer over all trainable tensors, and its per-epoch LR scheduler.

    ``adam``: :class:`torch.optim.Adam`; ``clipped-adam``: Pyro's
    :class:`~pyro.optim.clipped_adam.ClippedAdam` (each parameter's gradient clipped to norm
    ``clip_norm``). The schedule, stepped once per epoch: ``constant``; ``exponential``:
    lr_e = lr · decay^e; ``cosine``: lr_e = ½ lr (1 + cos(π e / E)).

    One optimizer over every parameter updates them all in one call, and Adam uses PyTorch's
    fused kernel on CPU and CUDA (about 6× faster than the per-tensor loop for the
    Fashion-MNIST MLP); ``pyro.optim`` instead keeps one optimizer per parameter and looks
    each up by name on every step.
    """
    params = list(params)
    if config.optimizer == "adam":
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr,
                                                            fused=fused or None)
    else:
        optimizer = ClippedAdam(params, lr=config.lr, clip_norm=config.clip_norm)
    if config.lr_schedule == "constant":
        return optimizer, None
    if config.lr_schedule == "exponential":
        return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, config.lr_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                                 T_max=max(1, config.epochs))
