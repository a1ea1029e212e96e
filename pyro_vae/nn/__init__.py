"""Networks (MLP and convolutional encoders / decoders) and their registration with Pyro."""

from pyro_vae.nn.module import register_module, register_param
from pyro_vae.nn.networks import (
    ACTIVATIONS,
    ConvDecoder,
    ConvEncoder,
    GaussianHead,
    MLPDecoder,
    MLPEncoder,
    MLPLogitsEncoder,
)

__all__ = [
    "ACTIVATIONS",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianHead",
    "MLPDecoder",
    "MLPEncoder",
    "MLPLogitsEncoder",
    "register_module",
    "register_param",
]
