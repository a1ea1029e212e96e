"""The fixed names of the sample sites, plates, modules and params of every pyro-vae model.

Users trace, condition and replay the models by these names, so they never change:

==================  ======================================================================
name                what it is
==================  ======================================================================
``"data"``          the plate over data points; ``size`` is the full data-set size N and
                    ``subsample`` the mini-batch indices, so log-densities are scaled by N/B
``"z"``             latent code, event shape ``(latent_dim,)``; prior N(0, I) in the model,
                    q(z|x) = N(mu(x), diag sigma^2(x)) in the guide
``"x"``             observation, event shape = the data's shape per point (e.g. ``(1, 28, 28)``)
``"encoder"``       the encoder network, registered by ``pyro.module`` in the guide
``"decoder"``       the decoder network, registered by ``pyro.module`` in the model
``"guide_family"``  the layers of a richer posterior family (``full``, ``iaf``, ``planar``),
                    registered by ``pyro.module`` in the guide (absent for ``diag``)
``"obs_scale"``     the learned observation scale (``pyro.param``, positive), only for the
                    ``gaussian-learned`` and ``laplace-learned`` likelihoods
==================  ======================================================================
"""

from __future__ import annotations

DATA_PLATE = "data"
LATENT_SITE = "z"
OBS_SITE = "x"
ENCODER_MODULE = "encoder"
DECODER_MODULE = "decoder"
GUIDE_FAMILY_MODULE = "guide_family"
OBS_SCALE_PARAM = "obs_scale"

__all__ = [
    "DATA_PLATE",
    "DECODER_MODULE",
    "ENCODER_MODULE",
    "GUIDE_FAMILY_MODULE",
    "LATENT_SITE",
    "OBS_SCALE_PARAM",
    "OBS_SITE",
]
