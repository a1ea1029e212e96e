"""Build a :class:`~pyro_vae.vae.VAE` and its optimizer from a resolved :class:`Config`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from pyro_vae.config import Config
from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.distributions.likelihoods import make_likelihood
from pyro_vae.errors import ConfigError
from pyro_vae.models.discrete_vae import DiscreteVAE
from pyro_vae.models.m2 import MLPClassifier, SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.nn.networks import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    MLPLogitsEncoder,
)
from pyro_vae.resources import FLOAT_BYTES, check_memory, mlp_parameters


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
    if config.model == "m2":
        return _build_m2(config, event_shape, num_data, num_classes, likelihood)
    if config.latent != "gaussian":
        return _build_discrete(config, event_shape, num_data, num_classes, likelihood, cond_dim)
    if config.arch == "conv":
        encoder = ConvEncoder(event_shape, latent, cond_dim=cond_dim)
        decoder = ConvDecoder(event_shape, latent, likelihood.num_params, cond_dim=cond_dim)
    else:
        hidden = tuple(config.hidden or ())
        data_dims = math.prod(event_shape)
        weights = (mlp_parameters([data_dims + cond_dim, *hidden, 2 * latent])
                   + mlp_parameters([latent + cond_dim, *hidden[::-1],
                                     data_dims * likelihood.num_params]))
        # weights, gradients and Adam's two moments
        check_memory(f"networks of {weights:,} weights (--hidden {','.join(map(str, hidden))}, "
                     f"--latent-dim {latent})", weights * FLOAT_BYTES * 4,
                     "lower --hidden or --latent-dim")
        encoder = MLPEncoder(event_shape, latent, hidden, config.activation, cond_dim=cond_dim)
        decoder = MLPDecoder(event_shape, latent, hidden[::-1], config.activation,
                             likelihood.num_params, cond_dim=cond_dim)
    family = GuideFamily(config.guide, event_shape, latent, config.flow_length,
                         cond_dim=cond_dim)
    return VAE(encoder, decoder, likelihood, latent, event_shape, num_data=num_data,
               num_classes=num_classes if config.conditional else None, family=family)


def _build_discrete(config: Config, event_shape: Sequence[int], num_data: int | None,
                    num_classes: int | None, likelihood, cond_dim: int) -> DiscreteVAE:
    """A :class:`DiscreteVAE` with MLP networks: logits of the code, decoder on the flat code."""
    code_shape = (config.latent_dim,) if config.latent == "bernoulli" \
        else (config.latent_dim, config.categories)
    code = math.prod(code_shape)
    hidden = tuple(config.hidden or ())
    data_dims = math.prod(event_shape)
    weights = (mlp_parameters([data_dims + cond_dim, *hidden, code])
               + mlp_parameters([code + cond_dim, *hidden[::-1],
                                 data_dims * likelihood.num_params]))
    check_memory(f"networks of {weights:,} weights (--hidden {','.join(map(str, hidden))}, "
                 f"code of {code} cells)", weights * FLOAT_BYTES * 4,
                 "lower --hidden, --latent-dim or --categories")
    encoder = MLPLogitsEncoder(event_shape, code_shape, hidden, config.activation,
                               cond_dim=cond_dim)
    decoder = MLPDecoder(event_shape, code, hidden[::-1], config.activation,
                         likelihood.num_params, cond_dim=cond_dim)
    return DiscreteVAE(encoder, decoder, likelihood, config.latent, config.latent_dim,
                       event_shape, num_data=num_data, categories=config.categories,
                       num_classes=num_classes if config.conditional else None)


def _build_m2(config: Config, event_shape: Sequence[int], num_data: int | None,
              num_classes: int | None, likelihood) -> SemiSupervisedVAE:
    """M2 with MLPs: classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z)."""
    if not num_classes:
        raise ConfigError("--model m2 needs a data set with labels (its classes are y)")
    hidden = tuple(config.hidden or ())
    latent = config.latent_dim
    classifier = MLPClassifier(event_shape, num_classes, hidden, config.activation)
    encoder = MLPEncoder(event_shape, latent, hidden, config.activation, cond_dim=num_classes)
    decoder = MLPDecoder(event_shape, latent, hidden[::-1], config.activation,
                         likelihood.num_params, cond_dim=num_classes)
    unlabelled = None if num_data is None else num_data - config.labels
    return SemiSupervisedVAE(classifier, encoder, decoder, likelihood, latent, event_shape,
                             num_classes, config.labels, unlabelled, config.aux_weight)


def build_guide(config: Config, vae: VAE) -> Callable[..., Any] | None:
    """The guide a run of ``config`` trains and evaluates beside ``vae``'s own: ``None`` for
    the amortized ``vae.guide``; with ``--refine-steps K``, the
    :class:`~pyro_vae.infer.semi_amortized.SemiAmortizedGuide` that refines its Gaussian per
    point by K clipped SVI steps (Kim et al. 2018), through which the encoder is trained with
    ``--refine-through``, on its own ELBO without."""
    if not config.refine_steps:
        return None
    from pyro_vae.infer.semi_amortized import CLIP_NORM, SemiAmortizedGuide

    return SemiAmortizedGuide(vae.model, vae.guide, steps=config.refine_steps,
                              lr=config.refine_lr, differentiable=config.refine_through,
                              max_grad_norm=CLIP_NORM)
